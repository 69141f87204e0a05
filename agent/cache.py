"""The answer cache for forwarded queries: TTL countdown, LRU bound, serve-stale window.

The clock is passed in so tests move time instead of sleeping. Keys are
``(qname wire bytes lower-cased, qtype, qclass)``; values are opaque here (the agent stores
``dnswire.UpstreamAnswer``), so the cache knows nothing about DNS messages.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

V = TypeVar("V")
CacheKey = tuple[bytes, int, int]


class _Entry(NamedTuple, Generic[V]):
    """A NamedTuple: one is built per cached upstream answer, cheaper than a dataclass."""

    value: V
    stored: float  # clock time when the upstream answered
    expires: float  # stored + TTL: fresh before, stale after
    discard: float  # expires + max_stale: gone after (RFC 8767 §5 "max stale timer")


class Cache(Generic[V]):
    """A bounded LRU map whose entries are fresh for their TTL, then stale for a while."""

    def __init__(
        self,
        capacity: int,
        clock: Callable[[], float],
        *,
        max_ttl: int = 86_400,
        max_stale: float = 86_400.0,
    ) -> None:
        self.capacity = capacity
        self.clock = clock
        self.max_ttl = max_ttl
        self.max_stale = max_stale
        self._entries: OrderedDict[CacheKey, _Entry[V]] = OrderedDict()
        # For /metrics (hits are the answers counted under the "cache" source): fresh
        # lookups that found nothing fresh, and entries pushed out by the size bound.
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: CacheKey, value: V, ttl: int) -> None:
        """Keep ``value`` for ``ttl`` seconds (capped at max_ttl); ttl <= 0 keeps nothing.

        A TTL of 0 means "use once" (RFC 1035 §3.2.1), so it is not cached, and neither is
        it kept for serve-stale: the owner asked us not to reuse it.
        """
        if ttl <= 0 or self.capacity <= 0:
            return
        now = self.clock()
        expires = now + min(ttl, self.max_ttl)
        self._entries[key] = _Entry(value, now, expires, expires + self.max_stale)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            # Least recently used first; the stalest entries age out the same way.
            self._entries.popitem(last=False)
            self.evictions += 1

    def get(self, key: CacheKey) -> tuple[V, int] | None:
        """A fresh entry and its age in whole seconds (to count TTLs down), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        now = self.clock()
        if now >= entry.expires:
            if now >= entry.discard:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        return entry.value, int(now - entry.stored)

    def get_stale(self, key: CacheKey) -> V | None:
        """An entry past its TTL but inside the stale window (or still fresh), else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() >= entry.discard:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.value
