"""Forwarding-loop detection: ask each upstream a unique name and see whether it comes back.

The idea of CoreDNS's ``loop`` plugin. The probe name sits under a made-up TLD rather than
``invalid`` because RFC 6761 resolvers answer ``invalid`` themselves, so a probe for it
would never travel the loop. A resolver that is not part of a loop answers NXDOMAIN (or
times out); one that forwards back to us delivers our own probe to our listener.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from agent.config import UpstreamAddress
from agent.upstream import UpstreamClient
from dnsmesh import dnswire
from dnsmesh.dnswire import Query
from dnsmesh.errors import UpstreamError
from dnsmesh.logs import fields

log = logging.getLogger(__name__)

PROBE_TLD = "dnsmesh-loop-check"
TYPE_HINFO = 13  # as CoreDNS: a type no cache along the way is likely to hold


class LoopGuard:
    """Sends probes, and as a pipeline handler recognises them when they come back."""

    __slots__ = ("_timeout", "_upstream", "detected", "pending")

    def __init__(self, upstream: UpstreamClient, timeout: float) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self.pending: dict[bytes, UpstreamAddress] = {}
        self.detected: list[UpstreamAddress] = []

    def answer(self, query: Query, client: str) -> bytes | None:
        if not self.pending:
            return None
        server = self.pending.get(query.qname)
        if server is None:
            return None
        if server not in self.detected:
            self.detected.append(server)
        if self._upstream.disable(server, "forwarding loop"):
            log.error(
                "upstream.loop_detected",
                extra=fields(
                    upstream=str(server),
                    probe=dnswire.name_to_text(query.qname),
                    via=client,
                    action="upstream disabled",
                ),
            )
        # Answer the looped probe at once so it stops circling.
        return dnswire.build_error(query, dnswire.RCODE_REFUSED)

    async def probe_all(self) -> None:
        servers = [s.address for s in self._upstream.usable()]
        await asyncio.gather(*(self.probe(server) for server in servers))

    async def probe(self, server: UpstreamAddress) -> bool:
        """Probe one upstream; True if it forwarded our probe back to us."""
        name = f"{secrets.token_hex(8)}.{secrets.token_hex(4)}.{PROBE_TLD}"
        qname = dnswire.name_to_wire(name)
        self.pending[qname] = server
        try:
            await self._upstream.exchange(
                server, qname, TYPE_HINFO, dnswire.CLASS_IN, self._timeout
            )
        except UpstreamError:
            pass  # unreachable is not a loop; forwarding will find out on its own
        finally:
            del self.pending[qname]
        return server in self.detected
