"""The last handler: ask the upstreams, cache what they say, serve stale when they fail.

Serve-stale (RFC 8767) is used after forwarding failed, or at once while every upstream is
marked down (RFC 8767 §5 allows answering stale without waiting when a recent attempt
failed; the down mark is that memory), or when the "client response timer"
(``stale_answer_after``, RFC 8767 §5) fires first: the query then goes on in the background
and refreshes the cache when it is answered. Upstream SERVFAIL/REFUSED counts as a failure
for this purpose, as the RFC's examples do.

With nothing stale to give and every upstream marked down, the answer is SERVFAIL with EDE
22 at once, as dnsdist and the PowerDNS Recursor do: the upstream client's probes, not
client queries, find out when an upstream is back.
"""

from __future__ import annotations

import asyncio

from agent.answer import Answer, Source
from agent.cache import Cache
from agent.upstream import UpstreamClient
from dnsmesh import dnswire
from dnsmesh.dnsforward import UpstreamAnswer, build_forwarded_response
from dnsmesh.dnswire import Query
from dnsmesh.errors import UpstreamError

_FAILED = frozenset({dnswire.RCODE_SERVFAIL, dnswire.RCODE_REFUSED})
Key = tuple[bytes, int, int]


class Forwarder:
    __slots__ = ("_cache", "_stale_answer_after", "_stale_ttl", "_upstream")

    def __init__(
        self,
        upstream: UpstreamClient,
        cache: Cache[UpstreamAnswer],
        *,
        stale_ttl: int,
        stale_answer_after: float,
    ) -> None:
        self._upstream = upstream
        self._cache = cache
        self._stale_ttl = stale_ttl
        self._stale_answer_after = stale_answer_after

    async def answer(self, query: Query, client: str) -> Answer:
        key = (query.qname, query.qtype, query.qclass)
        old = self._cache.get_stale(key)
        if self._upstream.all_down():
            if old is not None:
                return self._stale(query, old, "upstreams down")
            down = "every upstream is down" if self._upstream.servers else "no upstream configured"
            return _servfail(query, down)
        try:
            if old is None:
                # Bounded by the upstream client's deadline (query_timeout from the first
                # asker; a coalesced waiter that joined later waits less).
                upstream = await self._fetch(key)
            else:
                refresh = self._upstream.spawn(self._fetch(key))
                # wait() leaves the refresh running when the client response timer fires.
                await asyncio.wait((refresh,), timeout=self._stale_answer_after)
                if not refresh.done():
                    return self._stale(query, old, "upstream slow")
                upstream = refresh.result()
        except UpstreamError as exc:
            if old is not None:
                return self._stale(query, old, "upstream failed")
            return _servfail(query, str(exc))
        if upstream.rcode in _FAILED and old is not None:
            return self._stale(query, old, "upstream rcode")
        return Answer(build_forwarded_response(query, upstream, 0), Source.UPSTREAM)

    async def _fetch(self, key: Key) -> UpstreamAnswer:
        """The upstream answer, cached when it may be (not SERVFAIL/REFUSED, not stale)."""
        upstream = await self._upstream.resolve(*key)
        if upstream.rcode not in _FAILED:
            self._cache.put(key, upstream, upstream.cache_ttl)
        return upstream

    def _stale(self, query: Query, old: UpstreamAnswer, reason: str) -> Answer:
        wire = build_forwarded_response(query, old, 0, stale_ttl=self._stale_ttl)
        return Answer(wire, Source.STALE, reason)


def _servfail(query: Query, reason: str) -> Answer:
    ede = (dnswire.EDE_NO_REACHABLE_AUTHORITY, reason[:120] or "no upstream answered")
    return Answer(dnswire.build_error(query, dnswire.RCODE_SERVFAIL, ede), Source.ERROR, "upstream")
