"""Served share against intended weight: the maths, without I/O.

Agents count the answers they give per (policy, slice, endpoint) and report what they
counted since their last report (``counter_deltas``); the controller sums those per time
bucket. This module compares the sum over a window with what the agents were told:

* **intended** share, per *view* (a slice, or ``_default`` when no slice matched, and an
  address family: A answers come from the IPv4 endpoints, AAAA from the IPv6 ones): the
  configured weights after the mesh-wide down set, under the same ``max_ejection_percent``
  bound and fail-open rule the agents apply (``dnsmesh.health.decide_policy`` with no local
  health), turned into the share of answer names each endpoint is expected to get by the
  policy's strategy (``view_shares``);
* the policy's intended share is the mixture of its views' shares, each weighted by the
  answers served in it, so a slice that sends most clients to one group is no drift;
* **served** share: an endpoint's answers over all answers of the policy;
* **drift**: the total variation distance ½ Σ |served - intended| (0: the same, 1: disjoint);
  the largest part of traffic that went to the wrong place. It is *flagged* when above the
  threshold over at least ``min_answers`` answers: with N answers, a correct two-endpoint
  policy at p has a drift of |p̂ - p| with a standard deviation of √(p(1-p)/N), 0.028 for an
  80/20 policy at 200 answers, so the default 0.1 is 3.5 of those.

Local ejections are deliberately not part of the intended share: an agent whose own probes
eject an endpoint that the mesh still serves is what drift shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

from dnsmesh.health import decide_policy
from dnsmesh.policy import Endpoint, Policy, SliceAction, Strategy
from dnsmesh.selection import failover_members, slice_weight

DEFAULT_SLICE = "_default"  # as dnsmesh.snapshot names the answers of no slice
DEFAULT_DRIFT_THRESHOLD = 0.1
DEFAULT_MIN_ANSWERS = 200
# Exact inclusion probabilities for answers > 1 cost 2^n; past this many live endpoints the
# weight share stands in for them (documented in docs/design.md).
EXACT_DRAW_LIMIT = 12

SliceEndpoint = tuple[str, str]  # (slice id or _default, endpoint address)
K = TypeVar("K")


def counter_deltas(previous: Mapping[K, int], now: Mapping[K, int]) -> dict[K, int]:
    """What each monotonic counter gained since ``previous``; a counter that went back
    (its key was dropped and counted again from 0) gained all it holds. Keys of ``now``
    only; zero gains are left out."""
    out: dict[K, int] = {}
    for key, count in now.items():
        before = previous.get(key, 0)
        gained = count - before if count >= before else count
        if gained > 0:
            out[key] = gained
    return out


@dataclass(frozen=True, slots=True)
class EndpointShare:
    address: str
    intended: float
    served: float
    answers: int

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "intended": round(self.intended, 6),
            "served": round(self.served, 6),
            "answers": self.answers,
        }


@dataclass(frozen=True, slots=True)
class Share:
    """The comparison for one policy (or one of its slices) over some answers."""

    endpoints: tuple[EndpointShare, ...]
    answers: int
    drift: float
    flagged: bool

    def to_json(self) -> dict[str, object]:
        return {
            "endpoints": [e.to_json() for e in self.endpoints],
            "answers": self.answers,
            "drift": round(self.drift, 6),
            "flagged": self.flagged,
        }


@dataclass(frozen=True, slots=True)
class ShareRule:
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD
    min_answers: int = DEFAULT_MIN_ANSWERS

    def __post_init__(self) -> None:
        if not 0.0 <= self.drift_threshold <= 1.0:
            raise ValueError("the drift threshold must be within 0-1")
        if self.min_answers < 1:
            raise ValueError("the minimum of answers must be at least 1")

    def flags(self, drift: float, answers: int) -> bool:
        return answers >= self.min_answers and drift > self.drift_threshold


@dataclass(frozen=True, slots=True)
class PolicyShare:
    policy: Share
    slices: Mapping[str, Share]  # by slice id (and _default); empty for a policy without


def total_variation(served: Mapping[str, float], intended: Mapping[str, float]) -> float:
    keys = served.keys() | intended.keys()
    return 0.5 * sum(abs(served.get(k, 0.0) - intended.get(k, 0.0)) for k in keys)


def told_weights(
    policy: Policy, down: frozenset[str], drained: frozenset[str] = frozenset()
) -> dict[str, int]:
    """The weights every agent serves with no local health: the configured ones with the
    operators' drains out and the down set at 0, by the agents' own rules
    (``health.decide_policy``: max_ejection_percent, the safety floor, on_all_down)."""
    decided = decide_policy(policy, {}, down, {}, {}, drained).weights
    configured = {str(e.address): e.weight for e in policy.spec.endpoints}
    return configured if decided is None else {**configured, **decided}


def view_endpoints(policy: Policy, slice_id: str) -> list[Endpoint] | None:
    """The endpoints a slice answers from (every one for _default); None: the slice refuses
    or is not declared."""
    spec = policy.spec
    if slice_id == DEFAULT_SLICE:
        return list(spec.endpoints)
    for slice_ in spec.slices:
        if slice_.id == slice_id:
            if slice_.action is SliceAction.REFUSE:
                return None
            if slice_.groups is None:
                return list(spec.endpoints)
            wanted = set(slice_.groups)
            return [e for e in spec.endpoints if e.group in wanted]
    return None


def view_rules(
    policy: Policy, slice_id: str, weights: Mapping[str, int]
) -> tuple[Mapping[str, int], Strategy, int]:
    """The weights, strategy and answer count a view draws by: a slice's own where it
    sets them (``weights`` are the policy's, as agents serve them)."""
    spec = policy.spec
    slice_ = next((s for s in spec.slices if s.id == slice_id), None)
    if slice_ is None:
        return weights, spec.strategy, spec.answers
    written = {str(e.address): e.weight for e in spec.endpoints}
    overridden = {
        address: slice_weight(written[address], weights.get(address, written[address]), wanted)
        for address, wanted in slice_.weight_overrides().items()
    }
    return (
        {**weights, **overridden},
        slice_.strategy or spec.strategy,
        slice_.answers or spec.answers,
    )


def view_shares(
    endpoints: Sequence[Endpoint], weights: Mapping[str, int], strategy: Strategy, answers: int
) -> dict[str, float]:
    """The expected share of answer names per address, for endpoints of one family.

    weighted, sticky and latency-weighted: weight over total (sticky's rendezvous hashing
    wins in proportion to weight; latency-weighted scales weights by what each agent
    measures, which is drift by design). failover: the lowest priority that has weight,
    by weight. With ``answers`` > 1 distinct names per answer, each endpoint's share is
    its chance of being drawn (successive draws by weight, without replacement) over
    ``answers``.
    """
    live = [(str(e.address), weights.get(str(e.address), e.weight)) for e in endpoints]
    live = [(a, w) for a, w in live if w > 0]
    if not live:
        return {}
    if strategy is Strategy.FAILOVER:
        members = failover_members(
            [e.priority for e in endpoints],
            [weights.get(str(e.address), e.weight) for e in endpoints],
        )
        keep = {str(endpoints[i].address) for i in members}
        live = [(a, w) for a, w in live if a in keep]
        answers = 1  # failover returns its primaries only
    count = min(answers, len(live))
    if count == len(live):
        return {a: 1.0 / count for a, _ in live}
    if count == 1 or len(live) > EXACT_DRAW_LIMIT:
        total = sum(w for _, w in live)
        return {a: w / total for a, w in live}
    chances = _inclusion(tuple(w for _, w in live), count)
    return {a: p / count for (a, _), p in zip(live, chances, strict=True)}


def _inclusion(weights: tuple[int, ...], count: int) -> tuple[float, ...]:
    """P(endpoint i among ``count`` successive weighted draws without replacement), exact
    over the subsets drawn so far (at most 2^EXACT_DRAW_LIMIT of them)."""

    total = sum(weights)

    @cache
    def reach(drawn: int) -> float:  # P(the first draws are exactly the set ``drawn``)
        if drawn == 0:
            return 1.0
        p = 0.0
        for i, w in enumerate(weights):
            bit = 1 << i
            if drawn & bit:
                before = drawn & ~bit
                left = total - sum(weights[j] for j in range(len(weights)) if before >> j & 1)
                p += reach(before) * w / left
        return p

    chances = [0.0] * len(weights)
    for drawn in range(1 << len(weights)):
        if drawn.bit_count() == count:
            p = reach(drawn)
            for i in range(len(weights)):
                if drawn >> i & 1:
                    chances[i] += p
    return tuple(chances)


def policy_share(
    policy: Policy,
    down: frozenset[str],
    counts: Mapping[SliceEndpoint, int],
    rule: ShareRule,
    drained: frozenset[str] = frozenset(),
) -> PolicyShare:
    """Served against intended for ``policy`` from the answers counted per (slice,
    endpoint); ``drained``: the policy's drained addresses. Counts of slices or endpoints
    the policy no longer declares are left out."""
    spec = policy.spec
    weights = told_weights(policy, down, drained)
    order = [str(e.address) for e in spec.endpoints]
    slice_ids = [DEFAULT_SLICE, *(s.id for s in spec.slices)]
    per_slice: dict[str, Share] = {}
    served_all: dict[str, int] = {}
    intended_mass: dict[str, float] = {}  # answers x intended share, summed over views
    for slice_id in slice_ids:
        endpoints = view_endpoints(policy, slice_id)
        if endpoints is None:
            continue
        served: dict[str, int] = {}
        mass: dict[str, float] = {}
        for family in (4, 6):
            members = [e for e in endpoints if e.address.version == family]
            answered = {str(e.address): counts.get((slice_id, str(e.address)), 0) for e in members}
            view_answers = sum(answered.values())
            if view_answers == 0:
                continue
            shares = view_shares(members, *view_rules(policy, slice_id, weights))
            for address, count in answered.items():
                if count:
                    served[address] = served.get(address, 0) + count
            for address, share in shares.items():
                mass[address] = mass.get(address, 0.0) + share * view_answers
        for address, count in served.items():
            served_all[address] = served_all.get(address, 0) + count
        for address, value in mass.items():
            intended_mass[address] = intended_mass.get(address, 0.0) + value
        if spec.slices:
            per_slice[slice_id] = _share(order, served, mass, rule)
    if not served_all:
        # Nothing served yet: show what the default view would serve (A answers, or AAAA
        # for a policy of IPv6 endpoints only), so an idle policy still shows its intent.
        family = 4 if any(e.address.version == 4 for e in spec.endpoints) else 6
        members = [e for e in spec.endpoints if e.address.version == family]
        intended_mass = view_shares(members, weights, spec.strategy, spec.answers)
    return PolicyShare(_share(order, served_all, intended_mass, rule), per_slice)


def _share(
    order: Sequence[str], served: Mapping[str, int], mass: Mapping[str, float], rule: ShareRule
) -> Share:
    answers = sum(served.values())
    if answers == 0:  # ``mass`` holds the shares themselves
        endpoints = tuple(EndpointShare(a, mass.get(a, 0.0), 0.0, 0) for a in order)
        return Share(endpoints, 0, 0.0, False)
    intended = {a: mass.get(a, 0.0) / answers for a in order}
    served_share = {a: served.get(a, 0) / answers for a in order}
    drift = total_variation(served_share, intended)
    endpoints = tuple(
        EndpointShare(a, intended[a], served_share[a], served.get(a, 0)) for a in order
    )
    return Share(endpoints, answers, drift, rule.flags(drift, answers))
