"""Answer a query from the current policy snapshot: the agent's reason to exist."""

from __future__ import annotations

import random

from agent.served import ServedSnapshot
from dnsmesh.dnswire import Query, add_option_to_own
from dnsmesh.ecs import ClientSubnet, answer_option
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

    def answer_ecs(self, query: Query, subnet: ClientSubnet) -> bytes | None:
        """The answer for the client network a trusted forwarder named (agent/entry.py):
        the policy answers ``subnet.key`` as the client (its slice, sticky pick and cohort
        follow the network), and the answer carries the ECS option back (RFC 7871 §7.2.1)
        with the scope a cache downstream must keep it to: the whole source prefix when
        the answer depends on who asks, else 0 (any of the forwarder's clients may have it).
        """
        policy = self._served.snapshot.lookup(query.qname)
        if policy is None:
            return None
        return _with_subnet(policy, policy.respond(query, subnet.key, self._rng), subnet)


def _with_subnet(policy: CompiledPolicy, wire: bytes, subnet: ClientSubnet) -> bytes:
    scope = subnet.source if policy.by_client else 0
    return add_option_to_own(wire, answer_option(subnet, scope))


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

    def answer_ecs(self, query: Query, subnet: ClientSubnet) -> bytes | None:
        policy = self._served.snapshot.lookup(query.qname)
        self.decided = policy
        if policy is None:
            return None
        return _with_subnet(policy, policy.respond(query, subnet.key, self._rng), subnet)
