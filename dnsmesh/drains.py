"""Drains: an operator's override that takes an endpoint out of service (gdnsd's admin_state).

Pure. A drain names an address and optionally a policy (None: every policy that has the
address). The controller stores them and sends the whole set with each revision; the agent
answers none of a policy's drained endpoints, whatever their health says.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Drained:
    address: str
    policy: str | None = None  # None: drained in every policy


class DrainSet:
    """Drains indexed for the question the agent asks per policy: which of its addresses."""

    __slots__ = ("_by_policy", "_everywhere", "entries")

    def __init__(self, drains: Iterable[Drained] = ()) -> None:
        self.entries: frozenset[Drained] = frozenset(drains)
        self._everywhere = frozenset(d.address for d in self.entries if d.policy is None)
        by_policy: dict[str, set[str]] = {}
        for drain in self.entries:
            if drain.policy is not None:
                by_policy.setdefault(drain.policy, set()).add(drain.address)
        self._by_policy = {name: frozenset(a) | self._everywhere for name, a in by_policy.items()}

    def of(self, policy: str) -> frozenset[str]:
        """The addresses drained in ``policy`` (its own drains and those of every policy)."""
        return self._by_policy.get(policy, self._everywhere)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DrainSet) and other.entries == self.entries

    def __hash__(self) -> int:
        return hash(self.entries)


NO_DRAINS = DrainSet()
