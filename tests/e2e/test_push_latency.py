"""A REST change is answered by a connected ``dnsmesh agent`` within a second, over the
WebSocket and over HTTP long-polling (``--sync http``); the latency is measured and printed."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from tests.e2e.mesh_support import agent_id, agent_process, ask, mesh
from tests.integration.sync_support import policy
from tests.support.polling import wait_until

# Wall-clock bounds: run alone after the parallel part of the suite (scripts/test).
pytestmark = pytest.mark.timing

CHANGES = 15


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_a_rest_change_is_answered_within_a_second(tmp_path: Path, transport: str) -> None:
    with mesh(tmp_path) as m:
        m.rest.put(policy("web", ["127.0.10.0"]))
        # A short long-poll keeps the controller's shutdown quick (it waits for open polls).
        args = m.agent_args("state", "--sync", transport, "--sync-poll-wait", "2")
        with agent_process(args) as agent:
            wait_until(lambda: ask(agent, "web.mesh.internal") == ["127.0.10.0"], 5, "snapshot")
            latencies = []
            for n in range(1, CHANGES + 1):
                wanted = [f"127.0.10.{n}"]
                began = time.perf_counter()
                revision = m.rest.put(policy("web", wanted))
                wait_until(lambda w=wanted: ask(agent, "web.mesh.internal") == w, 2, f"change {n}")
                latencies.append(time.perf_counter() - began)
            applied = agent.events("sync.applied")[-1]
            assert applied["revision"] == revision
            assert applied["transport"] == ("websocket" if transport == "ws" else "poll")
            row = wait_until(
                lambda: (a := m.rest.agent(agent_id(agent))) and a["applied_revision"] == revision,
                5,
                "the ACK recorded",
            )
            assert row
        ms = sorted(1000 * s for s in latencies)
        print(
            f"\npush latency ({transport}, REST PUT -> DNS answer, {CHANGES} changes): "
            f"median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms"
        )
        assert ms[-1] < 1000.0
