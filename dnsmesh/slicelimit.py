"""Per-slice resource limits: one token bucket per (policy, slice) on each agent. Pure.

``spec.slices[].resource_limits: {qps, burst}`` bounds what one agent answers for a slice:
the bucket holds up to ``burst`` tokens, refilled at ``qps`` a second, and a query that
finds it empty is refused (dnsmesh/snapshot.py). A bucket lives in the compiled policy's
view; a new snapshot compiles new views, so whoever publishes it hands each new bucket
the state of the one it replaces first (``carry_buckets``): a reload or a health re-weigh
must not refill a bucket, or a client could get a fresh burst from every swap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from dnsmesh.policy import ResourceLimits


class SliceBucket:
    """A token bucket; ``limited`` counts the queries it refused (the agent's metric)."""

    __slots__ = ("burst", "clock", "limited", "qps", "stamp", "tokens")

    def __init__(self, limits: ResourceLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps = limits.qps
        self.burst = float(limits.burst)
        self.clock = clock
        self.tokens = self.burst  # a new slice starts with its whole burst
        self.stamp: float | None = None  # when tokens was last brought up to date
        self.limited = 0

    def allow(self) -> bool:
        """Take a token now; False (and counted) when the bucket is empty."""
        return self.take(self.clock())

    def take(self, now: float) -> bool:
        """Take a token at ``now`` (seconds on the bucket's clock); False when empty."""
        stamp = self.stamp
        if stamp is None:
            self.stamp = now
        elif now > stamp:  # a clock that steps back refills nothing
            tokens = self.tokens + (now - stamp) * self.qps
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.limited += 1
        return False

    def adopt(self, old: SliceBucket) -> None:
        """Continue from ``old``, the bucket of the same slice in the snapshot before: its
        tokens (at most this burst, when the limits changed), its clock and its count."""
        self.tokens = min(old.tokens, self.burst)
        self.stamp = old.stamp
        self.limited = old.limited


BucketKey = tuple[str, str]  # (policy name, slice id)


def carry_buckets(
    old: Iterable[tuple[BucketKey, SliceBucket]], new: Iterable[tuple[BucketKey, SliceBucket]]
) -> None:
    """Each bucket of ``new`` takes over the state of the one of ``old`` with its key; a
    bucket that is in both (a compiled policy kept as it was) is left alone."""
    before = dict(old)
    for key, bucket in new:
        previous = before.get(key)
        if previous is not None and previous is not bucket:
            bucket.adopt(previous)
