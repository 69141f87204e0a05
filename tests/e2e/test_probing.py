"""Coordinated probing end to end: a controller with a probe budget, real agents, and loopback
TCP endpoints that count the probe connections they accept.

* N=1: each endpoint is probed by its one assigned agent only (the accept count is one
  agent's rate, and only that agent reports it); SIGKILL the prober and its endpoints move
  to another agent, which probes and reports them.
* N=2 of three agents: a dead endpoint still goes down mesh-wide, on the agent that never
  probed it too.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from controller.db.engine import build_engine
from controller.db.models import ProberRow
from tests.e2e.health_support import answers, time_until
from tests.e2e.mesh_support import Mesh, agent_id, agent_process, mesh
from tests.integration.conftest import AgentProcess
from tests.support.ports import free_port

# Wall-clock rates and bounds: run alone after the parallel part of the suite.
pytestmark = pytest.mark.timing

INTERVAL = 0.2  # each agent probes each endpoint this often
FAST = ("--probe-report-interval", "0.3")
CONTROLLER = ("--probe-reassign-delay", "0.3", "--report-stale-after", "3")


class Listener:
    """A TCP endpoint on a loopback address that counts the connections it accepts."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.accepted = 0
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def listeners(count: int) -> Iterator[list[Listener]]:
    block = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}"
    port = free_port(f"{block}.1")
    opened = [Listener(f"{block}.{i}", port) for i in range(1, count + 1)]
    try:
        yield opened
    finally:
        for listener in opened:
            listener.close()


def _policy(hosts: list[Listener], *, per_endpoint: int | None = None) -> dict[str, Any]:
    health: dict[str, Any] = {
        "probe": {"type": "tcp", "port": hosts[0].port, "interval": INTERVAL, "timeout": 0.2},
        "fall": 2,
        "outlier": {"base_ejection": "1s", "max_ejection_percent": 100},
    }
    if per_endpoint is not None:
        health["probes_per_endpoint"] = per_endpoint
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": {"name": "coord"},
        "spec": {
            "domain": "coord.probing.test",
            "ttl": 0,
            "endpoints": [{"address": h.host, "weight": 1} for h in hosts],
            "health": health,
        },
    }


def assignment(m: Mesh) -> dict[str, list[str]]:
    engine = build_engine(m.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(ProberRow.address, ProberRow.agents))
            return {address: list(agents) for address, agents in rows}
    finally:
        engine.dispose()


def reporters(m: Mesh, address: str, fresh_s: float = 1.5) -> set[str]:
    """The agents whose latest report on ``address`` is at most ``fresh_s`` old."""
    items = m.rest.http.get("/v1/endpoints").json()["items"]
    item = next((i for i in items if i["address"] == address), None)
    if item is None:
        return set()
    return {a["agent_id"] for a in item["agents"] if a.get("age_s", 0) <= fresh_s}


def start_agents(m: Mesh, stack: contextlib.ExitStack, count: int) -> dict[str, AgentProcess]:
    started = {}
    for i in range(count):
        process = stack.enter_context(
            agent_process(m.agent_args(f"a{i}", *FAST, "--label", f"zone=z{i}"))
        )
        started[agent_id(process)] = process
    return started


def test_one_prober_per_endpoint_and_a_killed_prober_hands_over(tmp_path: Path) -> None:
    with (
        listeners(3) as eps,
        mesh(tmp_path, "--probes-per-endpoint", "1", "--quorum-min-agents", "1", *CONTROLLER) as m,
        contextlib.ExitStack() as stack,
    ):
        agents = start_agents(m, stack, 3)
        m.rest.put(_policy(eps))
        time_until(lambda: len(assignment(m)) == 3, timeout=10, what="every endpoint assigned")
        probers = assignment(m)
        assert all(len(v) == 1 and v[0] in agents for v in probers.values())
        time_until(
            lambda: all(reporters(m, e.host) == set(probers[e.host]) for e in eps),
            timeout=10,
            what="only the assigned agent reporting each endpoint",
        )
        before = [e.accepted for e in eps]
        window = 3.0
        time.sleep(window)
        rates = [(e.accepted - b) / window for e, b in zip(eps, before, strict=True)]
        one_agent = 1 / INTERVAL  # 5 probes a second
        print(f"probing: accepts/s per endpoint with N=1 of 3 agents: {rates}")
        # One agent's rate, not three agents' (15/s): generous for a loaded machine.
        assert all(0.3 * one_agent <= r <= 1.8 * one_agent for r in rates), rates

        victim = probers[eps[0].host][0]
        theirs = [a for a, v in probers.items() if victim in v]
        killed = agents.pop(victim)
        killed.proc.kill()
        killed.proc.wait(10)
        time_until(
            lambda: all(victim not in assignment(m).get(a, [victim]) for a in theirs),
            timeout=15,
            what="the killed prober's endpoints moving to another agent",
        )
        moved = assignment(m)
        for address in theirs:
            (heir,) = moved[address]
            assert heir in agents
            time_until(
                lambda a=address, h=heir: h in reporters(m, a),  # type: ignore[misc]
                timeout=10,
                what="the new prober reporting",
            )


def test_a_dead_endpoint_goes_down_everywhere_with_two_probers_of_three(tmp_path: Path) -> None:
    name = "coord.probing.test"
    with (
        listeners(4) as eps,
        mesh(tmp_path, "--probes-per-endpoint", "2", *CONTROLLER) as m,
        contextlib.ExitStack() as stack,
    ):
        agents = start_agents(m, stack, 3)
        m.rest.put(_policy(eps))
        time_until(lambda: len(assignment(m)) == 4, timeout=10, what="every endpoint assigned")
        probers = assignment(m)
        dead = next(e for e in eps if len(set(agents) - set(probers[e.host])) == 1)
        (blind_id,) = set(agents) - set(probers[dead.host])
        blind = agents[blind_id]
        time_until(
            lambda: dead.host in answers(blind, name, 40),
            timeout=10,
            what="the endpoint answered before its death",
            step=0.05,
        )
        time_until(
            lambda: blind_id not in reporters(m, dead.host, fresh_s=1.0),
            timeout=10,
            what="the unassigned agent no longer probing it",
        )
        dead.close()
        time_until(
            lambda: any(
                i["address"] == dead.host and i["down"]
                for i in m.rest.http.get("/v1/endpoints").json()["items"]
            ),
            timeout=15,
            what="the quorum of two probers marking it down",
        )
        time_until(
            lambda: dead.host not in answers(blind, name, 40),
            timeout=10,
            what="the agent that never probed it leaving it out",
            step=0.05,
        )
        assert blind_id not in reporters(m, dead.host, fresh_s=1.0)
