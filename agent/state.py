"""The one mutable cell the query path reads: the current policy snapshot."""

from __future__ import annotations

from dnsmesh.snapshot import Snapshot


class PolicyState:
    """Holds the compiled snapshot; a reload replaces it in one assignment (atomic for readers)."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
