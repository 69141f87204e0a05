"""Answer a forwarded name from the cache while its TTL lasts, counting the TTLs down."""

from __future__ import annotations

from agent.cache import Cache
from dnsmesh.dnsforward import UpstreamAnswer, build_forwarded_response
from dnsmesh.dnswire import Query


class CachedAnswers:
    __slots__ = ("_cache",)

    def __init__(self, cache: Cache[UpstreamAnswer]) -> None:
        self._cache = cache

    def answer(self, query: Query, client: str) -> bytes | None:
        hit = self._cache.get((query.qname, query.qtype, query.qclass))
        if hit is None:
            return None
        upstream, age = hit
        return build_forwarded_response(query, upstream, age)
