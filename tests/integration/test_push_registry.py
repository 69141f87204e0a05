"""The agents table on both backends: batched writes, their order, and staleness."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from controller.agent_events import Acked, AgentConnected, Gone, Nacked, Seen
from controller.db.engine import build_engine
from controller.db.session import Database
from controller.services.agent_state import AgentStateService
from tests.integration.push_support import clear_agents


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(database_url: str, clock: Clock) -> Iterator[AgentStateService]:
    clear_agents(database_url)
    engine = build_engine(database_url)
    try:
        yield AgentStateService(Database(engine, clock=clock), stale_after=timedelta(seconds=60))
    finally:
        engine.dispose()


def hello(agent_id: str, session: str = "s1", revision: int = 0, **kw: Any) -> AgentConnected:
    values: dict[str, Any] = {
        "agent_id": agent_id,
        "node_name": f"node-{agent_id}",
        "labels": {"zone": "a"},
        "software": "test/1",
        "revision": revision,
        "transport": "websocket",
        "replica": "r1",
        "session": session,
    }
    values.update(kw)
    return AgentConnected(**values)


def by_id(registry: AgentStateService) -> dict[str, Any]:
    return {a.agent_id: a for a in registry.list()}


def test_a_batch_applies_in_order(registry: AgentStateService) -> None:
    registry.apply(
        [
            hello("a"),
            hello("b", revision=3),
            Acked("a", 1),
            Acked("a", 2),  # the last ACK of a batch wins
            Nacked("b", 4, "no such group v9"),
            Gone("b", "s1"),
            hello("b", session="s2", revision=3),  # reconnected within the same batch
        ]
    )
    agents = by_id(registry)
    assert agents["a"].applied_revision == 2 and agents["a"].connected
    assert agents["b"].applied_revision == 3 and agents["b"].connected
    assert agents["b"].last_nack is not None
    assert (agents["b"].last_nack.revision, agents["b"].last_nack.reason) == (4, "no such group v9")
    assert agents["a"].labels == {"zone": "a"} and agents["a"].software == "test/1"


def test_an_old_connections_goodbye_does_not_disconnect_the_new_one(
    registry: AgentStateService,
) -> None:
    registry.apply([hello("a", session="old")])
    registry.apply([hello("a", session="new", replica="r2")])
    registry.apply([Gone("a", "old")])
    agent = by_id(registry)["a"]
    assert agent.connected and agent.replica == "r2"
    registry.apply([Gone("a", "new")])
    agent = by_id(registry)["a"]
    assert not agent.connected and agent.disconnected_at is not None


def test_a_thousand_acks_are_one_statement(registry: AgentStateService) -> None:
    registry.apply([hello(f"agent-{i:04}") for i in range(1000)])
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    engine = registry.db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        registry.apply([Acked(f"agent-{i:04}", 7) for i in range(1000)])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1, statements
    state = registry.convergence(7, limit=5)
    assert (state.total, state.converged, state.pending) == (1000, 1000, [])


def test_convergence_counts_only_live_agents_and_lists_a_bounded_few(
    registry: AgentStateService,
) -> None:
    registry.apply([hello(f"a{i}", revision=i) for i in range(10)])
    registry.apply([Gone("a9", "s1")])
    state = registry.convergence(5, limit=3)
    assert (state.total, state.converged) == (9, 4)  # a5..a8; a9 is gone
    assert [a.agent_id for a in state.pending] == ["a0", "a1", "a2"]


def test_a_replica_that_stops_refreshing_its_agents_loses_them(
    registry: AgentStateService, clock: Clock
) -> None:
    registry.apply([hello("a", replica="r1"), hello("b", replica="r2")])
    registry.apply([hello("p", transport="poll", session="poll")])
    clock.now += timedelta(seconds=45)
    registry.heartbeat("r1")  # r2 died without a word
    clock.now += timedelta(seconds=30)
    agents = by_id(registry)
    assert agents["a"].connected
    assert not agents["b"].connected  # not refreshed for 75 s > 60 s
    assert not agents["p"].connected  # a polling agent that stopped polling
    registry.apply([Seen("p")])
    assert by_id(registry)["p"].connected
    assert registry.convergence(0).total == 2
    registry.release("r1")
    assert not by_id(registry)["a"].connected
