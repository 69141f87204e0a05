"""Policy reads served from the push hub's copy while the database is unreachable.

The hub keeps the policies it serves agents (controller.feed: the last snapshot brought
forward through its window of changes). When a read of ``GET /v1/policies[/{name}]`` finds
the database away, that copy answers instead, marked stale so nobody takes it for the
database's word: ``Warning: 110 - "stale: database unavailable"`` (RFC 9111 §5.5.1's
"Response is Stale", kept for its meaning), ``X-Dnsmesh-Stale: true`` and
``X-Dnsmesh-Stale-Revision: R``. Without a copy (no agent has started the hub yet) the read
is still 503. Writes are never served this way.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request

from controller.errors import DatabaseUnavailable
from controller.hub import Hub
from dnsmesh.protocol import Document

STALE_WARNING = '110 - "stale: database unavailable"'


def stale_headers(revision: int) -> dict[str, str]:
    return {
        "Warning": STALE_WARNING,
        "X-Dnsmesh-Stale": "true",
        "X-Dnsmesh-Stale-Revision": str(revision),
    }


def known_policies(request: Request, outage: DatabaseUnavailable) -> tuple[int, list[Document]]:
    """The hub's copy, or the outage re-raised (a 503) when there is none."""
    hub: Hub = request.app.state.hub
    known = hub.known_policies()
    if known is None:
        raise outage
    return known


def with_labels(documents: list[Document], wanted: Mapping[str, str]) -> list[Document]:
    """The same filter as the database's: every wanted pair among the policy's labels."""

    def matches(document: Document) -> bool:
        labels = document.get("metadata", {}).get("labels", {})
        return all(labels.get(key) == value for key, value in wanted.items())

    return [document for document in documents if matches(document)]
