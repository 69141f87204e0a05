"""Two controller replicas on one PostgreSQL: a down-set change commits once, and reaches the
agents of both replicas with the same revision."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.push_settings import PushSettings
from dnsmesh import protocol
from tests.integration.controller_support import policy_doc, temporary_postgres_database
from tests.integration.push_support import ServedController, TestAgent, fast_settings
from tests.integration.test_quorum_push import quick_health, report
from tests.support.polling import wait_until

A = "127.0.10.1"


@pytest.fixture
def shared_postgres() -> Iterator[str]:
    with temporary_postgres_database("quorum") as url:
        engine = build_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        yield url


def down_changes(url: str) -> list[tuple[int, str]]:
    engine = build_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT revision, document FROM changes WHERE operation = 'down'")
            )
            return [(int(r), str(sorted(d["down"]))) for r, d in rows]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_two_replicas_commit_one_revision_per_down_set_change(shared_postgres: str) -> None:
    url = shared_postgres

    def settings(replica: str) -> PushSettings:
        return fast_settings(replica_id=replica, health=quick_health())

    with (
        ServedController(url, settings("replica-a")) as a,
        ServedController(url, settings("replica-b")) as b,
    ):

        async def scenario() -> None:
            async with a.http() as http:
                put = await http.put(
                    "/v1/policies/checkout", json=policy_doc("checkout"), headers=a.auth("editor")
                )
                head = put.json()["metadata"]["revision"]
            # Two probing agents on each replica: both replicas hear every verdict at once.
            agents = [
                await TestAgent.connect(ctl.ws_url, ctl.tokens["agent"], agent_id=f"{name}-{i}")
                for ctl, name in ((a, "on-a"), (b, "on-b"))
                for i in range(2)
            ]
            for agent in agents:
                first = await agent.next()
                assert isinstance(first, protocol.SnapshotMessage) and first.revision == head
                await agent.ack(head)
            expected = head
            for round_ in range(3):
                state = "ejected" if round_ % 2 == 0 else "healthy"
                loss = 1.0 if state == "ejected" else 0.0
                await asyncio.gather(*(g.send(report((A, state, loss))) for g in agents))
                expected += 1
                for agent in agents:
                    delta = await agent.next()
                    assert isinstance(delta, protocol.Delta), delta
                    assert delta.revision == expected
                    assert delta.down == ([A] if state == "ejected" else [])
                    await agent.ack(delta.revision)
            # Let both replicas evaluate a few more rounds: nothing more may commit.
            await agents[0].silent_for(0.5)
            for agent in agents:
                await agent.close()

        asyncio.run(scenario())
        assert a.hub.health.changes + b.hub.health.changes == 3
    assert down_changes(url) == [(2, f"['{A}']"), (3, "[]"), (4, f"['{A}']")]


@pytest.mark.postgres
def test_a_down_set_change_reaches_another_replica_by_notify(shared_postgres: str) -> None:
    """Replica B reads the revision only every 30 s: within seconds, only NOTIFY tells it."""
    url = shared_postgres
    # B neither polls the revision nor evaluates (no reports reach it; its timer is 30 s).
    idle = dataclasses.replace(quick_health(), evaluate_s=30.0)
    quiet = fast_settings(replica_id="replica-b", catch_up_s=30.0, health=idle)
    with (
        ServedController(url, fast_settings(replica_id="replica-a", health=quick_health())) as a,
        ServedController(url, quiet) as b,
    ):

        async def scenario() -> None:
            observer = await TestAgent.connect(b.ws_url, b.tokens["agent"], agent_id="on-b")
            first = await observer.next()
            assert isinstance(first, protocol.SnapshotMessage) and first.down == []
            await observer.ack(first.revision)
            probes = [
                await TestAgent.connect(a.ws_url, a.tokens["agent"], agent_id=f"on-a-{i}")
                for i in range(2)
            ]
            for probe in probes:
                await probe.next()
                await probe.send(report((A, "ejected", 1.0)))
            delta = await observer.next(within=5.0)
            assert isinstance(delta, protocol.Delta)
            assert (delta.since, delta.revision, delta.down) == (first.revision, 1, [A])
            for agent in (observer, *probes):
                await agent.close()

        asyncio.run(scenario())
        # A counts its change after the commit's thread returns, which can be after B has
        # already pushed the NOTIFYed delta (seen on a loaded machine).
        wait_until(lambda: a.hub.health.changes == 1, timeout=5.0)
        assert (a.hub.health.changes, b.hub.health.changes) == (1, 0)
