"""The query log's writer (agent/querylog.py) on real files, driven by hand: no thread.

``write_pending`` is what the writer thread runs every 0.2 s; calling it directly makes
each step deterministic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import pytest

from agent.querylog import QueryLog
from agent.querylog_config import QueryLogConfig
from dnsmesh.dnswire import parse_query
from dnsmesh.errors import ConfigError

QUERY = parse_query(dns.message.make_query("www.example.test", "A").to_wire())
NXDOMAIN = b"\x00\x01\x81\x83" + bytes(8)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def opened() -> Iterator[Callable[..., QueryLog]]:
    """``opened(path, **QueryLogConfig fields)``: a QueryLog with its file open, closed after."""
    logs: list[QueryLog] = []

    def open_log(path: Path, **config: Any) -> QueryLog:
        log = QueryLog(QueryLogConfig(str(path), **config), queue_limit=5)
        log.open()
        logs.append(log)
        return log

    yield open_log
    for log in logs:
        log.stop(1.0)


def test_a_full_queue_drops_lines_and_the_next_line_counts_them(
    tmp_path: Path, opened: Callable[..., QueryLog]
) -> None:
    path = tmp_path / "q.log"
    log = opened(path, max_rate=0)
    for _ in range(8):
        log.add(0.0, "127.0.0.1", QUERY, "cache", NXDOMAIN)
    assert log.overflow == 3
    assert log.write_pending() == 5
    log.add(0.0, "127.0.0.1", QUERY, "cache", NXDOMAIN)
    log.write_pending()
    written = lines(path)
    assert len(written) == 6
    # The first five were queued before the overflow; the sixth reports it.
    assert [line.get("overflow") for line in written] == [None] * 5 + [3]


def test_lines_left_out_with_no_line_after_them_get_a_summary(
    tmp_path: Path, opened: Callable[..., QueryLog]
) -> None:
    path = tmp_path / "q.log"
    log = opened(path, max_rate=2)
    for _ in range(10):
        log.add(0.0, "127.0.0.1", QUERY, "cache", NXDOMAIN)
    assert log.write_pending() == 2
    assert log.write_pending() == 0  # no summary yet: a line may still come to carry it
    log._last_line -= 2.0  # as if two seconds passed without a line
    assert log.write_pending() == 1
    assert lines(path)[-1]["summary"] is True and lines(path)[-1]["limited"] == 8
    log._last_line -= 2.0
    assert log.write_pending() == 0  # reported once


def test_a_failing_disk_loses_lines_logs_once_and_keeps_going(
    caplog: pytest.LogCaptureFixture, opened: Callable[..., QueryLog]
) -> None:
    log = opened(Path("/dev/full"), max_rate=0)  # every write: ENOSPC
    with caplog.at_level(logging.INFO, logger="agent.querylog"):
        for _ in range(3):
            log.add(0.0, "127.0.0.1", QUERY, "cache", NXDOMAIN)
            log.write_pending()
    assert (log.lost, log.written) == (3, 0)
    assert [r.getMessage() for r in caplog.records] == ["querylog.write_failed"]


def test_reopen_takes_the_new_file_or_keeps_the_old_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, opened: Callable[..., QueryLog]
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "q.log"
    log = opened(path, max_rate=0)
    log.add(0.0, "127.0.0.1", QUERY, "cache", NXDOMAIN)
    log.write_pending()
    path.rename(tmp_path / "q.log.1")
    log.reopen()
    log.add(0.0, "127.0.0.1", QUERY, "cache", NXDOMAIN)
    log.write_pending()
    assert len(lines(path)) == 1 and len(lines(tmp_path / "q.log.1")) == 1
    # The folder is gone: the reopen fails, and lines go on to the file already open.
    path.unlink()
    folder.rmdir()
    log.reopen()
    log.add(0.0, "127.0.0.1", QUERY, "cache", NXDOMAIN)
    with caplog.at_level(logging.ERROR, logger="agent.querylog"):
        assert log.write_pending() == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["querylog.reopen_failed"]
    assert log.written == 3 and log.lost == 0


def test_a_path_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--query-log .*missing"):
        QueryLog(QueryLogConfig(str(tmp_path / "missing" / "q.log"))).open()
