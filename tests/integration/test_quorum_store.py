"""Endpoint health in the database (controller.services.endpoint_health) on PostgreSQL and
SQLite: reports, history retention, and down-set revisions in the change log, the audit and
the feed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from controller.db.engine import build_engine
from controller.db.migrate import downgrade, upgrade
from controller.db.models import ChangeRow
from controller.db.session import Database
from controller.feed import Feed
from controller.services.endpoint_health import EndpointHealthService, Received
from controller.services.policies import PolicyService
from dnsmesh import protocol
from dnsmesh.protocol import EndpointReport
from dnsmesh.quorum import QuorumRule
from tests.integration.controller_support import (
    policy_doc,
    run_cli,
    temporary_postgres_database,
)

A = "127.0.10.1"
B = "127.0.10.2"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(controller_db: Database, clock: Clock) -> Iterator[Database]:
    yield Database(controller_db.engine, clock)


def health(db: Database, **rule: float) -> EndpointHealthService:
    return EndpointHealthService(db, QuorumRule(**rule), history_s=60)  # type: ignore[arg-type]


def report(address: str, state: str = "healthy", loss: float = 0.0, **kw: object) -> EndpointReport:
    return EndpointReport.model_validate(
        {"address": address, "state": state, "loss": loss, "latency_ms": 3.5, **kw}
    )


def received(clock: Clock, agent: str, *endpoints: EndpointReport) -> Received:
    return Received(agent, clock(), endpoints)


def test_reports_keep_the_latest_per_agent_and_endpoint_and_a_history(
    db: Database, clock: Clock
) -> None:
    store = health(db)
    store.write_reports([received(clock, "a1", report(A), report(B, loss=0.1))])
    clock.advance(5)
    store.write_reports(
        [
            received(clock, "a1", report(A, "ejected", 1.0, consecutive_failures=5)),
            received(clock, "a2", report("::ffff:7f00:a01")),  # canonical text of an IPv6
        ]
    )
    latest = {(r.agent_id, r.address): r for r in store.latest()}
    assert sorted(latest) == [("a1", A), ("a1", B), ("a2", "::ffff:7f00:a01")]
    assert latest[("a1", A)].state == "ejected"
    assert latest[("a1", A)].consecutive_failures == 5
    assert latest[("a1", B)].loss == pytest.approx(0.1)
    assert [r.state for r in store.history(A)] == ["healthy", "ejected"]
    assert len(store.history()) == 4


def test_history_older_than_the_retention_is_pruned(db: Database, clock: Clock) -> None:
    store = health(db)
    store.write_reports([received(clock, "a1", report(A))])
    clock.advance(45)
    store.write_reports([received(clock, "a1", report(A, loss=0.2))])
    clock.advance(30)  # the first report is now 75 s old, the second 30 s: retention 60 s
    assert store.prune_history() == 1
    assert [r.loss for r in store.history()] == [pytest.approx(0.2)]
    assert len(store.latest()) == 1


def test_a_quorum_commits_one_down_revision_with_change_row_and_audit(
    db: Database, clock: Clock
) -> None:
    policies = PolicyService(db)
    policies.create_policy(policy_doc("checkout"), actor="test")  # revision 1
    store = health(db)
    store.write_reports([received(clock, "a1", report(A, "ejected", 1.0))])
    assert store.evaluate() is None  # one agent's matter
    store.write_reports([received(clock, "a2", report(A, "ejected", 1.0))])
    change = store.evaluate()
    assert change is not None
    assert (change.revision, change.down, change.marked) == (2, frozenset({A}), frozenset({A}))
    assert store.evaluate() is None  # the same reports again: no second revision
    assert policies.current_revision() == 2
    assert store.down() == [A]

    down_changes = [c for c in policies.changes_since(0) if c.is_down]
    assert [(c.revision, c.policy, c.operation, c.down) for c in down_changes] == [
        (2, "", "down", [A])
    ]
    entry = policies.audit(limit=1)[0]
    assert (entry.actor, entry.operation, entry.revision) == ("quorum", "endpoints.down", 2)
    assert entry.before == {"down": []} and entry.after is not None
    assert entry.after["marked"] == [A]

    listing = policies.list_policies()
    assert (listing.revision, listing.down) == (2, [A])


def test_stale_reports_expire_and_a_healthy_majority_brings_it_back(
    db: Database, clock: Clock
) -> None:
    store = health(db, stale_s=10.0)
    bad = report(A, "ejected", 1.0)
    store.write_reports([received(clock, "a1", bad), received(clock, "a2", bad)])
    assert store.evaluate() is not None and store.down() == [A]
    clock.advance(9)
    assert store.evaluate() is None  # still fresh
    clock.advance(2)
    gone = store.evaluate()  # every voter went stale: no evidence keeps it down
    assert gone is not None and gone.cleared == {A} and store.down() == []

    store.write_reports([received(clock, "a1", bad), received(clock, "a2", bad)])
    assert store.evaluate() is not None
    # One recovers: a tie keeps it down (hysteresis); two of three healthy bring it up.
    store.write_reports([received(clock, "a1", report(A))])
    assert store.evaluate() is None
    store.write_reports([received(clock, "a3", report(A))])
    up = store.evaluate()
    assert up is not None and up.down == frozenset() and store.down() == []
    revisions = [c.revision for c in PolicyService(db).changes_since(0) if c.is_down]
    assert revisions == [1, 2, 3, 4]


def test_concurrent_evaluations_commit_one_revision(db: Database, clock: Clock) -> None:
    """Replicas evaluating the same reports at the same moment: one commit, the rest none."""
    store = health(db)
    bad = report(A, "ejected", 1.0)
    store.write_reports([received(clock, "a1", bad), received(clock, "a2", bad)])
    results: list[object] = []
    start = threading.Barrier(4)

    def evaluate() -> None:
        start.wait()
        results.append(EndpointHealthService(db, store.rule).evaluate())

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len([r for r in results if r is not None]) == 1
    count = db.read(lambda s: s.scalar(select(func.count()).select_from(ChangeRow)))
    assert count == 1 and PolicyService(db).current_revision() == 1


def test_the_feed_carries_the_down_set_in_snapshots_and_deltas_and_after_compaction(
    db: Database, clock: Clock
) -> None:
    policies = PolicyService(db)
    store = health(db)

    async def scenario() -> None:
        feed = Feed(policies, window=16, retention=0)
        await feed.start()
        policies.create_policy(policy_doc("checkout"), actor="test")  # 1
        bad = report(A, "ejected", 1.0)
        store.write_reports([received(clock, "a1", bad), received(clock, "a2", bad)])
        assert store.evaluate() is not None  # 2
        policies.create_policy(policy_doc("search"), actor="test")  # 3
        await feed.catch_up()

        whole = await feed.update_for(1)
        assert whole is not None
        delta = protocol.decode_message(whole.text)
        assert isinstance(delta, protocol.Delta)
        assert (delta.since, delta.revision, delta.down) == (1, 3, [A])
        assert [c.name for c in delta.changes] == ["search"]

        after = await feed.update_for(2)
        assert after is not None
        later = protocol.decode_message(after.text)
        assert isinstance(later, protocol.Delta) and later.down is None  # unchanged since 2

        snapshot = protocol.decode_message((await feed.update_for(0, snapshot=True)).text)  # type: ignore[union-attr]
        assert isinstance(snapshot, protocol.SnapshotMessage)
        assert (snapshot.revision, snapshot.down) == (3, [A])

        # An agent at 1 applies the delta; one at 0 the snapshot: the same state.
        at_one = protocol.apply_update(
            protocol.AppliedState.empty(), protocol.build_snapshot(1, [policy_doc("checkout")])
        )
        assert protocol.apply_update(at_one, delta).down == {A}

        # The log compacted past the down change: the agent behind it gets a snapshot.
        assert policies.compact_changes(2) == 2
        behind = Feed(policies, window=16, retention=0)
        await behind.start()
        update = await behind.update_for(1)
        assert update is not None
        message = protocol.decode_message(update.text)
        assert isinstance(message, protocol.SnapshotMessage) and message.down == [A]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--quorum-min-agents", "0"], "min_agents must be at least 1"),
        (["--quorum-fail-loss", "0.1"], "recover_loss <= fail_loss"),
        (["--report-stale-after", "0"], "stale_s must be positive"),
        (["--report-retention", "-1"], "--report-retention must be >= 0"),
    ],
)
def test_the_controller_refuses_bad_quorum_flags(
    flags: list[str], says: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    done = run_cli("controller", "--database", url, "--listen", "127.0.0.1:0", *flags, cwd=tmp_path)
    assert done.returncode != 0 and says in done.stderr, done.stderr
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migration_0003_goes_down_and_up_again(backend: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'm.db'}"
        else:
            url = stack.enter_context(temporary_postgres_database("quorum_migration"))
        engine = build_engine(url)
        stack.callback(engine.dispose)
        upgrade(engine)
        clock = Clock()
        db = Database(engine, clock)  # the reports' clock: a real one would find them stale
        store = EndpointHealthService(db, QuorumRule())
        bad = report(A, "ejected", 1.0)
        store.write_reports([received(clock, "a1", bad), received(clock, "a2", bad)])
        assert store.evaluate() is not None
        downgrade(engine, "0002")
        names = set(inspect(engine).get_table_names())
        assert not names & {"endpoint_health", "endpoint_reports", "endpoints_down"}
        assert PolicyService(db).changes_since(0) == []  # down rows mean nothing without 0003
        upgrade(engine)
        assert EndpointHealthService(db).down() == [] and EndpointHealthService(db).latest() == []
