"""The mesh-wide loop end to end: two probing agents report a dead endpoint, the controller's
quorum marks it down, and an agent that never probed it (``--no-probes``) stops handing it out;
when it recovers, the quorum marks it up and it comes back everywhere."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.health_support import Streak, answers, endpoints, time_until
from tests.e2e.mesh_support import agent_process, mesh

# Wall-clock bounds: run alone after the parallel part of the suite (scripts/test).
pytestmark = pytest.mark.timing

FAST_REPORTS = ("--probe-report-interval", "0.3")


def _policy(hosts: list[str], port: int) -> dict[str, Any]:
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": {"name": "shop"},
        "spec": {
            "domain": "shop.quorum.test",
            "ttl": 0,
            "endpoints": [{"address": h, "weight": 1} for h in hosts],
            "health": {
                "probe": {"type": "http", "port": port, "interval": 0.2, "timeout": 0.2},
                "outlier": {"consecutive_failures": 3, "base_ejection": "1s"},
            },
        },
    }


def test_a_quorum_failed_endpoint_disappears_from_an_agent_that_never_probed(
    tmp_path: Path,
) -> None:
    name = "shop.quorum.test"
    with endpoints(tmp_path, 2) as (good, bad), mesh(tmp_path) as m:
        m.rest.put(_policy([good.host, bad.host], good.port))
        with contextlib.ExitStack() as stack:
            # One probing agent reports on the WebSocket, the other over HTTP polling.
            probing = [
                stack.enter_context(agent_process(m.agent_args("ws", *FAST_REPORTS))),
                stack.enter_context(
                    agent_process(m.agent_args("poll", *FAST_REPORTS, "--sync", "http"))
                ),
            ]
            blind = stack.enter_context(agent_process(m.agent_args("blind", "--no-probes")))
            for agent in [*probing, blind]:
                time_until(
                    lambda a=agent: len(answers(a, name, 40)) == 2,  # type: ignore[misc]
                    timeout=10,
                    what="both endpoints answered",
                    step=0.05,
                )
            killed = time.monotonic()
            bad.kill()
            gone = Streak(blind, name, bad.host, present=False)
            time_until(gone, timeout=15, what="the quorum's down set reaching the blind agent")
            print(f"quorum: gone from the blind agent {gone.started - killed:.2f} s after death")
            assert not blind.events("health.ejected"), "the blind agent did not probe"
            listed = m.rest.http.get("/v1/endpoints").json()
            item = next(i for i in listed["items"] if i["address"] == bad.host)
            assert item["down"] is True
            assert len(item["agents"]) == 2, "both transports delivered reports"
            healed = time.monotonic()
            bad.start()
            back = Streak(blind, name, bad.host, present=True, length=1)
            time_until(back, timeout=15, what="the recovered endpoint back on the blind agent")
            print(f"quorum: back on the blind agent {back.started - healed:.2f} s after recovery")
