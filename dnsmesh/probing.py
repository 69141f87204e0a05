"""Coordinated probing: which agents probe which endpoint address (a probe budget).

Pure: the controller hands in the policies, the connected agents (each with its zone and
the policies it does not serve) and the budget; nothing here reads a clock or a socket.

The rule (docs/design.md, "Coordinated probing"), per endpoint address that some policy
probes (``spec.health.probe``):

* **Budget.** ``N`` is the policies' ``spec.health.probes_per_endpoint`` (the largest among
  the policies that have the address; unset: the controller's ``--probes-per-endpoint``).
  ``0`` means every agent probes it: the address gets no assignment at all.
* **Eligible agents** are the connected ones that hand the address out: at least one of its
  policies with a probe is not shadowed by a local file on that agent.
* **Rendezvous hashing.** Every (address, agent id) pair has a score (a hash); an agent's
  rank for an address is its place by score. So an agent joining takes only the slots where
  it outranks an assigned agent, and an agent leaving frees only its own slots, which go
  to the next in rank: no other address moves.
* **Spread.** The zones (the value of the spread label; agents without it are one zone,
  ``""``) take turns: the zone of the best-ranked agent first, each zone giving its next
  best agent in its turn, until ``N`` are picked. With ``N`` at least the number of zones
  every zone probes every address; otherwise the best-scored zones do, which is again a
  stable choice per address.
* ``N`` at least the eligible agents: they all probe, which is what an address without an
  assignment means, so it gets none (a small mesh never sees an assignment revision).

An address without an assignment (budget 0, too few eligible agents, a policy newer than
the last assignment) is probed by every agent that hands it out, as without coordination.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import median

from dnsmesh.policy import Policy

DEFAULT_PROBES_PER_ENDPOINT = 3
DEFAULT_SPREAD_LABEL = "zone"
NO_ZONE = ""  # the zone of agents without the spread label


@dataclass(frozen=True, slots=True)
class ProbingAgent:
    """A connected agent as the assignment needs it."""

    agent_id: str
    zone: str = NO_ZONE
    shadowed: frozenset[str] = frozenset()  # controller policies it does not serve


@dataclass(frozen=True, slots=True)
class Assignment:
    """The probing agents of every coordinated address (sorted ids), and the latency each
    zone measured of it (milliseconds; only for addresses of latency-weighted policies)."""

    probers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    zone_latency_ms: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    spread_label: str = DEFAULT_SPREAD_LABEL  # the node label that names an agent's zone

    def probes(self, address: str, agent_id: str) -> bool:
        """Whether ``agent_id`` probes ``address``: it is assigned, or nobody is."""
        agents = self.probers.get(address)
        return agents is None or agent_id in agents

    def borrowed_latency_ms(self, address: str, zone: str) -> float | None:
        """What ``zone``'s probers measured of ``address`` (ms), else the median of the
        other zones' figures; None when no zone measured it."""
        zones = self.zone_latency_ms.get(address)
        if not zones:
            return None
        if zone in zones:
            return zones[zone]
        return median(zones.values())


NO_ASSIGNMENT = Assignment()


def budgets(policies: Iterable[Policy], default: int) -> dict[str, tuple[int, frozenset[str]]]:
    """address -> (its budget, the names of the probing policies that have it); budget 0
    (every agent probes) when any such policy asks for 0."""
    found: dict[str, tuple[int, set[str]]] = {}
    for policy in policies:
        health = policy.spec.health
        if health is None or health.probe is None:
            continue
        asked = default if health.probes_per_endpoint is None else health.probes_per_endpoint
        for endpoint in policy.spec.endpoints:
            address = str(endpoint.address)
            budget, names = found.get(address, (asked, set()))
            names.add(policy.name)
            budget = 0 if 0 in (budget, asked) else max(budget, asked)
            found[address] = (budget, names)
    return {a: (n, frozenset(names)) for a, (n, names) in found.items()}


def coordinated(policies: Iterable[Policy], default: int) -> bool:
    """Whether any address has a budget (else every agent probes all, and there is nothing
    to assign: the controller need not look at its agents at all)."""
    return any(budget > 0 for budget, _ in budgets(policies, default).values())


def score(address: str, agent_id: str) -> int:
    """The rendezvous score of a pair: the same on every replica and in every run."""
    digest = hashlib.blake2b(f"{address}\0{agent_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def pick(address: str, agents: Sequence[ProbingAgent], n: int) -> tuple[str, ...]:
    """``n`` of ``agents`` for ``address``: by rendezvous rank, zones taking turns."""
    ranked = sorted(agents, key=lambda a: (-score(address, a.agent_id), a.agent_id))
    by_zone: dict[str, list[str]] = {}
    for agent in ranked:  # dicts keep insertion order: zones by their best agent's rank
        by_zone.setdefault(agent.zone, []).append(agent.agent_id)
    picked: list[str] = []
    depth = 0
    while len(picked) < n and any(len(ids) > depth for ids in by_zone.values()):
        for ids in by_zone.values():
            if depth < len(ids) and len(picked) < n:
                picked.append(ids[depth])
        depth += 1
    return tuple(sorted(picked))


def assign(
    policies: Sequence[Policy], agents: Iterable[ProbingAgent], default: int, *, floor: int = 1
) -> dict[str, tuple[str, ...]]:
    """address -> its probing agents, for every address with a budget below its eligible agents.

    A budget below ``floor`` (the quorum's ``min_agents``) is raised to it: fewer voters
    than that could never mark the address down."""
    connected = sorted(agents, key=lambda a: a.agent_id)
    result: dict[str, tuple[str, ...]] = {}
    for address, (budget, names) in sorted(budgets(policies, default).items()):
        if budget == 0:
            continue
        eligible = [a for a in connected if not names <= a.shadowed]
        wanted = max(budget, floor)
        if len(eligible) > wanted:
            result[address] = pick(address, eligible, wanted)
    return result


def moved(before: Mapping[str, Sequence[str]], after: Mapping[str, Sequence[str]]) -> list[str]:
    """The addresses whose probers differ (for the log and the audit row)."""
    return sorted(a for a in set(before) | set(after) if before.get(a) != after.get(a))


def budget_error(min_agents: int, default: int) -> str | None:
    """Why the controller's budget cannot work with its quorum rule, or None."""
    if default != 0 and min_agents > default:
        return (
            f"--quorum-min-agents {min_agents} is more than --probes-per-endpoint {default}: "
            "only that many agents report on an address, so the quorum could never mark it down"
        )
    return None
