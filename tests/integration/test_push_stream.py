"""The WebSocket push on both backends: real websockets clients act as agents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from websockets.exceptions import ConnectionClosed, InvalidStatus

from controller.services.policies import PolicyService
from dnsmesh import protocol
from dnsmesh.protocol import AppliedState, apply_update
from tests.integration.controller_support import policy_doc
from tests.integration.push_support import (
    ServedController,
    TestAgent,
    agents_by_id,
    clear_agents,
    eventually,
    fast_settings,
)


@pytest.fixture
def served(database_url: str) -> Iterator[ServedController]:
    clear_agents(database_url)  # the PostgreSQL session database is shared by tests
    with ServedController(database_url) as controller:
        yield controller


# The protocol's edges do not depend on the backend: SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def put(http: httpx.AsyncClient, served: ServedController, name: str, **kw: Any) -> int:
    response = await http.put(
        f"/v1/policies/{name}", json=policy_doc(name, **kw), headers=served.auth("editor")
    )
    assert response.status_code in (200, 201), response.text
    revision: int = response.json()["metadata"]["revision"]
    return revision


async def delete(http: httpx.AsyncClient, served: ServedController, name: str) -> int:
    response = await http.delete(f"/v1/policies/{name}", headers=served.auth("editor"))
    assert response.status_code == 200, response.text
    revision: int = response.json()["revision"]
    return revision


async def deltas_until(agent: TestAgent, revision: int) -> list[protocol.Delta]:
    deltas: list[protocol.Delta] = []
    while not deltas or deltas[-1].revision < revision:
        delta = await agent.next()
        assert isinstance(delta, protocol.Delta), delta
        deltas.append(delta)
    assert deltas[-1].revision == revision
    return deltas


def test_new_agent_gets_a_snapshot_and_its_ack_is_recorded(served: ServedController) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            await put(http, served, "alpha")
            await put(http, served, "beta")
            agent = await TestAgent.connect(served.ws_url, served.tokens["agent"], revision=0)
            update = await agent.next()
            assert isinstance(update, protocol.SnapshotMessage)
            assert update.revision == 2
            state = apply_update(AppliedState.empty(), update)
            assert set(state.policies) == {"alpha", "beta"}
            await agent.ack(update.revision)

            async def acked() -> bool:
                row = (await agents_by_id(http, served.auth("viewer"))).get("agent-1")
                return row is not None and row["applied_revision"] == 2

            await eventually(acked)
            row = (await agents_by_id(http, served.auth("viewer")))["agent-1"]
            assert row["connected"] is True
            assert row["node_name"] == "node-agent-1"
            assert row["labels"] == {"zone": "a"}
            assert row["software"] == "dnsmesh-test/1"
            assert row["transport"] == "websocket"
            assert row["replica"] == "test-replica"
            assert row["last_nack"] is None
            await agent.silent_for(0.3)  # nothing more until something changes
            await agent.close()

    asyncio.run(scenario())


@SQLITE_ONLY
def test_a_new_agent_on_an_empty_database_gets_an_empty_snapshot(served: ServedController) -> None:
    async def scenario() -> None:
        agent = await TestAgent.connect(served.ws_url, served.tokens["agent"])
        assert await agent.next() == protocol.SnapshotMessage(
            revision=0, policies=[], mesh_id=served.hub.feed.mesh_id
        )
        async with served.http() as http:
            revision = await put(http, served, "alpha")
        delta = await agent.next()  # from the empty state: a delta, not another snapshot
        assert isinstance(delta, protocol.Delta) and (delta.since, delta.revision) == (0, revision)
        await agent.close()

    asyncio.run(scenario())


def test_reconnect_gets_exactly_the_deltas_since_its_revision(served: ServedController) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            first = await put(http, served, "alpha")  # 1
            await put(http, served, "beta")  # 2
            agent = await TestAgent.connect(served.ws_url, served.tokens["agent"])
            snapshot = await agent.next()
            assert isinstance(snapshot, protocol.SnapshotMessage) and snapshot.revision == 2
            state_at_2 = apply_update(AppliedState.empty(), snapshot)
            await agent.ack(2)
            await agent.close()

            await put(http, served, "alpha", weight=50)  # 3
            await delete(http, served, "beta")  # 4
            await put(http, served, "gamma")  # 5

            again = await TestAgent.connect(served.ws_url, served.tokens["agent"], revision=2)
            deltas = await deltas_until(again, 5)
            # One delta from 2 to 5, or (when the hub had not yet seen the last commit as
            # the agent said hello) a chain of them, each starting where the last ended.
            assert [d.since for d in deltas] == [2] + [d.revision for d in deltas[:-1]]
            changes = [(c.name, c.policy is None) for d in deltas for c in d.changes]
            if len(deltas) == 1:
                assert changes == [("alpha", False), ("beta", True), ("gamma", False)]
            state = state_at_2
            for delta in deltas:
                state = apply_update(state, delta)
            assert set(state.policies) == {"alpha", "gamma"}
            assert state.policies["alpha"].spec.endpoints[0].weight == 50
            await again.silent_for(0.3)
            await again.close()

            # From an older revision: more changes, still one delta.
            older = await TestAgent.connect(served.ws_url, served.tokens["agent"], revision=first)
            delta = await older.next()
            assert isinstance(delta, protocol.Delta) and (delta.since, delta.revision) == (1, 5)
            await older.silent_for(0.2)
            await older.close()

    asyncio.run(scenario())


def test_a_current_agent_gets_nothing_then_each_change_within_a_second(
    served: ServedController,
) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            head = await put(http, served, "alpha")
            agent = await TestAgent.connect(served.ws_url, served.tokens["agent"], revision=head)
            await agent.silent_for(0.5)
            state = AppliedState(head, {})  # only the revision matters for the deltas here
            latencies = []
            for weight in (80, 70, 60):
                start = time.monotonic()
                revision = await put(http, served, "alpha", weight=weight)
                delta = await agent.next(within=2)
                latencies.append(time.monotonic() - start)
                assert isinstance(delta, protocol.Delta)
                assert (delta.since, delta.revision) == (state.revision, revision)
                assert delta.changes[0].policy is not None
                assert delta.changes[0].policy["spec"]["endpoints"][0]["weight"] == weight
                state = AppliedState(revision, {})
                await agent.ack(revision)
            print(f"REST change -> agent: {', '.join(f'{s * 1000:.1f} ms' for s in latencies)}")
            assert max(latencies) < 1.0
            await agent.close()

    asyncio.run(scenario())


def test_ack_and_nack_are_recorded_and_convergence_counts_them(served: ServedController) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            base = await put(http, served, "alpha")
            good = await TestAgent.connect(served.ws_url, served.tokens["agent"], agent_id="good")
            bad = await TestAgent.connect(served.ws_url, served.tokens["admin"], agent_id="bad")
            for agent in (good, bad):
                snapshot = await agent.next()
                assert snapshot.type == "snapshot"
                await agent.ack(base)
            revision = await put(http, served, "alpha", weight=40)
            for agent in (good, bad):
                delta = await agent.next()
                assert isinstance(delta, protocol.Delta) and delta.revision == revision
            await good.ack(revision)
            await bad.nack(revision, "spec.endpoints[0].address: unreachable from this node")

            async def recorded() -> bool:
                body = (
                    await http.get(f"/v1/revisions/{revision}", headers=served.auth("viewer"))
                ).json()
                pending = body["pending"]
                return bool(body["converged"] == 1 and pending and pending[0]["last_nack"])

            await eventually(recorded)
            body = (
                await http.get(f"/v1/revisions/{revision}", headers=served.auth("viewer"))
            ).json()
            assert body["revision"] == revision and body["current_revision"] == revision
            assert (body["total"], body["converged"]) == (2, 1)
            [pending] = body["pending"]
            assert pending["agent_id"] == "bad" and pending["applied_revision"] == base
            assert pending["last_nack"]["revision"] == revision
            assert "unreachable" in pending["last_nack"]["reason"]
            older = (await http.get(f"/v1/revisions/{base}", headers=served.auth("viewer"))).json()
            assert (older["total"], older["converged"], older["pending"]) == (2, 2, [])
            agents = await agents_by_id(http, served.auth("viewer"))
            assert agents["good"]["applied_revision"] == revision
            assert agents["good"]["last_nack"] is None
            assert agents["bad"]["last_nack"]["revision"] == revision
            future = await http.get(f"/v1/revisions/{revision + 1}", headers=served.auth("viewer"))
            assert future.status_code == 404
            refused = await http.get(f"/v1/revisions/{revision}", headers=served.auth("agent"))
            assert refused.status_code == 403

            # After a NACK nothing is re-sent until a newer revision; then the delta starts
            # at what the agent runs (its last ACK), so it gets the refused change again.
            await bad.silent_for(0.4)
            fixed = await put(http, served, "alpha", weight=30)
            delta = await bad.next()
            assert isinstance(delta, protocol.Delta)
            assert (delta.since, delta.revision) == (base, fixed)
            delta = await good.next()
            assert isinstance(delta, protocol.Delta) and (delta.since, delta.revision) == (
                revision,
                fixed,
            )
            await good.close()
            await bad.close()

    asyncio.run(scenario())


def test_an_agent_behind_the_compacted_log_gets_a_snapshot(served: ServedController) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            for weight in (90, 80, 70, 60):
                await put(http, served, "alpha", weight=weight)  # revisions 1-4
            await put(http, served, "beta")  # 5
            removed = PolicyService(served.db).compact_changes(3)  # keep 4 and 5
            assert removed == 3
            behind = await TestAgent.connect(served.ws_url, served.tokens["agent"], revision=2)
            snapshot = await behind.next()
            assert isinstance(snapshot, protocol.SnapshotMessage) and snapshot.revision == 5
            assert {p["metadata"]["name"] for p in snapshot.policies} == {"alpha", "beta"}
            await behind.close()
            reached = await TestAgent.connect(served.ws_url, served.tokens["agent"], revision=3)
            delta = await reached.next()
            assert isinstance(delta, protocol.Delta) and (delta.since, delta.revision) == (3, 5)
            await reached.close()

    asyncio.run(scenario())


def test_the_controller_compacts_to_its_retention(database_url: str) -> None:
    clear_agents(database_url)
    with ServedController(database_url, fast_settings(change_retention=2)) as served:

        async def scenario() -> None:
            async with served.http() as http:
                await put(http, served, "alpha")
                agent = await TestAgent.connect(served.ws_url, served.tokens["agent"])
                await agent.next()  # the hub runs now
                for weight in (80, 70, 60, 50):
                    head = await put(http, served, "alpha", weight=weight)  # up to 5
                store = PolicyService(served.db)

                async def compacted() -> bool:
                    changes = await asyncio.to_thread(store.changes_since, 0)
                    return [c.revision for c in changes] == [head - 1, head]

                await eventually(compacted, within=5)
                await agent.close()
                late = await TestAgent.connect(served.ws_url, served.tokens["agent"], revision=1)
                assert (await late.next()).type == "snapshot"
                await late.close()

        asyncio.run(scenario())


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("role", "status"), [(None, 401), ("unknown", 401), ("viewer", 403), ("editor", 403)]
)
def test_the_stream_refuses_a_token_that_is_not_an_agents(
    served: ServedController, role: str | None, status: int
) -> None:
    async def scenario() -> None:
        token = "dnsm_not-a-real-token" if role == "unknown" else served.tokens.get(role or "", "")
        headers = {"Authorization": f"Bearer {token}"} if role else {}
        from websockets.asyncio.client import connect

        with pytest.raises(InvalidStatus) as refused:
            async with connect(served.ws_url, additional_headers=headers, proxy=None):
                pass
        response = refused.value.response
        assert response.status_code == status
        assert b'"error"' in response.body

    asyncio.run(scenario())


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("first", "then", "code"),
    [
        ("{not json", None, "bad_message"),
        (b"\x00\xff binary", None, "bad_message"),
        ('{"v": 1, "type": "ack", "revision": 1}', None, "expected_hello"),
        ('{"v": 2, "type": "hello", "agent_id": "x", "node_name": "n"}', None, "bad_message"),
        (None, '{"v": 1, "type": "ack", "revision": -4}', "bad_message"),
        (
            None,
            '{"v": 1, "type": "hello", "agent_id": "x", "node_name": "n"}',
            "unexpected_message",
        ),
        (None, '{"v": 1, "type": "snapshot", "revision": 1, "policies": []}', "unexpected_message"),
    ],
)
def test_a_malformed_message_gets_an_error_and_a_close_and_the_hub_goes_on(
    served: ServedController, first: str | bytes | None, then: str | None, code: str
) -> None:
    async def scenario() -> None:
        agent = await TestAgent.connect(served.ws_url, served.tokens["agent"], hello=first is None)
        if first is not None:
            await agent.ws.send(first)
        else:
            assert (await agent.next()).type == "snapshot"
            assert then is not None
            await agent.ws.send(then)
        error = await agent.next()
        assert isinstance(error, protocol.ErrorMessage) and error.code == code
        with pytest.raises(ConnectionClosed) as closed:
            await agent.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
        # The hub still serves everyone else.
        other = await TestAgent.connect(served.ws_url, served.tokens["agent"], agent_id="other")
        assert (await other.next()).type == "snapshot"
        await other.close()

    asyncio.run(scenario())


def test_no_hello_in_time_is_closed_4408(sqlite_url: str) -> None:
    with ServedController(sqlite_url, fast_settings(hello_timeout_s=0.3)) as served:

        async def scenario() -> None:
            agent = await TestAgent.connect(served.ws_url, served.tokens["agent"], hello=False)
            error = await agent.next(within=3)
            assert isinstance(error, protocol.ErrorMessage) and error.code == "hello_timeout"
            with pytest.raises(ConnectionClosed) as closed:
                await agent.next()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408

        asyncio.run(scenario())


@SQLITE_ONLY
def test_the_same_agent_connecting_again_replaces_the_old_connection(
    served: ServedController,
) -> None:
    async def scenario() -> None:
        old = await TestAgent.connect(served.ws_url, served.tokens["agent"], agent_id="twin")
        assert (await old.next()).type == "snapshot"
        new = await TestAgent.connect(served.ws_url, served.tokens["agent"], agent_id="twin")
        assert (await new.next()).type == "snapshot"
        with pytest.raises(ConnectionClosed) as closed:
            await old.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
        async with served.http() as http:

            async def one_connected() -> bool:
                row = (await agents_by_id(http, served.auth("viewer")))["twin"]
                return bool(row["connected"])

            await eventually(one_connected)
            await asyncio.sleep(0.1)  # the old connection's goodbye must not win
            assert await one_connected()
        await new.close()

    asyncio.run(scenario())


def test_a_dead_peer_is_dropped_within_two_ping_intervals(database_url: str) -> None:
    interval = 0.3
    clear_agents(database_url)
    with ServedController(database_url, fast_settings(ping_interval_s=interval)) as served:

        async def scenario() -> None:
            agent = await TestAgent.connect(
                served.ws_url, served.tokens["agent"], agent_id="silent", ping_interval=None
            )
            assert (await agent.next()).type == "snapshot"
            await agent.ack(0)
            async with served.http() as http:

                async def connected() -> bool:
                    row = (await agents_by_id(http, served.auth("viewer"))).get("silent")
                    return row is not None and bool(row["connected"])

                await eventually(connected)
                # Stop reading: pings go unanswered, as from a host that vanished.
                agent.ws.transport.pause_reading()
                stopped = time.monotonic()

                async def gone() -> bool:
                    return not await connected()

                await eventually(gone, within=5)
                took = time.monotonic() - stopped
                print(f"dead peer shown disconnected after {took:.2f} s (ping {interval} s)")
                assert took < 2 * interval + 0.6  # two intervals, plus the batched write
                assert served.hub.sessions == {}
            agent.ws.transport.abort()

        asyncio.run(scenario())


@pytest.mark.parametrize("window", [1024, 0], ids=["from-memory", "from-the-log"])
def test_one_encoding_per_revision_serves_every_agent(sqlite_url: str, window: int) -> None:
    """Built once per starting revision, from the window or (window 0) one log read."""
    with ServedController(sqlite_url, fast_settings(window=window)) as served:
        asyncio.run(_twenty_agents_one_change(served))


async def _twenty_agents_one_change(served: ServedController) -> None:
    async with served.http() as http:
        head = await put(http, served, "alpha")
        agents = [
            await TestAgent.connect(
                served.ws_url, served.tokens["agent"], agent_id=f"a{i}", revision=head
            )
            for i in range(20)
        ]

        async def all_attached() -> bool:
            return len(served.hub.sessions) == 20

        await eventually(all_attached)
        before = served.hub.feed.encoded
        revision = await put(http, served, "alpha", weight=33)
        updates = await asyncio.gather(*(a.next() for a in agents))
        assert {(u.type, getattr(u, "revision", None)) for u in updates} == {("delta", revision)}
        assert served.hub.feed.encoded - before == 1
        await asyncio.gather(*(a.close() for a in agents))


def test_a_database_restored_to_an_older_revision_resyncs_every_agent(
    served: ServedController,
) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            await put(http, served, "alpha")
            await put(http, served, "beta")
            agent = await TestAgent.connect(served.ws_url, served.tokens["agent"])
            snapshot = await agent.next()
            assert isinstance(snapshot, protocol.SnapshotMessage) and snapshot.revision == 2
            await agent.ack(2)

            def restore_to_revision_1() -> None:  # as a restore of an older backup would
                with served.engine.begin() as connection:
                    connection.execute(text("DELETE FROM changes WHERE revision > 1"))
                    connection.execute(text("DELETE FROM policies WHERE name = 'beta'"))
                    connection.execute(text("UPDATE mesh_state SET revision = 1"))

            await asyncio.to_thread(restore_to_revision_1)
            # Found by the catch-up poll (nothing announced it): a fresh snapshot, not the
            # one cached at revision 2.
            resync = await agent.next(within=3)
            assert isinstance(resync, protocol.SnapshotMessage) and resync.revision == 1
            assert [p["metadata"]["name"] for p in resync.policies] == ["alpha"]
            revision = await put(http, served, "gamma")
            delta = await agent.next()
            assert isinstance(delta, protocol.Delta) and (delta.since, delta.revision) == (1, 2)
            assert revision == 2
            await agent.close()

    asyncio.run(scenario())
