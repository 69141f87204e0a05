"""Endpoint health from probe results: EWMA, outlier ejection, and the effective weights.

Pure: every function takes the time (``now``, seconds on any monotonic scale) and the
measurements as arguments, so the rules are tested without sockets or clocks.

**Per endpoint address** (``EndpointHealth.observe``): an EWMA of latency (successes
only) and of loss (1 per failed probe, 0 per success), and the consecutive failures and
successes. Outlier ejection follows Envoy's outlier detection (a circuit breaker):
``fall`` failures in a row (``spec.health.fall``, once ``outlier.consecutive_failures``)
eject the endpoint for ``base_ejection x times ejected``; once that time is over, ``rise``
successes in a row (``spec.health.rise``, default 1) bring it back (an endpoint still
failing stays out: it is probed all along; successes during the ejection count). Every
``base_ejection`` spent healthy forgives one past ejection, as Envoy decrements its
ejection multiplier.

**Per policy** (``decide_weights``): drained endpoints (an operator's override) get weight
0; of the rest, those ejected locally or marked down mesh-wide (the controller's quorum)
get weight 0 too, but never more than ``max_ejection_percent`` of them and never past the
policy's safety rules (dnsmesh.safety; the least bad stay in); when every endpoint in
service is unhealthy the policy answers what ``spec.health.on_all_down`` says (fail open,
its configured weights, by default) rather than with nothing (``decide_policy``).

**latency-weighted**: the effective weight of endpoint *e* is

    w_e x 100 x max(F_MIN, L_e x S_e)

    r_e = (lat_e + K) / (lat_best + K)           latency relative to the best endpoint
    L_e = min(1, (1 + DEAD_BAND) / r_e)           1 within the dead band, then ~1/r
    S_e = 1 - max(0, loss_e - LOSS_FLOOR) / (1 - LOSS_FLOOR)

snapped to a geometric ladder of levels (1, 0.8, 0.64, ...) with hysteresis. An endpoint
with no measurement yet has factor 1 (its configured weight); the x100 gives the factors
resolution when configured weights are small (1:1 stays 1:1 while all are equal).

Why it is stable (two close endpoints do not flap, and the loop does not oscillate):

1. Smoothing: the EWMA (``ALPHA``) averages several probes, so one slow probe moves the
   estimate by a fraction only.
2. ``K`` (5 ms) keeps sub-millisecond jitter of fast paths from looking like big ratios:
   0.2 ms against 0.4 ms is a ratio of 1.04, not 2.
3. Dead band: endpoints within ``DEAD_BAND`` (20 %) of the best get the full factor 1, so
   two close endpoints both keep their configured weights whichever is ahead today.
4. Hysteresis: the factor is published as a level on a x0.8 ladder, and the level only
   moves when the smoothed factor is more than ``HYSTERESIS`` of a step past the middle
   between levels (a Schmitt trigger), so a value hovering at a boundary does not toggle.
5. Probes measure the path, not the load DNS sends, and ``F_MIN`` keeps every endpoint in
   the answer set: shifting traffic away cannot starve the measurement that would bring
   it back, and there is no feedback from the weights into the latencies they are made of
   within one probe interval. The agent also recompiles at most a few times a second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from dnsmesh import safety
from dnsmesh.drains import NO_DRAINS, DrainSet
from dnsmesh.policy import (
    DEFAULT_FALL,
    DEFAULT_RISE,
    FallbackGroup,
    Health,
    OnAllDown,
    Outlier,
    Policy,
    Strategy,
)

ALPHA = 0.3  # EWMA weight of the newest sample: ~ the last 5-6 probes matter
K = 0.005  # seconds added to both latencies before taking their ratio (see 2. above)
DEAD_BAND = 0.2  # within 20 % of the best: full weight
LOSS_FLOOR = 0.05  # a loss EWMA below 5 % costs nothing
F_MIN = 0.01  # a slow endpoint keeps at least 1 % of its configured share
SCALE = 100  # latency-weighted weights are configured weight x SCALE x factor
STEP = 0.8  # the factor ladder: 1, 0.8, 0.64, ...
HYSTERESIS = 0.25  # a level moves only 1/4 step past the midpoint between levels
MAX_LEVEL = math.ceil(math.log(F_MIN) / math.log(STEP))

State = Literal["healthy", "ejected", "unknown"]


@dataclass(frozen=True, slots=True)
class OutlierRule:
    """The ejection rule one address follows (the merge of its policies' ``health``):
    ejected after ``consecutive_failures`` (``spec.health.fall``) failed probes in a row,
    back after ``rise`` successes in a row once its ejection time is over."""

    consecutive_failures: int = DEFAULT_FALL
    base_ejection: float = 30.0
    rise: int = DEFAULT_RISE

    @classmethod
    def of(cls, health: Health | None) -> OutlierRule:
        if health is None:
            return cls()
        return cls(
            health.failures_to_eject, health.outlier.base_ejection, health.successes_to_return
        )

    @classmethod
    def merge(cls, rules: Iterable[OutlierRule]) -> OutlierRule:
        """Several policies probing one address: the most sensitive rule (fewest failures
        to eject, shortest ejection, fewest successes to return), so no policy keeps a
        failing endpoint longer than it asked for; a longer ejection would keep it away
        from policies that asked less."""
        found = list(rules)
        if not found:
            return cls()
        return cls(
            min(r.consecutive_failures for r in found),
            min(r.base_ejection for r in found),
            min(r.rise for r in found),
        )


def ewma(previous: float | None, sample: float, alpha: float = ALPHA) -> float:
    return sample if previous is None else previous + alpha * (sample - previous)


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """What this agent knows of one endpoint address; ``observe`` returns the next value."""

    latency: float | None = None  # EWMA of successful probes' latency, seconds
    loss: float = 0.0  # EWMA of failures (1) and successes (0)
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    times_ejected: int = 0
    ejected_until: float | None = None  # not None: ejected (until at least then)
    ejected_at: float | None = None  # when the current ejection began
    healthy_since: float | None = None  # last time an ejection ended or was forgiven
    samples: int = 0  # probes observed in total

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None

    @property
    def state(self) -> State:
        if self.ejected:
            return "ejected"
        return "unknown" if self.samples == 0 else "healthy"

    def observe(
        self, ok: bool, latency: float | None, now: float, rule: OutlierRule
    ) -> EndpointHealth:
        """The health after one probe: ``ok`` with its ``latency`` (seconds), or a failure."""
        if not ok:
            failures = self.consecutive_failures + 1
            after = replace(
                self,
                loss=ewma(self.loss if self.samples else None, 1.0),
                consecutive_failures=failures,
                consecutive_successes=0,
                samples=self.samples + 1,
            )
            if not self.ejected and failures >= rule.consecutive_failures:
                times = self.times_ejected + 1
                after = replace(
                    after,
                    times_ejected=times,
                    ejected_until=now + rule.base_ejection * times,
                    ejected_at=now,
                    healthy_since=None,
                )
            return after
        after = replace(
            self,
            latency=ewma(self.latency, max(0.0, latency or 0.0)),
            loss=ewma(self.loss if self.samples else None, 0.0),
            consecutive_failures=0,
            consecutive_successes=self.consecutive_successes + 1,
            samples=self.samples + 1,
        )
        if self.ejected_until is not None:
            if now < self.ejected_until or after.consecutive_successes < rule.rise:
                return after  # still serving its ejection time, or not yet risen
            return replace(after, ejected_until=None, ejected_at=None, healthy_since=now)
        since = self.healthy_since if self.healthy_since is not None else now
        if self.times_ejected and now - since >= rule.base_ejection:
            return replace(after, times_ejected=self.times_ejected - 1, healthy_since=now)
        return replace(after, healthy_since=since)


# -- the latency factor -------------------------------------------------------------------


def latency_factor(latency: float, best: float, loss: float) -> float:
    """The raw factor in (0, 1] for an endpoint, relative to the policy's best latency."""
    ratio = (latency + K) / (best + K)
    by_latency = min(1.0, (1.0 + DEAD_BAND) / ratio)
    by_loss = 1.0 - max(0.0, loss - LOSS_FLOOR) / (1.0 - LOSS_FLOOR)
    return max(F_MIN, by_latency * by_loss)


def factor_level(factor: float, previous: int | None = None) -> int:
    """The ladder level (factor ≈ STEP**level) for ``factor``, sticky around ``previous``.

    Without a previous level it is the nearest one; with one, the level moves only when
    ``factor`` is more than HYSTERESIS of a step beyond the midpoint towards another level.
    """
    exact = math.log(max(factor, F_MIN)) / math.log(STEP)  # 0 for factor 1, grows as it falls
    nearest = min(MAX_LEVEL, max(0, round(exact)))
    if previous is None or abs(exact - previous) <= 0.5 + HYSTERESIS:
        return nearest if previous is None else previous
    return nearest


def level_factor(level: int) -> float:
    return max(F_MIN, STEP**level)


# -- per policy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """``weights`` for compile_snapshot (only policies whose weights differ from the
    configured ones), the ladder ``levels`` to pass back next time (hysteresis), the
    policies with every endpoint in service unhealthy and what they answer (``all_down``:
    name -> ``fail-open``, ``servfail``, ``nodata`` or ``fallback``), those of them that
    answer SERVFAIL, and the addresses ejected per policy."""

    weights: Mapping[str, Mapping[str, int]]
    levels: Mapping[tuple[str, str], int] = field(default_factory=dict)
    all_down: Mapping[str, str] = field(default_factory=dict)
    ejected: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def fail_open(self) -> tuple[str, ...]:
        return tuple(name for name, mode in self.all_down.items() if mode == "fail-open")

    @property
    def servfail(self) -> frozenset[str]:
        return frozenset(name for name, mode in self.all_down.items() if mode == "servfail")


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """One policy's part of a Decision."""

    weights: dict[str, int] | None  # None: the configured weights
    all_down: str | None = None  # what it answers with every endpoint in service unhealthy
    ejected: tuple[str, ...] = ()


_CONFIGURED = PolicyDecision(None)


def _badness(
    address: str, health: EndpointHealth | None, down: frozenset[str]
) -> tuple[float, ...]:
    """Sort key, first ejected first: ejected locally and down mesh-wide, then ejected
    locally, then down only; among those, the earliest ejection first.

    The order must not move while the endpoints stay as they are, or the one kept in by
    max_ejection_percent would rotate between failing endpoints at every probe; an ejection
    time does not move until it ends (Envoy keeps the earlier ejections too and refuses
    the new one).
    """
    local = health is not None and health.ejected
    at = health.ejected_at if health is not None and health.ejected_at is not None else 0.0
    return (-(int(local) + int(address in down)), -int(local), at)


def all_down_weights(policy: Policy, drained: frozenset[str]) -> tuple[str, dict[str, int] | None]:
    """What a policy answers when no endpoint in service is healthy: (mode, weights).

    ``fail-open``: its configured weights, drained endpoints still left out (a drain is an
    operator's word; when everything is drained, nothing is answered). ``nodata``: every
    weight 0, so A/AAAA get NOERROR with no records. ``servfail``: the configured weights
    (the snapshot answers SERVFAIL for it, whatever they are). ``fallback_group``: only that
    group's endpoints that are not drained, at their weight (1 for a standby of weight 0).
    """
    endpoints = policy.spec.endpoints
    health = policy.spec.health
    mode = health.all_down if health is not None else OnAllDown.FAIL_OPEN
    if isinstance(mode, FallbackGroup):
        weights = {
            str(e.address): (max(1, e.weight) if e.group == mode.group else 0) for e in endpoints
        }
        for address in drained:
            if address in weights:
                weights[address] = 0
        return "fallback", weights
    if mode is OnAllDown.NODATA:
        return mode.value, {str(e.address): 0 for e in endpoints}
    if mode is OnAllDown.SERVFAIL:
        return mode.value, None
    configured = {str(e.address): e.weight for e in endpoints if e.weight > 0}
    left_out = drained & configured.keys()
    if not left_out:
        return mode.value, None
    return mode.value, {a: 0 if a in left_out else w for a, w in configured.items()}


def decide_policy(
    policy: Policy,
    health: Mapping[str, EndpointHealth],
    down: frozenset[str],
    previous: Mapping[tuple[str, str], int],
    levels: dict[tuple[str, str], int],
    drained: frozenset[str] = frozenset(),
) -> PolicyDecision:
    """The effective weights of one policy, in this order:

    1. drained endpoints are out, always (the controller checked the safety rules when the
       drain was made, or the operator forced it);
    2. when no endpoint left in service is healthy (ejected here or down mesh-wide), the
       policy answers what ``spec.health.on_all_down`` says (``all_down_weights``);
    3. else unhealthy endpoints are ejected, worst first, at most ``max_ejection_percent`` of
       those in service and only while ``spec.safety`` still holds: the rest stay in;
    4. latency-weighted policies scale the weights of what is left.
    """
    spec = policy.spec
    endpoints = [e for e in spec.endpoints if e.weight > 0]
    addresses = [str(e.address) for e in endpoints]
    if not drained and not any(a in health or a in down for a in addresses):
        return _CONFIGURED  # nothing known: the configured weights (the common case)
    drained = drained & {str(e.address) for e in spec.endpoints}
    serving = [a for a in addresses if a not in drained]
    unhealthy = [a for a in serving if a in down or (a in health and health[a].ejected)]
    if len(unhealthy) == len(serving):  # every endpoint in service is down, or none is left
        mode, weights = all_down_weights(policy, drained)
        return PolicyDecision(weights, mode)
    outlier = spec.health.outlier if spec.health is not None else Outlier()
    allowed = len(serving) * outlier.max_ejection_percent // 100
    order = {a: i for i, a in enumerate(addresses)}
    unhealthy.sort(key=lambda a: (*_badness(a, health.get(a), down), order[a]))
    ejected = safety.admit(policy, drained, unhealthy, allowed)
    weights = {str(e.address): e.weight for e in endpoints}
    changed = False
    if spec.strategy is Strategy.LATENCY_WEIGHTED:
        measured = {
            a: health[a]
            for a in serving
            if a not in ejected and a in health and health[a].latency is not None
        }
        if measured:
            best = min(h.latency for h in measured.values() if h.latency is not None)
            changed = True  # weights are scaled by SCALE from here on
            for address in addresses:
                weight = weights[address] * SCALE
                h = measured.get(address)
                if h is not None and h.latency is not None:
                    key = (policy.name, address)
                    level = factor_level(latency_factor(h.latency, best, h.loss), previous.get(key))
                    levels[key] = level
                    weight = max(1, round(weight * level_factor(level)))
                weights[address] = weight
    for address in (*drained, *ejected):
        weights[address] = 0
        changed = True
    return PolicyDecision(weights if changed else None, None, ejected)


def decide_weights(
    policies: Sequence[Policy],
    health: Mapping[str, EndpointHealth],
    down: frozenset[str] = frozenset(),
    previous: Mapping[tuple[str, str], int] | None = None,
    drains: DrainSet = NO_DRAINS,
) -> Decision:
    """The ``weights`` argument of compile_snapshot for these policies, given this agent's
    per-address ``health``, the mesh-wide ``down`` set, the operators' ``drains`` and the
    last decision's levels.

    Mesh ``down`` addresses count as ejected for every agent, including one that never
    probed them, under the same max_ejection_percent bound, safety rules and all-down rule.
    """
    weights: dict[str, Mapping[str, int]] = {}
    levels: dict[tuple[str, str], int] = {}
    all_down: dict[str, str] = {}
    ejected: dict[str, tuple[str, ...]] = {}
    for policy in policies:
        decided = decide_policy(
            policy, health, down, previous or {}, levels, drains.of(policy.name)
        )
        if decided.weights is not None:
            weights[policy.name] = decided.weights
        if decided.all_down is not None:
            all_down[policy.name] = decided.all_down
        if decided.ejected:
            ejected[policy.name] = decided.ejected
    return Decision(weights, levels, all_down, ejected)
