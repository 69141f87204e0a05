"""Answer a query from the current policy snapshot: the agent's reason to exist."""

from __future__ import annotations

import random

from agent.served import ServedSnapshot
from dnsmesh.dnswire import Query
from dnsmesh.snapshot import CompiledPolicy


class PolicyAnswers:
    """One dict lookup in the snapshot; a hit is answered whole by the compiled policy.

    The snapshot is read through ``served`` on every query, so a reload (one attribute
    assignment) is seen by the next query and no query ever sees half of one.
    """

    __slots__ = ("_rng", "_served")

    def __init__(self, served: ServedSnapshot, rng: random.Random) -> None:
        self._served = served
        self._rng = rng

    def answer(self, query: Query, client: str) -> bytes | None:
        policy = self._served.snapshot.lookup(query.qname)
        if policy is None:
            return None
        return policy.respond(query, client, self._rng)


class DecidingPolicyAnswers(PolicyAnswers):
    """PolicyAnswers that keeps the compiled policy behind its last answer, for the query
    log: the entry reads ``decided`` right after this handler answered, in the same call, so
    it is the policy (and so the revision) that made that very response."""

    __slots__ = ("decided",)

    def __init__(self, served: ServedSnapshot, rng: random.Random) -> None:
        super().__init__(served, rng)
        self.decided: CompiledPolicy | None = None

    def answer(self, query: Query, client: str) -> bytes | None:
        policy = self._served.snapshot.lookup(query.qname)
        self.decided = policy
        if policy is None:
            return None
        return policy.respond(query, client, self._rng)
