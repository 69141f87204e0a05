"""Demand-driven slices, pure: how many endpoints a slice with ``scale`` answers from.

No I/O and no clock (the caller passes "now"). Two parts:

* **Demand** (``demand_of``): the slice's query rate from the answers every agent reported,
  summed per time bucket by the controller (controller.services.served_share): the rate
  over the recent window, and the highest such rate over the hold time.
* **The decision** (``decide``), with hysteresis so that a rate near a boundary does not
  flap: up as soon as the recent rate is above ``count x target`` (to what it needs, at
  most ``step_up`` more at a time); down only when the highest rate over the whole hold
  is below ``(count - 1) x target x headroom`` and the last change is a hold old, one
  ``step_down`` at a time. Always within ``min``..``max``.

A slice with a count N answers from the first N of ``dnsmesh.policy.scalable_endpoints``
(priority, then address); health then applies among those N as it does to any view.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dnsmesh.policy import Endpoint, Scale, Slice, scalable_endpoints


@dataclass(frozen=True, slots=True)
class ScaleRule:
    """The controller's knobs (``dnsmesh controller --scale-*``)."""

    window_s: float = 60.0  # the recent rate is measured over this long
    hold_s: float = 300.0  # a rate this long below the bar, and this long since a change
    headroom: float = 0.8  # down only below (count - 1) x target x headroom
    step_up: int = 2  # endpoints added at most per decision
    step_down: int = 1  # endpoints removed at most per decision

    def __post_init__(self) -> None:
        if not self.window_s > 0 or not self.hold_s >= 0 or not 0 < self.headroom <= 1:
            raise ValueError("the window must be above 0, the hold at least 0, headroom 0-1")
        if self.step_up < 1 or self.step_down < 1:
            raise ValueError("the steps must be at least 1")


@dataclass(frozen=True, slots=True)
class Demand:
    """A slice's query rate: over the recent window, and the highest over the hold."""

    qps: float
    peak_qps: float


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    count: int
    reason: str


def demand_of(buckets: Mapping[int, float], now: float, bucket_s: int, rule: ScaleRule) -> Demand:
    """The rates from queries per bucket (its start in seconds, ``bucket_s`` long).

    The recent rate counts the buckets from ``window_s`` (rounded down to whole buckets)
    before the current bucket's start through now, divided by the time they span, so the
    current, partly filled bucket neither counts as whole nor is left out. The peak is the
    highest rate over windows of the same length ending at each bucket boundary of the
    hold, and the recent rate.
    """
    if bucket_s <= 0:
        raise ValueError("bucket_s must be above 0")
    current = int(now) // bucket_s * bucket_s
    span = max(1, int(rule.window_s) // bucket_s) * bucket_s
    start = current - span
    recent = sum(n for b, n in buckets.items() if b >= start) / max(now - start, 1e-9)
    peak = recent
    end = current
    while end - span >= now - rule.hold_s - bucket_s:
        total = sum(n for b, n in buckets.items() if end - span <= b < end)
        peak = max(peak, total / span)
        end -= bucket_s
    return Demand(recent, peak)


def decide(
    scale: Scale,
    count: int,
    demand: Demand,
    since_change_s: float,
    rule: ScaleRule,
) -> ScaleDecision | None:
    """The slice's next count, or None (keep ``count``)."""
    target = scale.target_qps_per_endpoint
    bounded = min(max(count, scale.min), scale.max)
    if bounded != count:
        return ScaleDecision(
            bounded, f"{count} -> {bounded}: outside min {scale.min}..max {scale.max}"
        )
    if count < scale.max and demand.qps > count * target:
        needed = math.ceil(demand.qps / target)
        new = min(scale.max, count + rule.step_up, needed)
        return ScaleDecision(
            new, f"{count} -> {new}: {demand.qps:.1f} qps > {count} x {target:g} per endpoint"
        )
    if count > scale.min and since_change_s >= rule.hold_s:
        bar = (count - 1) * target * rule.headroom
        if demand.peak_qps < bar:
            # The fewest endpoints whose bar the peak is still below, one step at most.
            fits = math.floor(demand.peak_qps / (target * rule.headroom)) + 1
            new = max(scale.min, count - rule.step_down, fits)
            return ScaleDecision(
                new,
                f"{count} -> {new}: at most {demand.peak_qps:.1f} qps for {rule.hold_s:g} s "
                f"< {count - 1} x {target:g} x {rule.headroom:g}",
            )
    return None


def scaled_members(
    endpoints: Sequence[Endpoint], slice_: Slice, count: int | None
) -> frozenset[str] | None:
    """The addresses a slice answers from at ``count`` (None: not known yet, so ``min``),
    or None when the slice does not scale (every endpoint of its groups)."""
    if slice_.scale is None:
        return None
    n = slice_.scale.min if count is None else min(max(count, slice_.scale.min), slice_.scale.max)
    return frozenset(str(e.address) for e in scalable_endpoints(endpoints, slice_.groups)[:n])
