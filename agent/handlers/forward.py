"""The last handler: ask the upstreams, cache what they say, serve stale when they fail.

Serve-stale (RFC 8767) is used only after forwarding failed, or at once while every
upstream is marked down (RFC 8767 §5 allows answering stale without waiting when a
recent attempt failed; the down mark is that memory). Upstream SERVFAIL/REFUSED counts as
a failure for this purpose, as the RFC's examples do.
"""

from __future__ import annotations

from agent.answer import Answer, Source
from agent.cache import Cache
from agent.upstream import UpstreamClient
from dnsmesh import dnswire
from dnsmesh.dnsforward import UpstreamAnswer, build_forwarded_response
from dnsmesh.dnswire import Query
from dnsmesh.errors import UpstreamError

_FAILED = frozenset({dnswire.RCODE_SERVFAIL, dnswire.RCODE_REFUSED})


class Forwarder:
    __slots__ = ("_cache", "_query_timeout", "_stale_ttl", "_upstream")

    def __init__(
        self,
        upstream: UpstreamClient,
        cache: Cache[UpstreamAnswer],
        *,
        query_timeout: float,
        stale_ttl: int,
    ) -> None:
        self._upstream = upstream
        self._cache = cache
        self._query_timeout = query_timeout
        self._stale_ttl = stale_ttl

    async def answer(self, query: Query, client: str) -> Answer:
        key = (query.qname, query.qtype, query.qclass)
        if self._upstream.all_down():
            stale = self._stale(query, "upstreams down")
            if stale is not None:
                return stale
        try:
            # Bounded by the upstream client's deadline (query_timeout from the first asker;
            # a coalesced waiter that joined later waits less).
            upstream = await self._upstream.resolve(*key)
        except UpstreamError as exc:
            stale = self._stale(query, "upstream failed")
            if stale is not None:
                return stale
            ede = (dnswire.EDE_NO_REACHABLE_AUTHORITY, str(exc)[:120] or "no upstream answered")
            return Answer(
                dnswire.build_error(query, dnswire.RCODE_SERVFAIL, ede), Source.ERROR, "upstream"
            )
        if upstream.rcode in _FAILED:
            stale = self._stale(query, "upstream rcode")
            if stale is not None:
                return stale
        else:
            self._cache.put(key, upstream, upstream.cache_ttl)
        return Answer(build_forwarded_response(query, upstream, 0), Source.UPSTREAM)

    def _stale(self, query: Query, reason: str) -> Answer | None:
        old = self._cache.get_stale((query.qname, query.qtype, query.qclass))
        if old is None:
            return None
        wire = build_forwarded_response(query, old, 0, stale_ttl=self._stale_ttl)
        return Answer(wire, Source.STALE, reason)
