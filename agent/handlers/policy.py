"""Answer a query from the current policy snapshot: the agent's reason to exist."""

from __future__ import annotations

import random

from agent.state import PolicyState
from dnsmesh.dnswire import Query


class PolicyAnswers:
    """One dict lookup in the snapshot; a hit is answered whole by the compiled policy.

    The snapshot is read through ``state`` on every query, so a reload (one attribute
    assignment) is seen by the next query and no query ever sees half of one.
    """

    __slots__ = ("_rng", "_state")

    def __init__(self, state: PolicyState, rng: random.Random) -> None:
        self._state = state
        self._rng = rng

    def answer(self, query: Query, client: str) -> bytes | None:
        policy = self._state.snapshot.lookup(query.qname)
        if policy is None:
            return None
        return policy.respond(query, client, self._rng)
