"""``dnsmesh controller`` as a real subprocess, for the tests and the controller benchmarks."""

from __future__ import annotations

import contextlib
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

_LISTENING = re.compile(r"controller\.listening address=\S+ url=(\S+)")  # http:// or https://
START_TIMEOUT = 30.0


class ControllerProcess:
    """``dnsmesh controller`` on a loopback port the kernel picks; ``base_url`` once started.

    A context manager: entering waits until the controller logs where it listens (its
    stderr lines are kept in ``stderr_lines``), leaving sends SIGTERM and, after
    ``stop_timeout`` seconds, SIGKILL.
    """

    def __init__(
        self, database_url: str, cwd: Path, *extra: str, stop_timeout: float = 10.0
    ) -> None:
        self.args = [
            sys.executable,
            "-m",
            "cli.main",
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--database",
            database_url,
            *extra,
        ]
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.stderr_lines: list[str] = []

    def __enter__(self) -> ControllerProcess:
        self.process = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.base_url:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:  # the process ended
                break
            match = _LISTENING.search(line)
            if match:
                self.base_url = match.group(1)
        if not self.base_url:
            self.__exit__(None, None, None)
            raise AssertionError("controller did not start:\n" + "".join(self.stderr_lines))
        return self

    def _drain(self, lines: queue.Queue[str | None]) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)
            lines.put(line)
        lines.put(None)

    def __exit__(self, *_exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stderr is not None:
            with contextlib.suppress(ValueError):  # the drain thread may still be reading
                self.process.stderr.close()
