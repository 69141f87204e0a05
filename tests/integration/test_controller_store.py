"""The store: revisions, the change log, and writers racing each other on real databases."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, func, select

from controller.agent_events import AgentConnected, Gone
from controller.db.engine import build_engine
from controller.db.models import AuditRow, ChangeRow
from controller.db.session import Database
from controller.errors import (
    AlreadyExists,
    DomainConflict,
    LocalPolicyClash,
    NotFound,
    PreconditionFailed,
)
from controller.notify import CHANNEL
from controller.services.agent_state import AgentStateService
from controller.services.policies import IfMatch, PolicyService
from dnsmesh.errors import PolicyError
from tests.integration.controller_support import policy_doc


def test_every_change_bumps_one_revision_and_is_logged(controller_db: Database) -> None:
    store = PolicyService(controller_db)
    assert store.current_revision() == 0
    assert store.changes_since(0) == []
    store.create_policy(policy_doc("a"), actor="t")
    store.put_policy("b", policy_doc("b"), actor="t")
    store.put_policy("a", policy_doc("a", weight=3), actor="t")
    store.create_slice("a", {"id": "x", "match": {"client_cidrs": ["10.1.0.0/16"]}}, actor="t")
    store.delete_policy("b", actor="t")
    assert store.current_revision() == 5
    changes = store.changes_since(0)
    assert [(c.revision, c.policy, c.operation) for c in changes] == [
        (1, "a", "create"),
        (2, "b", "create"),
        (3, "a", "update"),
        (4, "a", "update"),
        (5, "b", "delete"),
    ]
    assert changes[4].document is None
    assert changes[3].document == store.get_policy("a").document
    assert store.get_policy("a").revision == 4
    assert [c.revision for c in store.changes_since(3)] == [4, 5]
    assert [c.revision for c in store.changes_since(1, limit=2)] == [2, 3]
    assert store.changes_since(5) == []


def test_refused_writes_leave_no_trace(controller_db: Database) -> None:
    store = PolicyService(controller_db)
    store.create_policy(policy_doc("a"), actor="t")
    bad = policy_doc("b")
    bad["spec"]["endpoints"] = []
    attempts: list[Callable[[], Any]] = [
        lambda: store.create_policy(policy_doc("a"), actor="t"),
        lambda: store.create_policy(bad, actor="t"),
        lambda: store.put_policy(
            "a", policy_doc("a", weight=1), actor="t", if_match=IfMatch(frozenset({7}))
        ),
        lambda: store.delete_policy("zzz", actor="t"),
        lambda: store.put_policy("c", policy_doc("c", domain="a.mesh.internal"), actor="t"),
    ]
    for attempt in attempts:
        with pytest.raises(
            (AlreadyExists, DomainConflict, PolicyError, PreconditionFailed, NotFound)
        ):
            attempt()

    def counts(session: Any) -> tuple[int, int]:
        return (
            session.scalar(select(func.count()).select_from(ChangeRow)),
            session.scalar(select(func.count()).select_from(AuditRow)),
        )

    assert store.current_revision() == 1
    assert controller_db.read(counts) == (1, 1)


def _race(workers: int, work: Callable[[int], Any]) -> list[Any]:
    """Runs ``work(i)`` on ``workers`` threads released together; returns results/exceptions."""
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers

    def run(index: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[index] = work(index)
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_concurrent_writers_never_share_a_revision(database_url: str) -> None:
    writers, each = 8, 12
    engine = build_engine(database_url, pool_size=writers)
    try:
        store = PolicyService(Database(engine))

        def write(worker: int) -> list[int]:
            return [
                store.put_policy(
                    f"p{worker}", policy_doc(f"p{worker}", weight=n + 1), actor=f"w{worker}"
                ).policy.revision
                for n in range(each)
            ]

        results = _race(writers, write)
        assert not [r for r in results if isinstance(r, Exception)], results
        revisions = sorted(r for worker in results for r in worker)
        assert revisions == list(range(1, writers * each + 1))
        assert [c.revision for c in store.changes_since(0)] == revisions
        assert store.current_revision() == writers * each
        for worker, got in enumerate(results):
            assert got == sorted(got)
            assert store.get_policy(f"p{worker}").revision == got[-1]
    finally:
        engine.dispose()


def test_if_match_lets_only_one_of_many_concurrent_editors_win(database_url: str) -> None:
    editors, rounds = 6, 5
    engine = build_engine(database_url, pool_size=editors)
    try:
        store = PolicyService(Database(engine))
        current = store.put_policy("hot", policy_doc("hot"), actor="setup").policy.revision
        for _ in range(rounds):
            seen = current

            # Distinct documents each round: re-sending the current document is a no-op that
            # also (rightly) succeeds, which would look like a second winner.
            def edit(editor: int, seen: int = seen) -> int:
                return store.put_policy(
                    "hot",
                    policy_doc("hot", weight=100 + editor + 10 * seen),
                    actor=f"editor{editor}",
                    if_match=IfMatch(frozenset({seen})),
                ).policy.revision

            results = _race(editors, edit)
            winners = [r for r in results if isinstance(r, int)]
            losers = [r for r in results if isinstance(r, PreconditionFailed)]
            assert len(winners) == 1 and len(losers) == editors - 1, results
            current = winners[0]
            assert store.get_policy("hot").revision == current == seen + 1
    finally:
        engine.dispose()


def test_concurrent_creates_of_one_name_or_domain(database_url: str) -> None:
    engine = build_engine(database_url, pool_size=6)
    try:
        store = PolicyService(Database(engine))
        results = _race(6, lambda i: store.create_policy(policy_doc("same"), actor=f"w{i}"))
        assert sum(not isinstance(r, Exception) for r in results) == 1
        assert all(isinstance(r, AlreadyExists) for r in results if isinstance(r, Exception))
        results = _race(
            6,
            lambda i: store.create_policy(
                policy_doc(f"n{i}", domain="one.mesh.internal"), actor="w"
            ),
        )
        assert sum(not isinstance(r, Exception) for r in results) == 1
        assert store.current_revision() == 2
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_notifies_listeners_at_commit(clean_postgres_url: str) -> None:
    libpq = clean_postgres_url.replace("postgresql+psycopg://", "postgresql://")
    engine = build_engine(clean_postgres_url)
    try:
        store = PolicyService(Database(engine))
        with psycopg.connect(libpq, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            store.put_policy("a", policy_doc("a"), actor="t")
            with pytest.raises(AlreadyExists):
                store.create_policy(policy_doc("a"), actor="t")
            store.put_policy("b", policy_doc("b"), actor="t")
            payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
            assert payloads == ["1", "2"]
            assert list(listener.notifies(timeout=0.2)) == []  # nothing from the refused write
    finally:
        engine.dispose()


def test_list_as_json_text_matches_the_decoded_list(controller_db: Database) -> None:
    store = PolicyService(controller_db)
    store.put_policy("a", policy_doc("a", labels={"team": "x"}), actor="t")
    store.put_policy("b", policy_doc("b", labels={"team": "y"}), actor="t")
    store.put_policy("c", policy_doc("c", labels={"team": "x", "tier": "z"}), actor="t")
    for labels in (None, {"team": "x"}, {"team": "x", "tier": "z"}, {"team": "none"}):
        decoded = store.list_policies(labels)
        revision, text = store.list_policies_json(labels)
        assert revision == decoded.revision == 3
        assert json.loads(text) == decoded.items


def test_a_list_and_its_revision_are_one_snapshot(database_url: str) -> None:
    engine = build_engine(database_url)
    other_engine = build_engine(database_url)
    try:
        store = PolicyService(Database(engine))
        other = PolicyService(Database(other_engine))
        store.put_policy("a", policy_doc("a"), actor="t")
        pending = ["b", "c"]
        sneaked: list[int] = []

        # Commit another change between a list's two statements (the revision, the items).
        @event.listens_for(engine, "after_cursor_execute")
        def sneak(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if pending and "FROM mesh_state" in statement:
                name = pending.pop(0)
                sneaked.append(other.put_policy(name, policy_doc(name), actor="t").policy.revision)

        listing = store.list_policies()
        assert sneaked == [2]
        assert (listing.revision, [p["metadata"]["name"] for p in listing.items]) == (1, ["a"])
        revision, text = store.list_policies_json()
        assert sneaked == [2, 3]
        assert (revision, [p["metadata"]["name"] for p in json.loads(text)]) == (2, ["a", "b"])
        event.remove(engine, "after_cursor_execute", sneak)
    finally:
        engine.dispose()
        other_engine.dispose()


def test_a_write_clashing_with_a_live_agents_local_policy_is_refused_unless_forced(
    controller_db: Database,
) -> None:
    store = PolicyService(controller_db)
    agents = AgentStateService(controller_db, stale_after=store.agent_stale_after)
    store.put_policy("payments", policy_doc("payments", domain="pay.example"), actor="t")
    local = [{"name": "mine", "domain": "pay.mesh", "source": "/etc/l.yaml (document 1)"}]
    hello = AgentConnected("a1", "node-1", {}, "dnsmesh/t", 1, "websocket", "r1", "s1", local=local)
    agents.apply([hello])
    head = store.current_revision()

    with pytest.raises(LocalPolicyClash) as by_domain:
        store.put_policy("pay", policy_doc("pay", domain="pay.mesh"), actor="t")
    assert "agent a1 (node node-1)" in str(by_domain.value)
    assert "local policy 'mine' in /etc/l.yaml (document 1)" in str(by_domain.value)
    assert by_domain.value.fields[0].path == "spec.domain"
    with pytest.raises(LocalPolicyClash) as by_name:
        store.create_policy(policy_doc("mine", domain="other.mesh"), actor="t")
    assert by_name.value.fields[0].path == "metadata.name"
    with pytest.raises(LocalPolicyClash):  # an existing policy moved onto the domain
        store.put_policy("payments", policy_doc("payments", domain="pay.mesh"), actor="t")
    assert store.current_revision() == head  # nothing written

    forced = store.put_policy("pay", policy_doc("pay", domain="pay.mesh"), actor="t", force=True)
    assert forced.created
    # Its name and domain stay: no new clash, no force needed.
    edited = store.put_policy("pay", policy_doc("pay", domain="pay.mesh", weight=50), actor="t")
    assert edited.changed

    agents.apply([Gone("a1", "s1")])  # a gone agent's files block nothing
    assert store.create_policy(policy_doc("mine", domain="other.mesh"), actor="t").name == "mine"
