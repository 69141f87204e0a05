"""The store: revisions, the change log, and writers racing each other on real databases."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from controller.db.engine import build_engine
from controller.db.models import AuditRow, ChangeRow
from controller.db.session import Database
from controller.errors import AlreadyExists, DomainConflict, NotFound, PreconditionFailed
from controller.store import IfMatch, PolicyStore
from dnsmesh.errors import PolicyError
from tests.integration.controller_support import policy_doc


def test_every_change_bumps_one_revision_and_is_logged(controller_db: Database) -> None:
    store = PolicyStore(controller_db)
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
    store = PolicyStore(controller_db)
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
        store = PolicyStore(Database(engine))

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
        store = PolicyStore(Database(engine))
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
        store = PolicyStore(Database(engine))
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
