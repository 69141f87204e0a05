"""The feed's copy of the policies (what stale reads serve) follows the database exactly."""

from __future__ import annotations

import asyncio

from controller.db.session import Database
from controller.feed import Feed
from controller.services.policies import PolicyService
from tests.integration.controller_support import policy_doc


def listed(store: PolicyService) -> tuple[int, list[dict[str, object]]]:
    listing = store.list_policies()
    return listing.revision, listing.items


def test_the_copy_follows_changes_and_is_rebuilt_after_a_gap(controller_db: Database) -> None:
    store = PolicyService(controller_db)
    # A window of 1: the copy must not depend on what the window keeps.
    feed = Feed(store, window=1, retention=0)

    async def scenario() -> None:
        store.put_policy("a", policy_doc("a"), actor="t")
        await feed.start()
        assert feed.known_policies() is None  # no snapshot yet: nothing to serve
        await feed.snapshot()
        assert feed.known_policies() == listed(store)
        store.put_policy("a", policy_doc("a", weight=40), actor="t")
        store.put_policy("b", policy_doc("b", domain="b.mesh.internal"), actor="t")
        store.delete_policy("a", actor="t")
        await feed.catch_up()
        assert feed.known_policies() == listed(store) == (4, [store.get_policy("b").document])
        # The log compacted past the copy before this replica read it: the copy is dropped
        # (never served with a hole in it) until a snapshot rebuilds it.
        store.put_policy("c", policy_doc("c", domain="c.mesh.internal"), actor="t")
        store.compact_changes(5)
        await feed.catch_up()
        assert feed.known_policies() is None
        await feed.snapshot()
        assert feed.known_policies() == listed(store)

    asyncio.run(scenario())
