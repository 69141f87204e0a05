"""Slow start: an endpoint new to a policy, or back in service, ramps up to its weight.

Pure (the time is an argument), after Envoy's ``slow_start_config``: a cold instance is not
handed its whole share at once. With ``spec.health.slow_start`` set to a window *W*, an
endpoint that *enters service* in a policy the agent already served (it was added by a
change, or it comes back from an ejection, the mesh-wide down set or a drain) has

    fraction(t) = FLOOR + (1 - FLOOR) x t / W      for t = time since it entered, t < W

of its weight, and its whole weight from *W* on. The others keep theirs, so its share of
answers is ``w x fraction / (w x fraction + the others' weights)``: it starts near a tenth
of its full share and grows to it.

Not ramped: the endpoints the agent starts with (nothing was serving before), and those of
a policy that is new to the agent (every endpoint would ramp alike, which is no ramp). An
endpoint that leaves service mid-ramp starts again when it comes back.

The weights are integers, so a ramping policy's weights are multiplied by ``SCALE`` (the
ramping ones by ``SCALE x fraction``, at least 1): a weight of 1 ramps in steps of 1 %.
The health monitor (agent/probes/monitor.py) applies this on top of what health decided,
again at a bounded cadence while something ramps, never per query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dnsmesh.policy import Policy

FLOOR = 0.1  # the fraction a ramp starts at (Envoy's min_weight_percent default, 10 %)
SCALE = 100  # a ramping policy's weights are multiplied by this, for the fraction's sake

# policy name -> address -> (when its ramp began, the policy's window), ramps in progress
Started = Mapping[str, Mapping[str, tuple[float, float]]]


def fraction(elapsed: float, window: float) -> float:
    """The fraction of its weight an endpoint has ``elapsed`` seconds into a ramp."""
    if window <= 0 or elapsed >= window:
        return 1.0
    return FLOOR + (1.0 - FLOOR) * max(0.0, elapsed) / window


def in_service(policy: Policy, weights: Mapping[str, int] | None, servfail: bool) -> frozenset[str]:
    """The addresses that ``policy`` answers with these decided ``weights`` (None: the
    configured ones): configured above 0 and not taken to 0 by health or a drain."""
    if servfail:
        return frozenset()
    out = []
    for endpoint in policy.spec.endpoints:
        address = str(endpoint.address)
        weight = endpoint.weight if weights is None else weights.get(address, endpoint.weight)
        if endpoint.weight > 0 and weight > 0:
            out.append(address)
    return frozenset(out)


def window_of(policy: Policy) -> float:
    health = policy.spec.health
    return 0.0 if health is None else health.slow_start_window


@dataclass(frozen=True, slots=True)
class Served:
    """A policy as health decided it when last tracked. Its ``addresses`` in service are
    worked out then only for a policy with a window; for the others (most), only if an edit
    gives them one, so tracking costs them nothing on every decision."""

    policy: Policy
    weights: Mapping[str, int] | None
    servfail: bool
    addresses: frozenset[str] | None = None

    def in_service(self) -> frozenset[str]:
        if self.addresses is not None:
            return self.addresses
        return in_service(self.policy, self.weights, self.servfail)


# Names a ``Serving`` keeps beside its base before the next change folds them in: a change
# of a few policies copies at most this many entries, and one change in this many copies the
# base (a copy of 100,000 entries touches every value's count: 4-12 ms on the loop).
FOLD_AFTER = 4096


@dataclass(frozen=True, slots=True)
class Serving:
    """What each policy had in service when last tracked, by name: a base mapping shared
    with earlier decisions and the names decided since (None: no longer served).

    Health decides on the event loop, for the policies a change touched only; copying the
    whole table for each change would cost the loop milliseconds at 100,000 policies, so a
    new table shares its predecessor's base and copies only the small layer above it."""

    base: Mapping[str, Served | None] = field(default_factory=dict)
    layer: Mapping[str, Served | None] = field(default_factory=dict)

    def get(self, name: str) -> Served | None:
        if name in self.layer:
            return self.layer[name]
        return self.base.get(name)

    def updated(self, changes: Mapping[str, Served | None]) -> Serving:
        """This table with ``changes`` (None: removed), folded when the layer grows big."""
        layer = {**self.layer, **changes}
        if len(layer) < FOLD_AFTER:
            return Serving(self.base, layer)
        folded = {**self.base, **layer}
        return Serving({name: s for name, s in folded.items() if s is not None}, {})


@dataclass(frozen=True, slots=True)
class Ramps:
    """The ramps in progress (``started``) and, per policy, what was in service when they
    were last tracked (``serving``; None before anything was: the agent's start)."""

    started: Started = field(default_factory=dict)
    serving: Serving | None = None

    @property
    def active(self) -> bool:
        return bool(self.started)

    def in_service(self, policy: str) -> frozenset[str] | None:
        """The addresses ``policy`` had in service when last tracked (None: unknown)."""
        served = None if self.serving is None else self.serving.get(policy)
        return None if served is None else served.in_service()

    def fractions(self, policy: str, now: float) -> dict[str, float]:
        """address -> fraction of its weight, for the endpoints of ``policy`` ramping at
        ``now`` (finished ramps are left out)."""
        out: dict[str, float] = {}
        for address, (begun, window) in self.started.get(policy, {}).items():
            share = fraction(now - begun, window)
            if share < 1.0:
                out[address] = share
        return out


NOT_STARTED = Ramps()


def track(
    previous: Ramps,
    policies: Sequence[Policy],
    decided: Mapping[str, Mapping[str, int]],
    servfail: frozenset[str],
    now: float,
    only: frozenset[str] | None = None,
) -> Ramps:
    """The ramps after health decided ``decided`` (and ``servfail``) for ``policies`` at
    ``now``: the ones in progress that are still in service and unfinished, and one for
    each address that entered service since ``previous`` in a policy served then.

    ``only``: the names health decided anew (``policies`` are those of them still served);
    every other policy keeps what ``previous`` tracked, so a change of one policy among
    100,000 tracks one."""
    known = previous.serving or Serving()
    # The names decided now; with ``only``, those of ``only`` no longer served become None.
    serving: dict[str, Served | None] = {}
    started: dict[str, dict[str, tuple[float, float]]] = {}
    if only is not None:
        serving = dict.fromkeys(only)
        for name, ongoing in previous.started.items():
            if name not in only:
                unfinished = {a: r for a, r in ongoing.items() if now - r[0] < r[1]}
                if unfinished:
                    started[name] = unfinished
    for policy in policies:
        weights, failing = decided.get(policy.name), policy.name in servfail
        prior = known.get(policy.name)
        if (
            prior is not None
            and prior.policy is policy
            and prior.weights == weights
            and prior.servfail == failing
            and prior.addresses is not None
        ):
            serving[policy.name] = prior  # as decided last time (health decides often)
            continue
        now_serving = in_service(policy, weights, failing) if window_of(policy) > 0 else None
        serving[policy.name] = Served(policy, weights, failing, now_serving)
    table = Serving(serving) if only is None else known.updated(serving)
    if previous.serving is None:
        return Ramps({}, table)  # the agent's start: what it starts with is not new
    for policy in policies:
        window = window_of(policy)
        if window <= 0:
            continue
        before = previous.in_service(policy.name)
        if before is None:
            continue
        ongoing = previous.started.get(policy.name, {})
        ramps = {}
        now_served = serving[policy.name]
        assert now_served is not None  # every policy of ``policies`` was tracked above
        for address in now_served.in_service():
            if address in ongoing:
                begun = ongoing[address][0]
            elif address not in before:
                begun = now
            else:
                continue
            if now - begun < window:
                ramps[address] = (begun, window)  # the window as the policy says now
        if ramps:
            started[policy.name] = ramps
    return Ramps(started, table)


def ramped(
    ramps: Ramps,
    policies: Sequence[Policy],
    decided: Mapping[str, Mapping[str, int]],
    now: float,
    step: float = 0.0,
) -> tuple[dict[str, Mapping[str, int]], dict[str, dict[str, float]]]:
    """``decided`` with the ramps applied at ``now``, and the fractions used, per policy:
    a ramping policy's weights become weight x SCALE, its ramping endpoints' weight x
    SCALE x fraction (at least 1); the other policies keep what health decided.

    ``step`` > 0 reads the ramps at ``now`` rounded down to a multiple of it: every ramp
    moves at the same instants, so however often health decides again (a probe result
    may, every ``min_gap``), the weights change, and policies are compiled, at most once
    per step."""
    weights: dict[str, Mapping[str, int]] = dict(decided)
    fractions: dict[str, dict[str, float]] = {}
    if not ramps.active:
        return weights, fractions
    if step > 0:
        now -= now % step
    for policy in policies:
        shares = ramps.fractions(policy.name, now)
        if not shares:
            continue
        base = decided.get(policy.name) or {str(e.address): e.weight for e in policy.spec.endpoints}
        weights[policy.name] = {
            address: max(1, round(w * SCALE * shares[address]))
            if address in shares and w > 0
            else w * SCALE
            for address, w in base.items()
        }
        fractions[policy.name] = shares
    return weights, fractions
