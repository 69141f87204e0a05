"""Endpoint selection: weighted, failover and sticky picks that receive their randomness.

The one implementation of each pick; the compiled snapshot's pickers (dnsmesh/snapshot.py)
call these (its slot table for small integer weights is an exact shortcut of the weighted
pick). Every function returns indices into the caller's endpoint list, distinct and in answer
order, and never returns an endpoint whose weight is 0. Only the chosen endpoints are
returned, never the whole set reordered: getaddrinfo() re-sorts a multi-address answer by
RFC 6724, which would undo any weighting expressed as order alone.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True, slots=True)
class WeightedTable:
    """Weights with their running sums, for O(log n) weighted picks with bisect."""

    weights: tuple[int, ...]
    cumulative: tuple[int, ...]
    total: int

    @classmethod
    def build(cls, weights: Sequence[int]) -> WeightedTable:
        if any(w < 0 for w in weights):
            raise ValueError("weights cannot be negative")
        cumulative = tuple(accumulate(weights))
        total = cumulative[-1] if cumulative else 0
        if total <= 0:
            raise ValueError("at least one weight must be above 0")
        return cls(tuple(weights), cumulative, total)

    def pick(self, rng: random.Random) -> int:
        """One index with probability weight/total; zero weights are skipped by bisect_right."""
        # random() < 1, so the product is < total and the index is always in range.
        return bisect_right(self.cumulative, rng.random() * self.total)

    def pick_distinct(self, count: int, rng: random.Random) -> list[int]:
        """Up to ``count`` distinct indices, drawn one after another, each with probability
        proportional to its weight among those not drawn yet. The first draw is one bisect;
        later ones scan the (few) endpoints, skipping those already drawn."""
        weights = self.weights
        draw = rng.random
        first = bisect_right(self.cumulative, draw() * self.total)
        picked = [first]
        left = self.total - weights[first]
        while len(picked) < count and left > 0:
            target = draw() * left
            chosen = -1
            for index, weight in enumerate(weights):
                if weight and index not in picked:
                    chosen = index  # the last candidate also absorbs float rounding
                    target -= weight
                    if target < 0:
                        break
            picked.append(chosen)
            left -= weights[chosen]
        return picked


def failover_members(priorities: Sequence[int], weights: Sequence[int]) -> list[int]:
    """The indices of the lowest priority value among endpoints with weight > 0.

    Failover picks by weight among these only. Backups are not added to fill the answer
    count: a client given a primary and a backup may well use the backup (getaddrinfo
    re-sorts), which is exactly what failover must avoid."""
    live = [p for p, w in zip(priorities, weights, strict=True) if w > 0]
    if not live:
        return []
    best = min(live)
    return [i for i, (p, w) in enumerate(zip(priorities, weights, strict=True)) if p == best and w]


def sticky_key(address: str) -> bytes:
    """The per-endpoint part of the rendezvous hash input (stable across processes)."""
    return address.encode("ascii") + b"\x00"


def rendezvous_score(client: bytes, endpoint_key: bytes, weight: int) -> float:
    """Weighted rendezvous score (Schindelhauer and Schomaker): w / -ln(u), u from a hash.

    The highest score wins; endpoint i wins with probability w_i / sum(w), and removing an
    endpoint changes the winner only for the clients it was winning.
    """
    digest = hashlib.blake2b(endpoint_key + client, digest_size=8).digest()
    # 52 bits + 0.5 keep u strictly inside (0, 1) in float arithmetic, so the log is finite.
    u = ((int.from_bytes(digest, "big") >> 12) + 0.5) / 4503599627370496.0
    return weight / -math.log(u)


def pick_sticky(client_key: str, endpoints: Sequence[tuple[bytes, int]], count: int) -> list[int]:
    """``count`` indices for this client by weighted rendezvous hashing over
    ``(sticky_key(address), weight)`` pairs: deterministic, weight-proportional, and stable
    under removal of other endpoints. Zero-weight endpoints are never picked."""
    client = client_key.encode("utf-8", "surrogateescape")
    scored = [
        (rendezvous_score(client, key, weight), index)
        for index, (key, weight) in enumerate(endpoints)
        if weight > 0
    ]
    scored.sort(reverse=True)
    return [index for _, index in scored[:count]]


def slice_weight(configured: int, effective: int, wanted: int) -> int:
    """An endpoint's weight in a slice that sets it to ``wanted``: what health made of the
    configured weight applies to the slice's (0 stays 0, a latency scaling scales it)."""
    if effective == configured or configured == 0:
        return wanted
    if effective == 0 or wanted == 0:
        return 0
    return max(1, round(wanted * effective / configured))
