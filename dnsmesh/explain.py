"""Explain: what one client gets from one policy, and why, from the compiled policy itself.

Pure. The question is answered by the code that answers queries, never by a second copy of
its rules: the view (slice or default) is ``CompiledPolicy.view_of`` (which never writes the
query path's memo), the candidates and their states are the snapshot's own ``_candidates``,
and the distribution of answers is read from the view's real pickers (dnsmesh/snapshot.py):

* a single endpoint (``_Fixed``) is the one answer;
* weighted pickers with one answer (``_WeightedSlots``, ``_WeightedOne``) give each
  endpoint weight / total, exactly;
* several answers drawn without replacement (``_WeightedMany``) give each endpoint the
  probability that it is in the answer, exactly for up to ``EXACT_LIMIT`` endpoints (a
  dynamic programme over the sets drawn so far), else estimated from ``SAMPLES`` draws of
  the picker's own table;
* sticky (``_Sticky``) is the one answer this client gets (the rendezvous hash), exact;
* a picker this module does not know (one added later) is sampled through its own
  ``choose``, its answer counters put back as they were, and marked not exact.

The three front ends (the controller's ``/v1/explain``, the agent's admin ``/explain`` and
``dnsmesh explain``) render the same ``Explanation.to_json()``. The controller compiles the
policy with what it knows (drains, the quorum's down set, a node's last reported ejections:
``compile_with_state``); the agent explains the compiled policy it is serving.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dnsmesh.dnswire import name_to_wire
from dnsmesh.health import EndpointHealth, decide_policy
from dnsmesh.policy import Endpoint, Policy, normalize_domain
from dnsmesh.scaling import scaled_members
from dnsmesh.selection import pick_sticky
from dnsmesh.snapshot import (
    DEFAULT_SLICE,
    NO_CONTEXT,
    CandidateState,
    CompileContext,
    CompiledPolicy,
    ServfailPolicy,
    Snapshot,
    View,
    _candidates,
    _Fixed,
    _Picker,
    _Sticky,
    _WeightedMany,
    _WeightedOne,
    _WeightedSlots,
)

# Exact inclusion probabilities for multi-answer draws up to this many endpoints (2^n sets).
EXACT_LIMIT = 14
SAMPLES = 20000  # draws of an estimate (a share's standard error below 0.4 %)


class Reason:
    """Why a candidate is (not) answered, as explain shows it (finer than the query log's
    CandidateState: explain knows who took an endpoint out)."""

    ACTIVE: Final = "active"  # drawn from, by its effective weight
    STANDBY: Final = "standby"  # failover: a higher priority group is answering
    DRAINED: Final = "drained"  # an operator's drain (dnsmesh endpoint drain)
    DOWN: Final = "down"  # the controller's quorum marked it down mesh-wide
    EJECTED: Final = "ejected"  # this agent's probes ejected it
    ZERO_WEIGHT: Final = "zero-weight"  # its configured weight is 0
    OUT: Final = "out"  # weight 0 for another reason (on_all_down: nodata, fallback_group)


@dataclass(frozen=True, slots=True)
class Odds:
    """The answers of one family: ``shares[address]`` is the probability that an answer
    holds that endpoint (they sum to the answer count); ``answer`` the one answer a sticky
    or single-endpoint view gives this client; ``exact`` false for an estimate."""

    shares: dict[str, float]
    exact: bool = True
    answer: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "exact": self.exact,
            "shares": {a: round(p, 6) for a, p in self.shares.items()},
        }
        if self.answer is not None:
            body["answer"] = list(self.answer)
        return body


@dataclass(frozen=True, slots=True)
class CandidateExplained:
    address: str
    family: int
    group: str | None
    priority: int
    weight: int  # as configured
    effective_weight: int  # what the pick uses
    state: str  # a Reason
    note: str | None = None
    slow_start: float | None = None  # the agent's ramp: fraction of full weight, if ramping

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "address": self.address,
            "family": self.family,
            "group": self.group,
            "priority": self.priority,
            "weight": self.weight,
            "effective_weight": self.effective_weight,
            "state": self.state,
        }
        if self.note:
            body["note"] = self.note
        if self.slow_start is not None:
            body["slow_start"] = round(self.slow_start, 4)
        return body


@dataclass(frozen=True, slots=True)
class Explanation:
    """What ``client`` gets from ``policy`` as ``source`` (controller or agent) sees it."""

    policy: str
    domain: str
    revision: int
    client: str
    source: str
    slice: str  # the slice's id, or DEFAULT_SLICE
    action: str  # answer | refuse | servfail
    strategy: str
    answers: int  # records per answer (spec.answers)
    candidates: tuple[CandidateExplained, ...]
    distribution: dict[str, Odds]  # "A" / "AAAA" -> odds; a family with no answer: absent
    all_down: str | None = None  # spec.health.on_all_down in force, if every endpoint is out
    node: dict[str, Any] | None = None
    # The rollout the answers follow (spec.canary: its group, step, share and state, as
    # the controller's rollout table holds them); None while the policy has no canary.
    rollout: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())
    ttl: int = 0  # of the view's answers (a slice's own ttl, else the policy's)
    # The slice's weights in place of the endpoints' (spec.slices[i].weights); None: none.
    weights: dict[str, int] | None = None
    debug_label: str | None = None  # asked as DEBUG_LABEL.<domain> (debug routing)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "domain": self.domain,
            "revision": self.revision,
            "client": self.client,
            "source": self.source,
            "node": self.node,
            "slice": self.slice,
            "action": self.action,
            "strategy": self.strategy,
            "answers": self.answers,
            "ttl": self.ttl,
            "weights": self.weights,
            "debug_label": self.debug_label,
            "all_down": self.all_down,
            "rollout": self.rollout,
            "candidates": [c.to_json() for c in self.candidates],
            "distribution": {k: v.to_json() for k, v in self.distribution.items()},
            "notes": list(self.notes),
        }


# -- finding the policy --------------------------------------------------------------------


def resolve(snapshot: Snapshot, name: str) -> CompiledPolicy | None:
    """The policy called ``name``, else the one that answers ``name`` as a DNS name, by the
    snapshot's own lookup (exact name, then the longest wildcard), else None."""
    for compiled in snapshot.policies():
        if compiled.name == name:
            return compiled
    try:
        wire = name_to_wire(normalize_domain(name))
    except ValueError:
        return None
    return snapshot.lookup(wire)


# -- compiling with what the caller knows ----------------------------------------------------


def compile_with_state(
    policy: Policy,
    revision: int,
    *,
    health: Mapping[str, EndpointHealth] | None = None,
    down: frozenset[str] = frozenset(),
    drained: frozenset[str] = frozenset(),
    canary_share: int | None = None,
    context: CompileContext = NO_CONTEXT,
    debug_label: str | None = None,
    slice_counts: Mapping[str, int] | None = None,
) -> tuple[CompiledPolicy, str | None]:
    """``policy`` compiled as an agent with this ``health``, mesh ``down`` set, drains,
    rollout share and node labels (``context``) would compile it
    (dnsmesh.health.decide_policy: the same ejection bounds, safety rules and
    on_all_down), and the on_all_down mode in force (None: some endpoint serves).
    ``debug_label``: as it answers DEBUG_LABEL.<domain>. ``slice_counts``: the scaled
    slices' counts by slice id (none: their min)."""
    decided = decide_policy(policy, health or {}, down, {}, {}, drained)
    compiled: CompiledPolicy
    if decided.all_down == "servfail":
        compiled = ServfailPolicy(policy, revision, None, context, slice_counts)
    else:
        compiled = CompiledPolicy(
            policy, revision, decided.weights, canary_share, context, slice_counts
        )
    if debug_label is not None:
        compiled = compiled.debug_variant(debug_label) or compiled
    return compiled, decided.all_down


# -- the distribution ----------------------------------------------------------------------


def odds(picker: _Picker, client: str) -> Odds:
    """The answers ``picker`` gives ``client``, read from the picker itself (see above)."""
    if isinstance(picker, _Fixed):
        return Odds({picker.owners[0]: 1.0}, answer=(picker.owners[0],))
    if isinstance(picker, _Sticky):
        picked = pick_sticky(client, picker.members, picker.count)
        answer = tuple(picker.owners[i] for i in picked)
        return Odds(dict.fromkeys(answer, 1.0), answer=answer)
    if isinstance(picker, _WeightedSlots):
        return Odds(_normalised(picker.owners, [1] * picker.total))
    if isinstance(picker, _WeightedOne):
        return Odds(_normalised(picker.owners, picker.table.weights))
    if isinstance(picker, _WeightedMany):
        weights = picker.table.weights
        if len(weights) <= EXACT_LIMIT:
            included = _inclusion(weights, picker.count)
            return Odds(dict(zip(picker.owners, included, strict=True)))
        rng = random.Random(0)
        counts = [0] * len(weights)
        for _ in range(SAMPLES):
            for index in picker.table.pick_distinct(picker.count, rng):
                counts[index] += 1
        return Odds(_per_owner(picker.owners, [c / SAMPLES for c in counts]), exact=False)
    return _sampled(picker, client)


def _normalised(owners: Sequence[str], weights: Sequence[int]) -> dict[str, float]:
    total = sum(weights)
    return _per_owner(owners, [w / total for w in weights])


def _per_owner(owners: Sequence[str], shares: Sequence[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for owner, share in zip(owners, shares, strict=True):
        out[owner] = out.get(owner, 0.0) + share
    return out


def _inclusion(weights: Sequence[int], count: int) -> list[float]:
    """P(endpoint i is in the answer) for ``count`` draws by weight without replacement
    (WeightedTable.pick_distinct). What is left to draw depends only on the set drawn so
    far, so the probability of each set is summed over the orders that reach it."""
    n = len(weights)
    live = sum(1 for w in weights if w > 0)
    draws = min(count, live)
    layer: dict[int, float] = {0: 1.0}
    for _ in range(draws):
        following: dict[int, float] = {}
        for drawn, probability in layer.items():
            left = sum(w for i, w in enumerate(weights) if not drawn >> i & 1)
            for i, w in enumerate(weights):
                if w and not drawn >> i & 1:
                    key = drawn | 1 << i
                    following[key] = following.get(key, 0.0) + probability * w / left
        layer = following
    included = [0.0] * n
    for drawn, probability in layer.items():
        for i in range(n):
            if drawn >> i & 1:
                included[i] += probability
    return included


def _sampled(picker: _Picker, client: str) -> Odds:
    """An unknown picker's odds from its own ``choose``; its answer counters (which the
    agent reports as served answers) are restored, so explaining counts no answer."""
    saved = list(picker.hits)
    try:
        picker.hits[:] = [0] * len(saved)
        rng = random.Random(0)
        for _ in range(SAMPLES):
            picker.choose(client, rng)
        taken = picker.take_answered()
    finally:
        picker.hits[:] = saved
    return Odds({a: n / SAMPLES for a, n in taken.items()}, exact=False)


# -- the explanation -----------------------------------------------------------------------


def explain(
    compiled: CompiledPolicy,
    client: str,
    *,
    source: str,
    drained: frozenset[str] = frozenset(),
    down: frozenset[str] = frozenset(),
    ejected: frozenset[str] = frozenset(),
    all_down: str | None = None,
    ramp: Mapping[str, float] | None = None,
    node: dict[str, Any] | None = None,
) -> Explanation:
    """What ``client`` gets from ``compiled``: its view, candidates and distribution.

    ``drained``, ``down`` and ``ejected`` (the agent's own ejections) say who took an
    endpoint out; ``all_down`` the on_all_down mode in force; ``ramp`` the slow start
    fraction of endpoints still ramping up (the agent's).
    """
    policy = compiled.policy
    spec = policy.spec
    view = compiled.view_of(client)
    slice_id = view.slice or DEFAULT_SLICE
    written = next((s for s in spec.slices if s.id == view.slice), None)
    notes: list[str] = []
    if view.refuse:
        action = "refuse"
        if view.slice is None:
            notes.append("no slice matches this client and spec.unmatched is refuse (REFUSED)")
        else:
            notes.append(f"slice {slice_id} refuses this client (REFUSED, EDE 18)")
    elif isinstance(compiled, ServfailPolicy):
        action = "servfail"
        notes.append("every endpoint in service is down; spec.health.on_all_down is servfail")
    else:
        action = "answer"
    scaled = next((s for s in spec.slices if s.id == view.slice and s.scale is not None), None)
    if scaled is not None and scaled.scale is not None:
        members = scaled_members(spec.endpoints, scaled, compiled.slice_counts.get(scaled.id))
        notes.append(
            f"slice {scaled.id} scales with demand: {len(members or ())} of its endpoints "
            f"answer (min {scaled.scale.min}, max {scaled.scale.max})"
        )
    if all_down is not None and action != "servfail":
        notes.append(f"every endpoint in service is down; on_all_down {all_down} answers")
    candidates = _explained(view, drained, down, ejected, ramp or {})
    distribution: dict[str, Odds] = {}
    if action == "answer":
        for qtype, picker in (("A", view.v4), ("AAAA", view.v6)):
            if picker is not None:
                distribution[qtype] = odds(picker, client)
    return Explanation(
        policy=policy.name,
        domain=spec.domain,
        revision=compiled.revision,
        client=client,
        source=source,
        slice=slice_id,
        action=action,
        strategy=(spec.strategy if view.refuse else view.strategy).value,
        answers=spec.answers if view.refuse else view.answers,
        candidates=candidates,
        distribution=distribution,
        all_down=all_down,
        node=node,
        notes=tuple(notes),
        ttl=spec.ttl if view.refuse else view.ttl,
        weights=dict(written.weights) if written is not None and written.weights else None,
        debug_label=compiled.debug_label,
    )


def _explained(
    view: View,
    drained: frozenset[str],
    down: frozenset[str],
    ejected: frozenset[str],
    ramp: Mapping[str, float],
) -> tuple[CandidateExplained, ...]:
    out: list[CandidateExplained] = []
    for family in (4, 6):
        endpoints: tuple[Endpoint, ...] = view.endpoints[family == 6]
        # The snapshot's own states (made here, not through View.candidates: its memo has
        # one writer, the query log's thread).
        states = _candidates(endpoints, view.configured, view.strategy)
        for endpoint, candidate in zip(endpoints, states, strict=True):
            address = candidate.address
            state, note = _reason(candidate.state, address, drained, down, ejected)
            out.append(
                CandidateExplained(
                    address=address,
                    family=family,
                    group=endpoint.group,
                    priority=endpoint.priority,
                    weight=candidate.weight,
                    effective_weight=candidate.effective_weight,
                    state=state,
                    note=note,
                    slow_start=ramp.get(address),
                )
            )
    return tuple(out)


def _reason(
    state: str,
    address: str,
    drained: frozenset[str],
    down: frozenset[str],
    ejected: frozenset[str],
) -> tuple[str, str | None]:
    unhealthy = address in down or address in ejected
    if state == CandidateState.DRAINED:
        return Reason.ZERO_WEIGHT, None
    if state == CandidateState.EJECTED:
        if address in drained:
            return Reason.DRAINED, None
        if address in ejected:
            return Reason.EJECTED, None
        if address in down:
            return Reason.DOWN, None
        return Reason.OUT, "weight 0 by on_all_down"
    if address in drained:
        return state, "drained, but answered: every endpoint is out (on_all_down)"
    if unhealthy:
        return state, (
            "unhealthy but kept in service (max_ejection_percent, spec.safety or on_all_down)"
        )
    return state, None


# -- what-if -------------------------------------------------------------------------------


def compare(before: Explanation | None, after: Explanation) -> dict[str, Any]:
    """The distributions before and after a proposed change side by side, per family:
    ``{"A": [{"address", "before", "after"}], ...}`` (a share absent on one side is 0)."""
    families = sorted({*after.distribution, *(before.distribution if before else {})})
    out: dict[str, Any] = {}
    for qtype in families:
        old = before.distribution.get(qtype) if before else None
        new = after.distribution.get(qtype)
        old_shares = old.shares if old else {}
        new_shares = new.shares if new else {}
        addresses = [*old_shares, *(a for a in new_shares if a not in old_shares)]
        out[qtype] = [
            {
                "address": a,
                "before": round(old_shares.get(a, 0.0), 6),
                "after": round(new_shares.get(a, 0.0), 6),
            }
            for a in addresses
        ]
    return out


def what_if(before: Explanation | None, after: Explanation) -> dict[str, Any]:
    """The body of a what-if: both explanations and their distributions side by side."""
    return {
        "before": before.to_json() if before is not None else None,
        "after": after.to_json(),
        "changes": compare(before, after),
    }
