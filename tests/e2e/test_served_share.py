"""Served share end to end: two real agents (one on the WebSocket, one polling) answer an
80/20 policy to dnspython, report their answer counts to a real controller, and
``/v1/policies/{name}/share`` shows the split within 4 binomial standard deviations with
every answer counted once; an agent whose own probes eject an endpoint the mesh still
serves skews another policy, and that drift is flagged (API, metric, CLI)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from tests.e2e.health_support import time_until
from tests.e2e.mesh_support import Mesh, mesh
from tests.integration.conftest import AgentProcess
from tests.support.policies import policy_doc
from tests.support.ports import free_port

QUERIES = 2_000  # per agent
FAST_REPORTS = ("--probe-report-interval", "0.2")


def _ask(agent: AgentProcess, name: str, count: int) -> int:
    """``count`` A queries over one UDP socket; returns how many got an address."""
    address = agent.addresses[0]
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            query = dns.message.make_query(name, "A")
            response = dns.query.udp(query, address.host, port=address.port, timeout=2.0, sock=sock)
            answered += sum(len(r) for r in response.answer if r.rdtype == dns.rdatatype.A)
    return answered


def _share(m: Mesh, name: str) -> dict[str, Any]:
    response = m.rest.http.get(f"/v1/policies/{name}/share", params={"window": 300})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _counted(m: Mesh, name: str, answers: int) -> dict[str, Any]:
    """The share once the controller has counted ``answers`` answers (reports every 0.2 s)."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(_share(m, name))
        assert seen["answers"] <= answers, f"counted twice: {seen['answers']} > {answers}"
        return bool(seen["answers"] == answers)

    time_until(done, timeout=15, what=f"{answers} answers of {name} counted", step=0.1)
    return seen


@contextlib.contextmanager
def _listening(host: str) -> Iterator[int]:
    """A TCP port that accepts (a healthy endpoint for a tcp probe)."""
    with socket.socket() as server:
        server.bind((host, free_port(host)))
        server.listen(64)
        yield server.getsockname()[1]


@contextlib.contextmanager
def _agents(*argvs: list[str]) -> Iterator[list[AgentProcess]]:
    """Agent processes started side by side (each takes a second or more to start)."""
    with contextlib.ExitStack() as stack:
        started = []
        for argv in argvs:
            agent = AgentProcess(argv)
            stack.callback(agent.stop)
            started.append(agent)
        for agent in started:
            agent.wait_event("agent.started")
        yield started


def test_an_80_20_policy_is_served_80_20_and_a_local_ejection_is_flagged(tmp_path: Path) -> None:
    with mesh(tmp_path) as m, _listening("127.0.0.1") as port:
        m.rest.put(
            policy_doc(
                "shop",
                [{"address": "127.0.20.1", "weight": 80}, {"address": "127.0.20.2", "weight": 20}],
                domain="shop.share.test",
                ttl=0,
            )
        )
        # The second endpoint refuses the probe: only the probing agent ejects it, and one
        # voter is no quorum, so the mesh (and the intended share) still serves it.
        probe = {"type": "tcp", "port": port, "interval": 0.1, "timeout": 0.2}
        m.rest.put(
            policy_doc(
                "skew",
                [{"address": "127.0.0.1", "weight": 1}, {"address": "127.0.0.2", "weight": 1}],
                domain="skew.share.test",
                ttl=0,
                health={"probe": probe, "outlier": {"consecutive_failures": 2}},
            )
        )
        with _agents(
            m.agent_args("ws", *FAST_REPORTS, "--no-probes"),
            m.agent_args("poll", *FAST_REPORTS, "--sync", "http"),
        ) as (streaming, polling):
            for agent in (streaming, polling):
                time_until(
                    lambda a=agent: _ask(a, "skew.share.test", 1) == 1,  # type: ignore[misc]
                    timeout=10,
                    what="the policies applied",
                    step=0.05,
                )
            polling.wait_event("health.ejected")
            answered = _ask(streaming, "shop.share.test", QUERIES)
            answered += _ask(polling, "shop.share.test", QUERIES)
            assert answered == 2 * QUERIES
            shop = _counted(m, "shop", 2 * QUERIES)
            served = {e["address"]: e for e in shop["endpoints"]}
            n = shop["answers"]
            tolerance = 4 * math.sqrt(0.8 * 0.2 / n)  # 4 sd of the binomial share
            assert abs(served["127.0.20.1"]["served"] - 0.8) <= tolerance, shop
            assert served["127.0.20.1"]["intended"] == 0.8
            assert served["127.0.20.2"]["intended"] == 0.2
            assert not shop["flagged"]

            skewed = _ask(polling, "skew.share.test", 400)
            skew = _counted(m, "skew", 2 + skewed)  # and one readiness answer per agent
            assert skew["flagged"], skew
            assert skew["drift"] > 0.4
            assert {e["address"]: e["intended"] for e in skew["endpoints"]} == {
                "127.0.0.1": 0.5,
                "127.0.0.2": 0.5,
            }
            metrics = m.rest.http.get("/metrics").text
            drift = re.search(r'dnsmesh_controller_share_drift\{policy="skew"\} (\S+)', metrics)
            assert drift is not None and float(drift.group(1)) > 0.4
            table = subprocess.run(
                [sys.executable, "-m", "cli.main", "get", "share", "shop"],
                env={
                    **os.environ,
                    "DNSMESH_SERVER": m.controller.url,
                    "DNSMESH_TOKEN": m.tokens["viewer"],
                },
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            print(table)
            assert "ADDRESS" in table and "127.0.20.1" in table and "ok over" in table
