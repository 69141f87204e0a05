"""``dnsmesh logs --follow``: lines appended later are printed, also after a rotation."""

from __future__ import annotations

import json
import select
import subprocess
from pathlib import Path

from tests.integration.conftest import DNSMESH


def line(name: str) -> str:
    fields = {"time": "2027-01-15T08:00:00.000Z", "client": "127.0.0.1", "name": name,
              "type": "A", "rcode": "NOERROR", "source": "cache", "latency_ms": 0.01}  # fmt: skip
    return json.dumps(fields) + "\n"


def next_name(proc: subprocess.Popen[str], timeout: float = 5.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line printed in time"
    name: str = json.loads(proc.stdout.readline())["name"]
    return name


def test_follow_prints_appended_lines_and_goes_on_after_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    path.write_text(line("before.test") + line("other.example"))
    proc = subprocess.Popen(
        [DNSMESH, "logs", "--file", str(path), "--follow", "--json", "--name", "test"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert next_name(proc) == "before.test"
        with path.open("a") as file:
            file.write(line("skipped.example"))
            file.write(line("appended.test"))
        assert next_name(proc) == "appended.test"
        path.rename(tmp_path / "queries.log.1")  # logrotate, then the agent reopens the path
        path.write_text(line("rotated.test"))
        assert next_name(proc) == "rotated.test"
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
