"""Demand-driven slices end to end: a real agent answers a scaled slice from its first
endpoint, reports the answers to a real controller, and once the queries outrun
``target_qps_per_endpoint`` the controller raises the count (a revision) and the agent
answers from both endpoints; ``dnsmesh get scale`` shows it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from tests.e2e.health_support import time_until
from tests.e2e.mesh_support import Mesh, agent_process, mesh
from tests.integration.conftest import AgentProcess
from tests.support.policies import policy_doc

NAME = "api.scale.test"
FIRST, SECOND = "127.0.50.1", "127.0.50.2"


def _answers(agent: AgentProcess, count: int) -> set[str]:
    """The addresses of ``count`` A answers over one UDP socket."""
    address = agent.addresses[0]
    seen: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            query = dns.message.make_query(NAME, "A")
            response = dns.query.udp(query, address.host, port=address.port, timeout=2.0, sock=sock)
            for rrset in response.answer:
                if rrset.rdtype == dns.rdatatype.A:
                    seen.update(r.address for r in rrset)
    return seen


def _scale(m: Mesh) -> dict[str, Any]:
    response = m.rest.http.get("/v1/policies/api/scale")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()["slices"][0]
    return body


def test_a_busy_slice_gains_an_endpoint_and_the_agent_answers_from_it(tmp_path: Path) -> None:
    with mesh(tmp_path, "--scale-window", "10", "--scale-step-up", "1") as m:
        m.rest.put(
            policy_doc(
                "api",
                # written second first: the stable order (priority, address) puts FIRST first
                [{"address": SECOND, "group": "pool"}, {"address": FIRST, "group": "pool"}],
                domain=NAME,
                ttl=0,
                slices=[
                    {
                        "id": "local",
                        "match": {"client_cidrs": ["127.0.0.0/8"]},
                        "groups": ["pool"],
                        "scale": {"min": 1, "max": 2, "target_qps_per_endpoint": 5},
                    }
                ],
            )
        )
        args = m.agent_args("ws", "--probe-report-interval", "0.2", "--no-probes")
        with agent_process(args) as agent:
            time_until(lambda: _answers(agent, 1) == {FIRST}, 10, "the policy applied", 0.05)
            assert _answers(agent, 40) == {FIRST}  # min until the controller says
            assert _scale(m)["count"] == 1

            # ~40 queries a second against a target of 5 per endpoint: bounded by the
            # deadline (the controller's round is every 10 s)
            deadline = time.monotonic() + 60
            while _scale(m)["count"] < 2:
                assert time.monotonic() < deadline, _scale(m)
                _answers(agent, 20)
                time.sleep(0.5)
            scaled = _scale(m)
            assert scaled["endpoints"] == [FIRST, SECOND] and scaled["revision"] is not None
            assert "qps > 1 x 5 per endpoint" in scaled["reason"]
            time_until(
                lambda: _answers(agent, 40) == {FIRST, SECOND}, 10, "both endpoints answered", 0.1
            )
            table = subprocess.run(
                [sys.executable, "-m", "cli.main", "get", "scale", "api"],
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
            assert "SLICE" in table and "local" in table and "1-2" in table
            assert f"{FIRST}, {SECOND}" in table
