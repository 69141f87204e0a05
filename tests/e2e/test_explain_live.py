"""Explain against live answers end to end: a real controller and a real controlled agent
whose probes eject one endpoint while an operator drains another. The controller's
``GET /v1/explain?node=`` (the ejections that node reported), the agent's own admin
``/explain`` and the answers the agent really gives that client all agree."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import httpx
import pytest

from tests.e2e.health_support import time_until
from tests.e2e.mesh_support import agent_process, mesh
from tests.integration.conftest import AgentProcess
from tests.support.policies import policy_doc
from tests.support.ports import free_port

NODE = "explain-node"
CLIENT = "127.0.0.1"
QUERIES = 1500
CHI2_999_DF1 = 10.83  # exceeded by a right distribution with probability 0.001
WEIGHTS = {"127.0.0.1": 1, "127.0.0.2": 3, "127.0.0.3": 2, "127.0.0.4": 4}
REFUSES = "127.0.0.2"  # nothing listens on the probed port: this agent ejects it
DRAINED = "127.0.0.4"


@contextlib.contextmanager
def _listening(hosts: list[str]) -> Iterator[int]:
    """One TCP port accepting on each of ``hosts`` (healthy endpoints for a tcp probe).
    Connections are accepted and closed: a full backlog would fail the probes."""
    port = free_port(hosts[0])
    stop = threading.Event()

    def serve(server: socket.socket) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                server.accept()[0].close()

    with contextlib.ExitStack() as stack:
        threads = []
        for host in hosts:
            server = stack.enter_context(socket.socket())
            server.bind((host, port))
            server.listen(64)
            server.settimeout(0.05)
            threads.append(threading.Thread(target=serve, args=(server,), daemon=True))
        for thread in threads:
            thread.start()
        try:
            yield port
        finally:
            stop.set()
            for thread in threads:
                thread.join(5)


def _answers(agent: AgentProcess, name: str, count: int) -> Counter[str]:
    address = agent.addresses[0]
    seen: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CLIENT, 0))
        for _ in range(count):
            query = dns.message.make_query(name, "A")
            response = dns.query.udp(query, address.host, port=address.port, timeout=2.0, sock=sock)
            seen[response.answer[0][0].to_text()] += 1
    return seen


def _shares(body: dict[str, Any]) -> dict[str, float]:
    shares: dict[str, float] = body["distribution"]["A"]["shares"]
    return {a: p for a, p in shares.items() if p > 0}


def test_controller_and_agent_explain_what_the_agent_answers(tmp_path: Path) -> None:
    serving = [a for a in WEIGHTS if a != REFUSES]
    with mesh(tmp_path) as m, _listening(serving) as port:
        probe = {"type": "tcp", "port": port, "interval": 0.1, "timeout": 0.2}
        m.rest.put(
            policy_doc(
                "live",
                [{"address": a, "weight": w} for a, w in WEIGHTS.items()],
                domain="live.explain.test",
                ttl=0,
                health={"probe": probe, "fall": 2},
            )
        )
        drain = m.rest.http.post(f"/v1/endpoints/{DRAINED}/drain", json={"policy": "live"})
        assert drain.status_code == 201, drain.text
        argv = m.agent_args("state", "--node-name", NODE, "--probe-report-interval", "0.2")
        with agent_process(argv) as agent:
            agent.wait_event("health.ejected")
            admin = "http://" + agent.wait_event("agent.admin_listening")[0]["address"]
            params = {"name": "live.explain.test", "client": CLIENT}

            def controller_knows() -> bool:
                body = m.rest.http.get("/v1/explain", params={**params, "node": NODE}).json()
                return bool(body.get("node") and REFUSES in body["node"]["ejected"])

            time_until(controller_knows, timeout=15, what="the ejection reported", step=0.1)
            controller = m.rest.http.get("/v1/explain", params={**params, "node": NODE}).json()
            local = httpx.get(f"{admin}/explain", params=params, timeout=15).json()
            seen = _answers(agent, "live.explain.test", QUERIES)

    # The same view from both sides: .2 ejected by this agent, .4 drained, 1:2 for the rest.
    assert controller["source"] == "controller" and local["source"] == "agent"
    for body in (controller, local):
        states = {c["address"]: c["state"] for c in body["candidates"]}
        assert states == {
            "127.0.0.1": "active",
            REFUSES: "ejected",
            "127.0.0.3": "active",
            DRAINED: "drained",
        }, body
    assert _shares(controller) == _shares(local)
    assert _shares(local) == pytest.approx({"127.0.0.1": 1 / 3, "127.0.0.3": 2 / 3}, abs=1e-6)
    # And what the agent really answers that client follows it.
    shares = _shares(local)
    assert set(seen) <= set(shares), seen
    statistic = sum((seen[a] - QUERIES * p) ** 2 / (QUERIES * p) for a, p in shares.items())
    assert statistic < CHI2_999_DF1, (statistic, seen)  # two answers: one degree of freedom
