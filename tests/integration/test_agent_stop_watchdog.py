"""The stop's last resort: a thread nothing can cancel does not keep a stopping agent alive.

A policy file replaced by a FIFO with no writer leaves the reload's read blocked for good in
an executor thread; the interpreter's exit would wait for that thread forever.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import AgentProcess, policy_yaml
from tests.support.polling import wait_until

Spawn = Callable[..., AgentProcess]
DRAIN = 0.5
WATCHDOG = 3.0  # agent.app.STOP_WATCHDOG_MARGIN


def test_a_thread_stuck_at_exit_ends_the_process_when_the_watchdog_fires(
    tmp_path: Path, spawn_agent: Spawn
) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(policy_yaml("web", "web.mesh.test", [{"address": "10.3.0.1"}]))
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--no-loop-check", "--reload-interval", "0.05", "--drain-timeout", str(DRAIN),
    )  # fmt: skip
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.replace(fifo, policies)  # the next reload opens it and blocks: no writer, ever
    threads = Path(f"/proc/{agent.proc.pid}/task")
    wait_until(lambda: len(list(threads.iterdir())) > 1, 5, "the reload thread")
    time.sleep(0.3)  # it is in open() by now
    began = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    status = agent.proc.wait(DRAIN + WATCHDOG + 10)
    took = time.monotonic() - began
    print(f"\nstop with a thread stuck in open(): exit {status} in {took:.2f}s")
    assert status == 1
    assert took < DRAIN + WATCHDOG + 2.0
    overran = agent.events("agent.stop_overran")
    assert overran and overran[0]["margin"] == WATCHDOG
    assert agent.events("agent.stopped")  # the stop itself finished in time
