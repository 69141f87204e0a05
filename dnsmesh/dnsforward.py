"""Forwarding on the wire: our upstream query, the checked upstream answer, the client's copy.

An upstream response is walked once when it arrives (off the hot path) and kept as the
bytes after its question plus the offsets of every TTL. A cache hit then costs one header,
the client's own question bytes, and a TTL patch per record (``build_forwarded_response``).
Compression pointers inside the kept sections stay valid because the client's question has
the same length as ours: the cache is keyed by the lower-cased name, so only case differs.

0x20 (draft-vixie-dnsext-dns0x20): the name we send upstream has the case of each letter
picked at random (``randomize_case``) and a reply must echo it byte for byte, which adds a
bit of entropy per letter to the ID and port a forger must guess. Labels without letters
(``1.2.3.4.in-addr.arpa`` has six) carry few or none of these bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from dnsmesh.cookies import OPTION_COOKIE
from dnsmesh.dnswire import (
    EDE_STALE_ANSWER,
    FLAG_AD,
    FLAG_CD,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    HEADER,
    OPT_DO,
    OPT_PLAIN,
    OPTION_EDE,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    TYPE_OPT,
    TYPE_SOA,
    Query,
    add_option,
    build_opt,
    skip_name,
)
from dnsmesh.errors import DnsmeshError

# RFC 8767 §4: cap what we keep, so one odd upstream TTL cannot pin a record for weeks.
MAX_CACHE_TTL = 604800
# RFC 2181 §8: a TTL with the top bit set is to be read as zero.
_MAX_TTL = 0x7FFFFFFF

_RR_FIXED = struct.Struct("!HHIH")
_OPTION = struct.Struct("!HH")
_EDE_INFO = struct.Struct("!H")
# 0x20 for an ASCII letter, 0 for any other byte; label length bytes (at most 63) are never
# letters (65-90, 97-122), so a whole wire name can be masked at once.
_LETTER_BITS = bytes(0x20 if chr(b).isascii() and chr(b).isalpha() else 0 for b in range(256))
_TYPE_CLASS = struct.Struct("!HH")
_TTL = struct.Struct("!I")
_OPCODE_MASK = 0x7800
_QUERY_OPT = OPT_PLAIN  # payload 1232, DO=0: we do not validate, so we do not ask for RRSIGs
_STALE_OPT_PLAIN = build_opt(False, (EDE_STALE_ANSWER, ""))
_STALE_OPT_DO = build_opt(True, (EDE_STALE_ANSWER, ""))


class BadUpstreamResponse(DnsmeshError):
    """An upstream packet is not a well-formed answer to the query we sent."""


class CaseMismatch(BadUpstreamResponse):
    """Our ID and question but for letter case: an upstream that does not keep the case we
    sent (0x20), or a forger who guessed the ID. Either way, ask again over TCP."""


def build_question(qname: bytes, qtype: int, qclass: int) -> bytes:
    """The question section for a wire name: what ``parse_upstream_response`` compares."""
    return qname + _TYPE_CLASS.pack(qtype, qclass)


def randomize_case(qname: bytes, noise: bytes) -> bytes:
    """``qname`` with the case of each letter flipped where bit 5 of ``noise`` is set.

    ``noise`` is random bytes, at least as many as the name (the caller owns randomness, so
    this stays pure); non-letters and the label lengths are never touched.
    """
    size = len(qname)
    flips = int.from_bytes(qname.translate(_LETTER_BITS), "big") & int.from_bytes(
        noise[:size], "big"
    )
    return (int.from_bytes(qname, "big") ^ flips).to_bytes(size, "big")


def build_upstream_query(
    qname: bytes, qtype: int, qclass: int, msg_id: int, cookie: bytes = b""
) -> bytes:
    """Our query to an upstream: RD=1, EDNS0 with payload 1232 (RFC 6891), DO clear, and
    a COOKIE option when ``cookie`` (its data) is given (``--upstream-cookies``)."""
    query = HEADER.pack(msg_id, FLAG_RD, 1, 0, 0, 1) + qname + _TYPE_CLASS.pack(qtype, qclass)
    if not cookie:
        return query + _QUERY_OPT
    return add_option(query + _QUERY_OPT, OPTION_COOKIE, cookie)


def response_option(packet: bytes, code: int) -> bytes | None:
    """The data of the first ``code`` option in a response's OPT; None when it has none
    (or its records do not parse: such a packet is refused by ``parse_upstream_response``)."""
    try:
        _id, _flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(packet)
        pos = 12
        for _ in range(qdcount):
            pos = skip_name(packet, pos) + 4
        for index in range(ancount + nscount + arcount):
            pos = skip_name(packet, pos)
            rtype, _rclass, _ttl, rdlen = _RR_FIXED.unpack_from(packet, pos)
            pos += 10
            end = pos + rdlen
            if rtype == TYPE_OPT and index >= ancount + nscount:
                while pos + 4 <= end:
                    option, length = _OPTION.unpack_from(packet, pos)
                    if option == code and pos + 4 + length <= end:
                        return packet[pos + 4 : pos + 4 + length]
                    pos += 4 + length
                return None
            pos = end
    except (IndexError, ValueError, struct.error):
        pass
    return None


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """An upstream response reduced to what a cached answer needs."""

    rcode: int  # may be extended (> 15) when the upstream OPT carried upper bits
    flags: int  # the upstream header flags word
    sections: bytes  # answer + authority + additional after the question, OPT removed
    ancount: int
    nscount: int
    arcount: int  # additional records in ``sections`` (the OPT is not counted)
    ttl_offsets: tuple[int, ...]  # offset of every RR's TTL within ``sections``
    cache_ttl: int  # seconds it may be cached; 0 = do not cache
    truncated: bool  # TC was set: ask again over TCP; sections are then empty
    ttls: tuple[int, ...] = ()  # the TTL at each offset as received (top bit set -> 0)
    # The upstream itself answered stale (EDE 3, RFC 8914): relayed as stale, never cached.
    relayed_stale: bool = False
    # Built client responses minus ID and question, by age and the query bits they depend
    # on (see build_forwarded_response). A cache, invisible to equality; the only mutable part.
    _responses: dict[int, tuple[bytes, bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )


def _bad(reason: str) -> BadUpstreamResponse:
    return BadUpstreamResponse(reason)


def parse_upstream_response(
    packet: bytes,
    msg_id: int,
    question: bytes,
    *,
    restore_name: bytes | None = None,
    max_ttl: int = MAX_CACHE_TTL,
    exact_case: bool = True,
) -> UpstreamAnswer:
    """Check and reduce an upstream response; raises BadUpstreamResponse and nothing else.

    Accepted only if the ID matches, QR=1, the opcode is QUERY and the one question equals
    ours byte for byte, case included (RFC 5452 §9.1 and 0x20: anything else may be a
    spoofing attempt). ``restore_name`` (the name as cached, when we sent it with random
    case) replaces our cased name where the upstream copied it into the records instead of
    pointing at the question. Every TTL is capped at ``max_ttl``. A question that differs
    only in case raises CaseMismatch, unless ``exact_case`` is off (over TCP, which an
    off-path forger cannot answer).
    """
    size = len(packet)
    if size < 12:
        raise _bad("shorter than a DNS header")
    rid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(packet)
    if rid != msg_id:
        raise _bad("ID does not match")
    if not flags & FLAG_QR or flags & _OPCODE_MASK:
        raise _bad("not a response to a standard query")
    if qdcount != 1:
        raise _bad("not exactly one question")
    start = 12 + len(question)
    echoed = packet[12:start]
    if echoed != question:
        # The name compares case-insensitively here, type and class exactly: lower() would
        # also fold type octets such as 0x41 (HTTPS) into 0x61.
        if echoed[-4:] != question[-4:] or echoed[:-4].lower() != question[:-4].lower():
            raise _bad("question does not match ours")
        if exact_case:
            raise CaseMismatch("question differs from ours in letter case (0x20)")
    rcode = flags & 0xF
    if flags & FLAG_TC:
        return UpstreamAnswer(rcode, flags, b"", 0, 0, 0, (), 0, True)
    try:
        answer = _walk(packet, flags, rcode, start, ancount, nscount, arcount, max_ttl)
    except (IndexError, ValueError, struct.error) as exc:
        raise _bad(f"malformed records: {exc}") from None
    sent_name = question[:-4]
    if restore_name is not None and restore_name != sent_name and sent_name in answer.sections:
        # Same length, so every offset and compression pointer stays valid.
        answer = replace(answer, sections=answer.sections.replace(sent_name, restore_name))
    return answer


def _says_stale(packet: bytes, pos: int, end: int) -> bool:
    """Whether the OPT rdata in ``packet[pos:end]`` holds EDE 3 (Stale Answer)."""
    while pos + 4 <= end:
        code, length = _OPTION.unpack_from(packet, pos)
        pos += 4
        if (
            code == OPTION_EDE
            and length >= 2
            and _EDE_INFO.unpack_from(packet, pos)[0] == EDE_STALE_ANSWER
        ):
            return True
        pos += length
    return False


def _walk(
    packet: bytes,
    flags: int,
    rcode: int,
    start: int,
    ancount: int,
    nscount: int,
    arcount: int,
    max_ttl: int,
) -> UpstreamAnswer:
    size = len(packet)
    offsets: list[int] = []
    ttls: list[int] = []
    min_answer = MAX_CACHE_TTL
    negative_ttl = -1  # from the authority SOA, -1 while none seen
    pos = start
    end_kept = start
    kept_additional = 0
    relayed_stale = False
    capped: list[int] = []  # offsets (in packet) of TTLs above max_ttl
    total = ancount + nscount + arcount
    for index in range(total):
        record = pos
        pos = skip_name(packet, pos)
        if pos + 10 > size:
            raise ValueError("record header past the end")
        rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(packet, pos)
        rdata = pos + 10
        end = rdata + rdlen
        if end > size:
            raise ValueError("rdata past the end")
        if rtype == TYPE_OPT:
            if index < ancount + nscount or packet[record] != 0:
                raise ValueError("OPT outside the additional section or not owned by root")
            rcode |= (ttl >> 24) << 4  # RFC 6891 §6.1.3: upper 8 bits of the rcode
            relayed_stale = _says_stale(packet, rdata, end)
            # Drop the OPT and every record after it: removing bytes would break compression
            # pointers into what follows, and additional data is only a hint (RFC 2181 §5.4.1).
            break
        if ttl > _MAX_TTL:
            ttl = 0
        elif ttl > max_ttl:
            ttl = max_ttl
            capped.append(pos + 4)
        offsets.append(pos + 4 - start)
        ttls.append(ttl)
        if index < ancount:
            min_answer = min(min_answer, ttl)
        elif index < ancount + nscount:
            if rtype == TYPE_SOA and negative_ttl < 0 and rdlen >= 22:
                # RFC 2308 §5: negative answers live min(SOA TTL, SOA MINIMUM) seconds.
                minimum = _TTL.unpack_from(packet, end - 4)[0]
                negative_ttl = min(ttl, minimum if minimum <= _MAX_TTL else 0)
        else:
            kept_additional += 1
        pos = end
        end_kept = end
    if rcode == RCODE_NOERROR and ancount:
        cache_ttl = min_answer
    elif rcode in (RCODE_NOERROR, RCODE_NXDOMAIN):
        cache_ttl = max(negative_ttl, 0)  # no SOA: do not cache (RFC 2308 §5)
    else:
        cache_ttl = 0
    sections = packet[start:end_kept]
    if capped:  # the client must see the capped TTL too, not only the cache
        patched = bytearray(packet)
        for offset in capped:
            _TTL.pack_into(patched, offset, max_ttl)
        sections = bytes(patched[start:end_kept])
    return UpstreamAnswer(
        rcode=rcode,
        flags=flags,
        sections=sections,
        ancount=ancount,
        nscount=nscount,
        arcount=kept_additional,
        ttl_offsets=tuple(offsets),
        # An answer the upstream itself served stale must not become fresh here.
        cache_ttl=0 if relayed_stale else min(cache_ttl, max_ttl),
        truncated=False,
        ttls=tuple(ttls),
        relayed_stale=relayed_stale,
    )


_pack_ttl = _TTL.pack_into


def _count_down(answer: UpstreamAnswer, age: int) -> bytes:
    """``answer.sections`` with every TTL lowered by ``age`` seconds, floored at 0."""
    sections = answer.sections
    patched = bytearray(sections)
    ttls = answer.ttls or tuple(
        _TTL.unpack_from(sections, offset)[0] for offset in answer.ttl_offsets
    )
    for offset, ttl in zip(answer.ttl_offsets, ttls, strict=True):
        _pack_ttl(patched, offset, ttl - age if ttl > age else 0)
    return bytes(patched)


_ID = struct.Struct("!H")
_REST = struct.Struct("!HHHHH")  # the header after the ID: flags and the four counts
_RESPONSE_MEMO_LIMIT = 32


def build_forwarded_response(
    query: Query, answer: UpstreamAnswer, age: int, stale_ttl: int | None = None
) -> bytes:
    """The client's response from a (cached) upstream answer.

    The client's ID, flags it set (RD, CD) and question bytes; the upstream's rcode and
    records with every TTL lowered by ``age`` seconds (floored at 0), or set to
    ``stale_ttl`` when serving stale (RFC 8767 §4, with EDE 3 when the client has EDNS).
    AA is clear (we are not the authority); AD is passed on only to a client that asked
    with DO or AD (RFC 6840 §5.7).

    Everything but the ID and the question depends only on the answer, ``age`` and four
    bits of the query, so it is built once per answer and age and kept on the answer: a
    cache hit then costs one dict probe and one join.
    """
    msg_id, query_flags, _qname, question, _qtype, _qclass, payload, dnssec_ok, _limit = query
    if stale_ttl is None:
        key = (
            (age << 11)
            | (query_flags & (FLAG_RD | FLAG_CD | FLAG_AD))
            | (0x400 if payload is None else 0)
            | (0x200 if dnssec_ok else 0)
        )
        memo = answer._responses
        built = memo.get(key)
        if built is None:
            built = _build_rest(query_flags, payload, dnssec_ok, answer, age, None)
            if len(memo) >= _RESPONSE_MEMO_LIMIT:
                memo.clear()
            memo[key] = built
    else:
        built = _build_rest(query_flags, payload, dnssec_ok, answer, age, stale_ttl)
    return b"".join((_ID.pack(msg_id), built[0], question, built[1]))


def _build_rest(
    query_flags: int,
    payload: int | None,
    dnssec_ok: bool,
    answer: UpstreamAnswer,
    age: int,
    stale_ttl: int | None,
) -> tuple[bytes, bytes]:
    """(header after the ID, records + OPT) of a forwarded response."""
    rcode = answer.rcode
    flags = FLAG_QR | FLAG_RA | (query_flags & (FLAG_RD | FLAG_CD)) | (rcode & 0xF)
    if answer.flags & FLAG_AD and (dnssec_ok or query_flags & FLAG_AD):
        flags |= FLAG_AD
    if answer.truncated:
        flags |= FLAG_TC  # no records were kept: the client must ask again over TCP
    sections = answer.sections
    if stale_ttl is not None:
        patched = bytearray(sections)
        for offset in answer.ttl_offsets:
            _pack_ttl(patched, offset, stale_ttl)
        sections = bytes(patched)
    elif age > 0:
        sections = _count_down(answer, age)
    arcount = answer.arcount
    if payload is None:
        opt = b""
    else:
        arcount += 1
        if stale_ttl is not None or answer.relayed_stale:
            opt = _STALE_OPT_DO if dnssec_ok else _STALE_OPT_PLAIN
        elif rcode > 15:
            opt = build_opt(dnssec_ok, None, rcode)
        else:
            opt = OPT_DO if dnssec_ok else OPT_PLAIN
    rest = _REST.pack(flags, 1, answer.ancount, answer.nscount, arcount)
    return rest, sections + opt
