"""The query log's I/O: a bounded queue the query path fills, a writer thread that empties it.

Writing never blocks the DNS path: the loop only tests admission (dnsmesh/querylog.py) and
appends a tuple to a deque, or counts the line as overflow when the deque is full (a disk
that stalls, a pipe nobody reads). The writer thread wakes every ``flush_interval``, turns
what is queued into JSON lines (the formatting, off the loop) and writes them in one call.
SIGHUP asks it to reopen the path before its next write, as logrotate expects; a file that
cannot be reopened is logged and the old one kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import threading
import time
from collections import deque

from agent.querylog_config import QueryLogConfig
from dnsmesh.dnswire import Query
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields
from dnsmesh.querylog import ClientMask, LineAdmission, LineFormatter, Record
from dnsmesh.snapshot import CompiledPolicy

log = logging.getLogger(__name__)

# Lines queued at most: some seconds of the default rate, a few MiB of memory.
QUEUE_LIMIT = 8192
FLUSH_INTERVAL = 0.2  # how often the writer wakes; the delay before a line is on disk
SUMMARY_AFTER = 1.0  # left-out counts no line carried get a summary line after this long
_MODE = 0o640  # queries say who asked what: not for every user of the node


class QueryLog:
    """``add`` (the loop's side), ``start``/``stop``/``reopen`` (the agent's), and
    ``write_pending`` (the writer thread's, also called directly by the benchmark)."""

    def __init__(
        self,
        config: QueryLogConfig,
        *,
        rng: random.Random | None = None,
        queue_limit: int = QUEUE_LIMIT,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.config = config
        self.admission = LineAdmission(config.sample, config.max_rate, rng=rng)
        self._admit = self.admission.admit
        self.formatter = LineFormatter(ClientMask(config.client_prefix_v4, config.client_prefix_v6))
        self.queue: deque[Record] = deque()
        self.queue_limit = queue_limit
        self.flush_interval = flush_interval
        self.overflow = 0  # lines dropped because the queue was full (the loop's count)
        self.written = 0  # the writer's counts
        self.lost = 0  # lines whose write failed
        self._fd: int | None = None  # unbuffered: a failed write leaves nothing behind
        self._reopen = False
        self._failing = False  # a write failed and none has succeeded since (logged once)
        self._last_line = time.monotonic()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop's side ------------------------------------------------------------------

    def add(
        self,
        start: float,
        client: str,
        query: Query | None,
        source: str,
        response: bytes | None,
        policy: CompiledPolicy | None = None,
        reason: str = "",
    ) -> None:
        """A query answered (``start``: time.perf_counter() when it arrived)."""
        end = time.perf_counter()
        if not self._admit(end):
            return
        queue = self.queue  # put(), inlined: this runs for every query
        if len(queue) >= self.queue_limit:
            self.overflow += 1
            return
        limited = self.admission.limited
        queue.append(
            (start, end, client, query, source, response, policy, reason, limited, self.overflow)
        )

    def admit(self) -> tuple[float, bool]:
        """(now, whether a line is admitted), for a caller that has work to do for a line
        only when it is written (a rate-limited datagram is parsed only then)."""
        now = time.perf_counter()
        return now, self._admit(now)

    def put(
        self,
        start: float,
        end: float,
        client: str,
        query: Query | None,
        source: str,
        response: bytes | None,
        policy: CompiledPolicy | None,
        reason: str,
    ) -> None:
        """Queue an admitted line, or count it as overflow when the queue is full."""
        queue = self.queue
        if len(queue) >= self.queue_limit:
            self.overflow += 1
            return
        limited = self.admission.limited
        queue.append(
            (start, end, client, query, source, response, policy, reason, limited, self.overflow)
        )

    # -- the agent's side -----------------------------------------------------------------

    def start(self) -> None:
        """Open the file (ConfigError when it cannot be) and start the writer thread."""
        self.open()
        self._thread = threading.Thread(target=self._run, name="dnsmesh-querylog", daemon=True)
        self._thread.start()

    def open(self) -> None:
        try:
            self._fd = self._open()
        except OSError as exc:
            raise ConfigError(
                f"--query-log {self.config.path}: {exc.strerror or exc} (cannot append to it)"
            ) from None

    def reopen(self) -> None:
        """SIGHUP: reopen the path before the next write (the old file was rotated away)."""
        self._reopen = True

    def stop(self, timeout: float) -> None:
        """Write what is queued and close, waiting for the writer at most ``timeout``."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("querylog.stop_overran", extra=fields(queued=len(self.queue)))
                return  # still writing (a hung disk): the file stays with it
        self._close()
        log.info(
            "querylog.closed",
            extra=fields(
                path=self.config.path,
                written=self.written,
                limited=self.admission.limited,
                overflow=self.overflow,
                lost=self.lost,
            ),
        )

    # -- the writer's side ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.wait(self.flush_interval):
            try:
                self.write_pending()
            except Exception:  # a bug must not stop the log for good; that batch is lost
                log.exception("querylog.writer_crashed")
        self.write_pending()

    def write_pending(self) -> int:
        """Format and write every queued line (and a summary line when one is due); the
        number of lines written."""
        if self._reopen:
            self._reopen = False
            self._reopened()
        queue = self.queue
        batch: list[Record] = []
        while queue:
            batch.append(queue.popleft())
        offset = time.time() - time.perf_counter()  # anchored per batch: the clocks drift
        line = self.formatter.line
        lines = [line(record, offset) for record in batch]
        now = time.monotonic()
        if lines:
            self._last_line = now
        elif now - self._last_line >= SUMMARY_AFTER:
            summary = self.formatter.summary(self.admission.limited, self.overflow, time.time())
            if summary is not None:
                lines.append(summary)
                self._last_line = now
        if lines:
            self._write("".join(lines).encode(), len(lines))
        return len(lines)

    def _write(self, data: bytes, count: int) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            self.lost += count
            if not self._failing:  # once per failure, not per batch: the disk may stay full
                self._failing = True
                log.error(
                    "querylog.write_failed",
                    extra=fields(path=self.config.path, error=exc.strerror or str(exc)),
                )
            return
        self.written += count
        if self._failing:
            self._failing = False
            log.info("querylog.write_resumed", extra=fields(path=self.config.path, lost=self.lost))

    def _reopened(self) -> None:
        if self.config.path == "-":
            return
        try:
            fresh = self._open()
        except OSError as exc:
            log.error(
                "querylog.reopen_failed",
                extra=fields(
                    path=self.config.path,
                    error=exc.strerror or str(exc),
                    outcome="writing on to the file already open",
                ),
            )
            return
        self._close()
        self._fd = fresh
        log.info("querylog.reopened", extra=fields(path=self.config.path))

    def _open(self) -> int:
        if self.config.path == "-":
            return os.dup(sys.stdout.fileno())  # closing ours leaves standard output open
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.config.path, flags, _MODE)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
