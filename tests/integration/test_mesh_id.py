"""The mesh id: an agent whose state came from another mesh gets a snapshot, never a delta.

Revision numbers of two meshes (two controller databases) say nothing about each other: an
agent at revision 2 of mesh A must not get "the changes since 2" of mesh B.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sync.state_file import StateDir
from dnsmesh import protocol
from dnsmesh.policy import parse_policy
from tests.integration.controller_support import policy_doc
from tests.integration.fakedns import LoopThread
from tests.integration.push_support import ServedController, TestAgent, clear_agents
from tests.integration.sync_support import SyncedAgents
from tests.support.polling import wait_until

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def served(database_url: str) -> Iterator[ServedController]:
    clear_agents(database_url)
    with ServedController(database_url) as controller:
        yield controller


def _put(served: ServedController, *names: str) -> int:
    async def put_all() -> int:
        revision = 0
        async with served.http() as http:
            for name in names:
                response = await http.put(
                    f"/v1/policies/{name}", json=policy_doc(name), headers=served.auth("editor")
                )
                assert response.status_code in (200, 201), response.text
                revision = response.json()["metadata"]["revision"]
        return revision

    return asyncio.run(put_all())


def test_a_hello_from_another_mesh_gets_a_snapshot_and_its_own_mesh_a_delta(
    served: ServedController, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _put(served, "alpha", "beta", "gamma")
    mesh = served.app.state.policies.mesh_id()
    assert isinstance(mesh, str) and len(mesh) == 36  # a UUID, made with the database

    async def first_update(mesh_id: str | None) -> protocol.Message:
        agent = await TestAgent.connect(
            served.ws_url, served.tokens["agent"], revision=2, mesh_id=mesh_id
        )
        try:
            return await agent.next()
        finally:
            await agent.close()

    own = asyncio.run(first_update(mesh))
    assert isinstance(own, protocol.Delta) and (own.since, own.mesh_id) == (2, mesh)
    unknown = asyncio.run(first_update(None))  # a state from before mesh ids: as before
    assert isinstance(unknown, protocol.Delta)
    other = asyncio.run(first_update("6f1c6d5e-0000-4000-8000-000000000000"))
    assert isinstance(other, protocol.SnapshotMessage) and other.revision == 3
    assert other.mesh_id == mesh
    logged = [r for r in caplog.records if r.getMessage() == "agent.other_mesh"]
    assert len(logged) == 1 and "6f1c6d5e" in str(logged[0].__dict__)

    async def poll(mesh_id: str) -> dict[str, object]:
        async with served.http() as http:
            response = await http.get(
                "/v1/changes",
                params={"since": 2, "mesh_id": mesh_id},
                headers=served.auth("agent"),
            )
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    assert asyncio.run(poll(mesh))["type"] == "delta"
    assert asyncio.run(poll("another-mesh"))["type"] == "snapshot"


def test_an_agent_with_another_meshs_state_replaces_it_by_a_snapshot_and_says_so(
    served: ServedController,
    loop_thread: LoopThread,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    revision = _put(served, "alpha", "beta")
    # The state folder holds revision 1 of another mesh: a policy this mesh never had.
    state = tmp_path / "state"
    stranger = parse_policy(policy_doc("stranger", domain="stranger.mesh.internal"))
    StateDir(state).ensure()
    StateDir(state).save(protocol.AppliedState(1, {"stranger": stranger}, mesh_id="mesh-a"))
    agents = SyncedAgents(loop_thread, tmp_path)
    try:
        synced = agents.start(served.base_url, served.tokens["agent"], state_dir=state)
        wait_until(
            lambda: synced.agent.sources.running.revision == revision,
            timeout=10,
            what="the snapshot applied",
        )
        assert set(synced.agent.sources.running.policies) == {"alpha", "beta"}
        assert synced.agent.sources.running.mesh_id == served.app.state.policies.mesh_id()
        # Logged by the agent's loop right after the swap the test saw from its own thread.
        wait_until(
            lambda: any(r.getMessage() == "sync.mesh_changed" for r in caplog.records),
            timeout=5,
            what="the mesh change logged",
        )
        changed = [r for r in caplog.records if r.getMessage() == "sync.mesh_changed"]
        assert len(changed) == 1 and "mesh-a" in str(changed[0].__dict__)
    finally:
        agents.stop_all()
    assert StateDir(state).load().mesh_id == served.app.state.policies.mesh_id()  # type: ignore[union-attr]
