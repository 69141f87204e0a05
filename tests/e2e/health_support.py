"""End-to-end health helpers: HTTP endpoints on loopback addresses, and an agent that probes them.

Each test gets its own block of loopback addresses (127.A.B.1, .2, ...; A and B random), so
runs in parallel never share an endpoint; every server listens on the same port so that
one probe spec fits them all. All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.conftest import DNSMESH, REPO, AgentProcess
from tests.integration.sync_support import resolve
from tests.support.policies import policy_text
from tests.support.ports import free_port


@dataclass
class Endpoint:
    host: str
    port: int
    control: Path
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.e2e.endpoint_server", self.host, str(self.port)]
        self.process = subprocess.Popen(
            [*argv, str(self.control)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.wait(5)
            raise OSError(f"endpoint {self.host}:{self.port} did not start")

    def slow(self, seconds: float) -> None:
        self.control.write_text(str(seconds))

    def kill(self) -> None:
        """Dead: the process is gone, connections are refused."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(5)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def hang(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


def _block() -> str:
    return f"127.{random.randint(50, 250)}.{random.randint(1, 254)}"


@contextlib.contextmanager
def endpoints(tmp: Path, count: int, port: int | None = None) -> Iterator[list[Endpoint]]:
    """``count`` HTTP endpoints on a fresh loopback block, all on one port."""
    started: list[Endpoint] = []
    try:
        for _attempt in range(10):
            block = _block()
            chosen = port if port is not None else free_port(f"{block}.1")
            try:
                for i in range(1, count + 1):
                    ep = Endpoint(f"{block}.{i}", chosen, tmp / f"delay-{block}.{i}")
                    ep.start()
                    started.append(ep)
                break
            except OSError:
                for ep in started:
                    ep.kill()
                started.clear()
        else:
            raise OSError("no free loopback block for the endpoints")
        yield started
    finally:
        for ep in started:
            ep.kill()


def health_policy(
    path: Path,
    eps: list[Endpoint],
    *,
    strategy: str = "weighted",
    probe: dict[str, Any],
    outlier: dict[str, Any] | None = None,
    name: str = "web",
) -> str:
    domain = f"{name}.health.test"
    endpoints = [{"address": e.host, "weight": 1} for e in eps]
    health = {"probe": probe, "outlier": outlier or {}}
    path.write_text(
        policy_text(name, endpoints, domain=domain, ttl=0, strategy=strategy, health=health)
    )
    return domain


class PrefixedAgent(AgentProcess):
    """AgentProcess run under a command prefix (``setpriv ...``): same logs and helpers."""

    def __init__(self, prefix: list[str], args: list[str]) -> None:
        self.args = [*prefix, DNSMESH, "agent", "--log-format", "json", *args]
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO
        )
        self.logs: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


@contextlib.contextmanager
def local_agent(
    policies: Path, *extra: str, prefix: list[str] | None = None
) -> Iterator[AgentProcess]:
    """``dnsmesh agent --policies`` on a free loopback port, forwarding nowhere reachable."""
    args = [
        "--policies",
        str(policies),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"127.0.0.1:{free_port()}",
        "--no-loop-check",
        "--reload-interval",
        "0.1",
        *extra,
    ]
    process = PrefixedAgent(prefix, args) if prefix else AgentProcess(args)
    try:
        process.wait_event("agent.started")
        yield process
    finally:
        process.stop()


def answers(agent: AgentProcess, name: str, count: int) -> Counter[str]:
    """How often each address is the answer over ``count`` queries (bounded: 1 s each)."""
    address = agent.addresses[0]
    seen: Counter[str] = Counter()
    for _ in range(count):
        got = resolve(address.host, address.port, name, timeout=1.0)
        for item in got or ["<none>"]:
            seen[item] += 1
    return seen


def one_answer(agent: AgentProcess, name: str) -> str:
    address = agent.addresses[0]
    got = resolve(address.host, address.port, name, timeout=1.0)
    return got[0] if got else "<none>"


def time_until(predicate: Any, timeout: float, what: str, step: float = 0.01) -> float:
    """Seconds until ``predicate()`` holds (polled), or AssertionError after ``timeout``."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(step)
    return time.monotonic() - began


class Streak:
    """Asks once per call; true once ``length`` answers in a row were (not) ``address``.

    ``started`` is when the current streak began: the moment the agent changed its mind.
    """

    def __init__(
        self, agent: AgentProcess, name: str, address: str, *, present: bool, length: int = 40
    ) -> None:
        self.agent, self.name, self.address = agent, name, address
        self.present = present
        self.length = length
        self.run = 0
        self.started = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if (one_answer(self.agent, self.name) == self.address) != self.present:
            self.run = 0
            return False
        if self.run == 0:
            self.started = now
        self.run += 1
        return self.run >= self.length
