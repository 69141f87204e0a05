"""Special-use names answered here and never forwarded (RFC 6761 §6.3/§6.4, RFC 6762 §22.1)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from dnsmesh import dnswire
from dnsmesh.dnswire import Query
from dnsmesh.specialuse import SPECIAL_USE_ZONES

# One list of zones for this handler and the policy validator (which refuses them).
_WIRE = {zone: dnswire.name_to_wire(zone) for zone in SPECIAL_USE_ZONES}
_LOCALHOST, _INVALID, _LOCAL = _WIRE["localhost"], _WIRE["invalid"], _WIRE["local"]
_SPECIAL = tuple(_WIRE.values())
_NEGATIVE_TTL = 300  # these answers never change; a client may keep them a while
_ANSWER_TTL = 300


class LocalNames:
    """``localhost`` (and below) -> loopback; ``invalid`` and ``local`` (and below) -> NXDOMAIN.

    RFC 6761 §6.3: caching servers answer address queries for localhost names with the
    loopback address and everything else negatively, without asking anyone. §6.4: invalid
    names get NXDOMAIN. RFC 6762 §22.1: ``.local`` belongs to multicast DNS, so a unicast
    resolver answers negatively rather than leaking the query upstream.
    """

    __slots__ = ("_a", "_aaaa", "_soa")

    def __init__(self) -> None:
        self._a = dnswire.record_a(IPv4Address("127.0.0.1"), _ANSWER_TTL)
        self._aaaa = dnswire.record_a(IPv6Address("::1"), _ANSWER_TTL)
        self._soa = {
            zone: dnswire.record_soa(zone, _NEGATIVE_TTL, _NEGATIVE_TTL) for zone in _SPECIAL
        }

    def answer(self, query: Query, client: str) -> bytes | None:
        qname = query.qname
        # One C-level suffix test is all a non-special name pays. A name such as
        # "xlocalhost." does not end with the length-prefixed label, so it is not caught.
        if not qname.endswith(_SPECIAL) or query.qclass != dnswire.CLASS_IN:
            return None
        if qname.endswith(_LOCALHOST):
            if query.qtype == dnswire.TYPE_A:
                wire = dnswire.build_response(
                    query, dnswire.RCODE_NOERROR, (self._a,), authoritative=True
                )
            elif query.qtype == dnswire.TYPE_AAAA:
                wire = dnswire.build_response(
                    query, dnswire.RCODE_NOERROR, (self._aaaa,), authoritative=True
                )
            else:  # the name exists, the type does not: NODATA with the zone's SOA
                wire = dnswire.build_response(
                    query, dnswire.RCODE_NOERROR, (), (self._soa[_LOCALHOST],), authoritative=True
                )
            return wire
        zone = _INVALID if qname.endswith(_INVALID) else _LOCAL
        return dnswire.build_response(
            query, dnswire.RCODE_NXDOMAIN, (), (self._soa[zone],), authoritative=True
        )
