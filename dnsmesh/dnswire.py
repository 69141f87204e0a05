"""DNS wire format for the agent's hot path: parse a query, build responses from pre-encoded RRs.

Only what a stub-facing resolver needs, written with struct and slicing because dnslib and
dnspython cost tens of microseconds per message; the agent must answer ~75k queries a second
on one core. Upstream responses are handled in ``dnsmesh.dnsforward``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple, NoReturn

from dnsmesh.cookies import OPTION_COOKIE
from dnsmesh.cookies import valid_length as valid_cookie_length
from dnsmesh.ecs import OPTION_ECS, ClientSubnet, EcsError, parse_ecs
from dnsmesh.errors import DnsmeshError

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16  # extended: upper 8 bits travel in the OPT TTL (RFC 6891 §6.1.3)

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_SVCB = 64
TYPE_HTTPS = 65
TYPE_ANY = 255

CLASS_IN = 1

OPCODE_QUERY = 0

# RFC 8914 Extended DNS Error codes the agent uses.
EDE_OTHER = 0
EDE_STALE_ANSWER = 3
EDE_NOT_READY = 14
EDE_PROHIBITED = 18
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_NETWORK_ERROR = 23
OPTION_EDE = 15

# Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010
_OPCODE_MASK = 0x7800
# What a response copies from the query: opcode, RD (RFC 1035 §4.1.1) and CD (RFC 4035 §3.2.2).
_ECHO_MASK = _OPCODE_MASK | FLAG_RD | FLAG_CD

# The payload we advertise and accept at most: the DNS Flag Day 2020 value, which avoids IP
# fragmentation on almost every path.
EDNS_PAYLOAD = 1232
_DO_BIT = 0x8000
_MAX_NAME = 255  # RFC 1035 §3.1, wire octets including the root label

HEADER = struct.Struct("!HHHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_OPT_FIXED = struct.Struct("!HHBBHH")  # type, payload, ext-rcode, version, flags, rdlen
_OPTION = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlen


class Query(NamedTuple):
    """A parsed client query: what the resolver pipeline needs, nothing more.

    A NamedTuple rather than a frozen dataclass: building it is on the per-query path and a
    frozen dataclass's ``__init__`` costs about five times as much.
    """

    id: int
    flags: int  # the header's flags word as received (RD/CD are echoed in responses)
    qname: bytes  # wire format, ASCII-lower-cased: the lookup key
    question: bytes  # the question section exactly as received (0x20 case preserved)
    qtype: int
    qclass: int
    edns_payload: int | None  # None: no OPT in the query; else the advertised payload size
    dnssec_ok: bool
    # The largest UDP response this client takes: 512 without EDNS (RFC 1035 §4.2.1), else
    # its payload clamped to [512, 1232] (RFC 6891 §6.2.5). A field computed once per
    # distinct question, not a property: a property call cost ~300 ns per query here.
    udp_limit: int = 512


def udp_limit_for(edns_payload: int | None) -> int:
    """``Query.udp_limit`` for a given advertised payload (None: no EDNS)."""
    if edns_payload is None:
        return 512
    return max(512, min(edns_payload, EDNS_PAYLOAD))


_new_query = tuple.__new__


class WithCookie(DnsmeshError):
    """Raised by ``parse_query`` for a good query that carries a COOKIE option (RFC 7873):
    ``query`` is the parse, ``cookie`` the first option's data (its length checked) and
    ``plain`` the packet without its COOKIE options, which parses as the query would
    without them.

    Raised rather than returned in a field so that a query without the option, nearly
    every one, pays nothing for cookies: such queries are never memoised, so the memo hit
    has no test to make, and a try costs nothing until it catches (CPython 3.11). The
    cookie path (agent/entry.py) answers ``plain`` and adds our cookie to the answer.
    """

    def __init__(self, query: Query, cookie: bytes, plain: bytes) -> None:
        super().__init__("a query with a COOKIE option")
        self.query = query
        self.cookie = cookie
        self.plain = plain


class WithEcs(DnsmeshError):
    """Raised by ``parse_query`` for a good query that carries an EDNS Client Subnet option
    (RFC 7871), as ``WithCookie`` is for a COOKIE: ``query`` is the parse, ``subnet`` the
    option (checked), ``plain`` the packet without it. A query with both raises
    ``WithCookie`` first, whose ``plain`` still holds the ECS option.

    Raised, not returned, for the reason ``WithCookie`` is: a query without the option
    pays nothing. The entry (agent/entry.py) answers a policy name for ``subnet`` when the
    sender is a trusted forwarder, and ``plain`` as any other query otherwise.
    """

    def __init__(self, query: Query, subnet: ClientSubnet, plain: bytes) -> None:
        super().__init__("a query with an ECS option")
        self.query = query
        self.subnet = subnet
        self.plain = plain


class MalformedQuery(DnsmeshError):
    """The packet is not a query we answer normally; ``reply`` is what to send, if anything."""

    def __init__(self, reason: str, reply: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


def _header_only(packet: bytes, rcode: int) -> bytes:
    """A reply with no sections, for a query whose question cannot (or need not) be echoed."""
    msg_id, flags = struct.unpack_from("!HH", packet)
    return HEADER.pack(msg_id, FLAG_QR | (flags & _ECHO_MASK) | FLAG_RA | rcode, 0, 0, 0, 0)


# Parsed question+OPT tails by their bytes: most traffic repeats the same few questions, and
# a dict hit skips the label walk, the slicing and the OPT checks. Only clean parses are
# stored; the table is cleared when full, so a flood of distinct names costs a re-parse each.
_Tail = tuple[bytes, bytes, int, int, int | None, bool, int]
_TAILS: dict[bytes, _Tail] = {}
TAIL_MEMO_LIMIT = 4096
# Only ordinary-sized queries are kept (a question is at most 259 octets, an OPT with a
# cookie ~30): big padded or TCP queries would let a client pin megabytes in the memo.
TAIL_MEMO_MAX_OCTETS = 512
# The same for the tails of queries with an ECS option, which ``_TAILS`` never holds (they
# raise WithEcs): the parse, the option, and the tail of the packet without it. A trusted
# forwarder sends the same few (question, network) pairs over and over, and a hit here
# skips the parse, the option's checks and the rebuilt packet. Cleared when full, as
# ``_TAILS`` is, and kept to the same sizes: a flood of networks costs a re-parse each.
_EcsTail = tuple[_Tail, ClientSubnet, bytes]
_ECS_TAILS: dict[bytes, _EcsTail] = {}
ECS_MEMO_LIMIT = 4096


def parse_query(packet: bytes) -> Query:
    """Parse a client query: the header, the one question, and an OPT right after it.

    Raises MalformedQuery (and nothing else) for anything we will not answer normally:
    its ``reply`` is None when silence is right (no readable header, or a response, which
    must never be answered so that two resolvers cannot loop), else FORMERR/NOTIMP/BADVERS.
    """
    if len(packet) < 12:
        raise MalformedQuery("shorter than a DNS header")
    msg_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(packet)
    if flags & 0xF800 or qdcount != 1 or ancount or nscount or arcount > 1:
        _reject_header(packet, flags)
    # The key starts at ARCOUNT's low octet: the same bytes parse differently with and
    # without an additional record (the high octet is 0, checked above).
    tail = packet[11:]
    parsed = _TAILS.get(tail)
    if parsed is None:
        known = _ECS_TAILS.get(tail)
        if known is not None:
            query = _new_query(Query, (msg_id, flags) + known[0])
            raise WithEcs(query, known[1], packet[:11] + known[2])
        parsed, cookie, ecs = _parse_tail(packet, arcount)
        if cookie is not None:  # never memoised: see WithCookie
            raise WithCookie(_new_query(Query, (msg_id, flags) + parsed), *cookie)  # noqa: RUF005
        if ecs is not None:  # memoised apart: see _ECS_TAILS
            _keep_ecs_tail(tail, parsed, *ecs)
            raise WithEcs(_new_query(Query, (msg_id, flags) + parsed), *ecs)  # noqa: RUF005
        if len(tail) <= TAIL_MEMO_MAX_OCTETS:
            if len(_TAILS) >= TAIL_MEMO_LIMIT:
                _TAILS.clear()
            _TAILS[tail] = parsed
    # concatenation, not (msg_id, flags, *parsed): measured ~50 ns cheaper per query
    return _new_query(Query, (msg_id, flags) + parsed)  # noqa: RUF005


def _keep_ecs_tail(tail: bytes, parsed: _Tail, subnet: ClientSubnet, plain: bytes) -> None:
    """Memoise an ECS query's parse; ``plain`` from offset 11 on is the same for every
    packet with this tail (the ID and flags before it are the packet's own)."""
    if len(tail) <= TAIL_MEMO_MAX_OCTETS:
        if len(_ECS_TAILS) >= ECS_MEMO_LIMIT:
            _ECS_TAILS.clear()
        _ECS_TAILS[tail] = (parsed, subnet, plain[11:])


def _reject_header(packet: bytes, flags: int) -> NoReturn:
    if flags & FLAG_QR:
        raise MalformedQuery("a response, not a query")
    if flags & _OPCODE_MASK:
        raise MalformedQuery("opcode not implemented", _header_only(packet, RCODE_NOTIMP))
    raise MalformedQuery("not exactly one question", _header_only(packet, RCODE_FORMERR))


_Cookie = tuple[bytes, bytes] | None  # a COOKIE option's data, the packet without it
_Subnet = tuple[ClientSubnet, bytes] | None  # an ECS option, the packet without it


def _parse_tail(packet: bytes, arcount: int) -> tuple[_Tail, _Cookie, _Subnet]:
    """(qname, question, qtype, qclass, edns_payload, dnssec_ok, udp_limit) after the
    header; the COOKIE option's data and the packet without it, when there is one; the
    ECS option and the packet without it, when there is one."""
    size = len(packet)
    # Walk the question name. A query has nothing before its question to point at, so a
    # compression pointer (or an extended label type, RFC 6891 §5) here is malformed.
    pos = 12
    try:
        length = packet[12]
        while length:
            if length > 63:
                raise MalformedQuery(
                    "pointer or bad label in question", _header_only(packet, RCODE_FORMERR)
                )
            pos += length + 1
            length = packet[pos]
    except IndexError:
        raise MalformedQuery(
            "question runs past the end", _header_only(packet, RCODE_FORMERR)
        ) from None
    name_end = pos + 1
    end = name_end + 4
    if end > size or name_end - 12 > _MAX_NAME:
        raise MalformedQuery("truncated or overlong question", _header_only(packet, RCODE_FORMERR))
    qtype, qclass = _TYPE_CLASS.unpack_from(packet, name_end)
    qname = packet[12:name_end].lower()
    question = packet[12:end]
    if arcount == 0:
        if end != size:
            raise MalformedQuery("trailing bytes", _header_only(packet, RCODE_FORMERR))
        return (qname, question, qtype, qclass, None, False, 512), None, None
    payload, dnssec_ok, cookie, ecs = _parse_opt(packet, end, question)
    parsed = (qname, question, qtype, qclass, payload, dnssec_ok, udp_limit_for(payload))
    return parsed, cookie, ecs


def _parse_opt(packet: bytes, end: int, question: bytes) -> tuple[int, bool, _Cookie, _Subnet]:
    """The query's one additional record must be an OPT (RFC 6891 §6.1.1) ending the packet."""
    size = len(packet)
    if end + 11 > size or packet[end] != 0:
        raise MalformedQuery("additional record is not an OPT", _header_only(packet, RCODE_FORMERR))
    rtype, payload, _ext_rcode, version, opt_flags, rdlen = _OPT_FIXED.unpack_from(packet, end + 1)
    rdata = end + 11
    if rtype != TYPE_OPT or rdata + rdlen != size:
        raise MalformedQuery("bad OPT record", _header_only(packet, RCODE_FORMERR))
    pos = rdata
    cookie = None
    subnet = None
    others = []  # the options but COOKIE, for the packet without it
    no_ecs = []  # the options but ECS, for the packet without it
    while pos < size:  # each option must fit exactly (RFC 6891 §6.1.2)
        if pos + 4 > size:
            raise MalformedQuery("bad EDNS option", _header_only(packet, RCODE_FORMERR))
        code, length = _OPTION.unpack_from(packet, pos)
        option = packet[pos : pos + 4 + length]
        if code != OPTION_COOKIE:
            others.append(option)
        elif cookie is None:  # only the first counts (RFC 7873 §5.2), the others go too
            cookie = packet[pos + 4 : pos + 4 + length]
            if not valid_cookie_length(len(cookie)):
                raise MalformedQuery("malformed COOKIE option", _formerr_with_opt(packet, question))
        if code != OPTION_ECS:
            no_ecs.append(option)
        else:
            subnet = _parse_subnet(packet, question, option[4:], subnet)
        pos += 4 + length
    if pos != size:
        raise MalformedQuery("bad EDNS option", _header_only(packet, RCODE_FORMERR))
    if version:
        # RFC 6891 §6.1.3: answer BADVERS with our OPT (version 0) and the question.
        msg_id, flags = struct.unpack_from("!HH", packet)
        reply = HEADER.pack(msg_id, FLAG_QR | (flags & _ECHO_MASK) | FLAG_RA, 1, 0, 0, 1)
        opt = _OPT_FIXED.pack(TYPE_OPT, EDNS_PAYLOAD, RCODE_BADVERS >> 4, 0, 0, 0)
        raise MalformedQuery("unsupported EDNS version", reply + question + b"\x00" + opt)
    dnssec_ok = bool(opt_flags & _DO_BIT)
    if cookie is not None:
        return payload, dnssec_ok, (cookie, _with_options(packet, end, others)), None
    if subnet is not None:
        return payload, dnssec_ok, None, (subnet, _with_options(packet, end, no_ecs))
    return payload, dnssec_ok, None, None


def _parse_subnet(
    packet: bytes, question: bytes, data: bytes, seen: ClientSubnet | None
) -> ClientSubnet:
    """An ECS option's data checked (RFC 7871 §6); a malformed one, or a second one (a
    query is about one client), is FORMERR with the question and our OPT."""
    if seen is not None:
        raise MalformedQuery("more than one ECS option", _formerr_with_opt(packet, question))
    try:
        return parse_ecs(data)
    except EcsError as exc:
        raise MalformedQuery(str(exc), _formerr_with_opt(packet, question)) from None


def _with_options(packet: bytes, end: int, options: list[bytes]) -> bytes:
    """The packet with its OPT's options replaced by ``options`` (the OPT ends it)."""
    kept = b"".join(options)
    return packet[: end + 9] + struct.pack("!H", len(kept)) + kept


def parse_query_and_cookie(packet: bytes) -> tuple[Query, bytes | None]:
    """``parse_query`` for the paths off the hot one: the query and its COOKIE option's
    data (None without one); an ECS option plays no part there. Raises MalformedQuery
    like it."""
    try:
        return parse_query(packet), None
    except WithCookie as found:
        return found.query, found.cookie
    except WithEcs as found:
        return found.query, None


def _formerr_with_opt(packet: bytes, question: bytes) -> bytes:
    """FORMERR with the question and our OPT: for a query whose EDNS we read but whose
    option is malformed, so the client sees that EDNS itself is understood."""
    msg_id, flags = struct.unpack_from("!HH", packet)
    header = HEADER.pack(
        msg_id, FLAG_QR | (flags & _ECHO_MASK) | FLAG_RA | RCODE_FORMERR, 1, 0, 0, 1
    )
    return header + question + OPT_PLAIN


def name_to_wire(text: str) -> bytes:
    """'a.b.c' (ASCII, as normalize_domain gives it) -> wire format; '' or '.' is the root."""
    text = text.rstrip(".")
    if not text:
        return b"\x00"
    out = bytearray()
    for label in text.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise ValueError(f"bad label {label!r} in {text!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > _MAX_NAME:
        raise ValueError(f"{text!r} is longer than 255 octets on the wire")
    return bytes(out)


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*")


def name_to_text(qname: bytes) -> str:
    """Wire name (no compression) -> presentation text 'a.b.c', '.' for the root.

    Bytes outside letters/digits/-/_/* are escaped as \\DDD (RFC 1035 §5.1) so that a log line
    never carries control characters from the network.
    """
    labels: list[str] = []
    pos = 0
    size = len(qname)
    while pos < size:
        length = qname[pos]
        if length == 0 or length > 63:
            break
        label = qname[pos + 1 : pos + 1 + length]
        if all(c in _PLAIN for c in label):
            labels.append(label.decode("ascii"))
        else:
            labels.append("".join(chr(c) if c in _PLAIN else f"\\{c:03d}" for c in label))
        pos += 1 + length
    return ".".join(labels) if labels else "."


def build_opt(dnssec_ok: bool, ede: tuple[int, str] | None = None, ext_rcode: int = 0) -> bytes:
    """Our OPT RR: payload 1232, version 0, DO echoed, an optional EDE option (RFC 8914 §2)."""
    options = b""
    if ede is not None:
        text = ede[1].encode("utf-8")
        options = _OPTION.pack(OPTION_EDE, 2 + len(text)) + struct.pack("!H", ede[0]) + text
    fixed = _OPT_FIXED.pack(
        TYPE_OPT, EDNS_PAYLOAD, ext_rcode >> 4, 0, _DO_BIT if dnssec_ok else 0, len(options)
    )
    return b"\x00" + fixed + options


OPT_PLAIN = build_opt(False)
OPT_DO = build_opt(True)


def build_response(
    query: Query,
    rcode: int,
    answers: Sequence[bytes] = (),
    authority: Sequence[bytes] = (),
    *,
    authoritative: bool = False,
    ede: tuple[int, str] | None = None,
) -> bytes:
    """A response to ``query``: its ID and question bytes, RA set, the given pre-encoded RRs.

    An OPT is added only when the query had one (RFC 6891 §7); extended rcodes (>15) put their
    upper bits there.
    """
    flags = FLAG_QR | FLAG_RA | (query.flags & _ECHO_MASK) | (rcode & 0xF)
    if authoritative:
        flags |= FLAG_AA
    if query.edns_payload is None:
        opt = b""
    elif ede is None and rcode < 16:
        opt = OPT_DO if query.dnssec_ok else OPT_PLAIN
    else:
        opt = build_opt(query.dnssec_ok, ede, rcode)
    header = HEADER.pack(query.id, flags, 1, len(answers), len(authority), 1 if opt else 0)
    return b"".join((header, query.question, *answers, *authority, opt))


def build_error(query: Query, rcode: int, ede: tuple[int, str] | None = None) -> bytes:
    """An answerless response (SERVFAIL, REFUSED ...) with an optional EDE."""
    return build_response(query, rcode, ede=ede)


_A_FIXED = struct.Struct("!HHHIH")  # pointer, type, class, ttl, rdlen


def record_a(address: IPv4Address | IPv6Address, ttl: int) -> bytes:
    """An A or AAAA RR owned by the question name (pointer 0xC00C, RFC 1035 §4.1.4)."""
    rtype = TYPE_A if address.version == 4 else TYPE_AAAA
    packed = address.packed
    return _A_FIXED.pack(0xC00C, rtype, CLASS_IN, ttl, len(packed)) + packed


_SOA_TIMERS = struct.Struct("!IIIII")


def record_soa(zone: bytes, ttl: int, minimum: int, *, serial: int = 1) -> bytes:
    """A synthesised SOA for ``zone`` (wire format) to put in a NODATA authority (RFC 2308 §3).

    The primary is the zone itself and the mailbox hostmaster.<zone>; the timers matter to no
    one (nothing transfers this zone) except MINIMUM, the negative-caching TTL.
    """
    rname = b"\x0ahostmaster" + zone
    if len(rname) > _MAX_NAME:
        rname = b"\x00"
    return _soa(zone, zone, rname, ttl, minimum, serial)


_QUESTION_NAME = b"\xc0\x0c"  # a pointer to the question's name (RFC 1035 §4.1.4)


def record_soa_at_question(ttl: int, minimum: int, *, serial: int = 1) -> bytes:
    """An SOA like ``record_soa``'s, owned by whatever name the question asks for.

    Pointers make one encoding fit every query name, which a wildcard policy needs: each
    name it answers is its own apex, since the suffix above it is not the agent's to serve.
    """
    rname = b"\x0ahostmaster" + _QUESTION_NAME
    return _soa(_QUESTION_NAME, _QUESTION_NAME, rname, ttl, minimum, serial)


def _soa(owner: bytes, mname: bytes, rname: bytes, ttl: int, minimum: int, serial: int) -> bytes:
    rdata = mname + rname + _SOA_TIMERS.pack(serial & 0xFFFFFFFF, 3600, 600, 86400, minimum)
    return owner + _RR_FIXED.pack(TYPE_SOA, CLASS_IN, ttl, len(rdata)) + rdata


def skip_name(packet: bytes, pos: int) -> int:
    """The offset after a (possibly compressed) name at ``pos``; IndexError/ValueError if bad."""
    while True:
        length = packet[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            if pos + 2 > len(packet):
                raise IndexError("pointer past the end")
            return pos + 2
        if length > 63:
            raise ValueError("extended label type")
        pos += length + 1


def fit_udp(response: bytes, limit: int) -> bytes:
    """``response`` if it fits in ``limit`` octets, else a truncated copy (RFC 1035 §4.2.1).

    The copy keeps header (with TC=1) and question, drops every record except the OPT
    (RFC 6891 §7: a truncated response still carries it), so the client retries over TCP.
    """
    if len(response) <= limit:
        return response
    msg_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(response)
    pos = 12
    for _ in range(qdcount):
        pos = skip_name(response, pos) + 4
    question_end = pos
    opt = b""
    for index in range(ancount + nscount + arcount):
        start = pos
        pos = skip_name(response, pos)
        rtype, _rclass, _ttl, rdlen = _RR_FIXED.unpack_from(response, pos)
        pos += 10 + rdlen
        if rtype == TYPE_OPT and index >= ancount + nscount:
            opt = response[start:pos]
            break
    header = HEADER.pack(msg_id, flags | FLAG_TC, qdcount, 0, 0, 1 if opt else 0)
    return header + response[12:question_end] + opt


_BARE_OPTS = (OPT_PLAIN, OPT_DO)
_RDLEN = struct.Struct("!H")


def add_option_to_own(response: bytes, option: bytes) -> bytes:
    """``add_option`` for one of our own answers to a query with EDNS, with ``option``
    whole (code, length, data): those end with our OPT, so when it is bare (no option
    yet, the usual case) the option is appended and the OPT's RDLEN, its last two octets,
    set, without walking the records; any other is handed to ``add_option``. Only for
    our answers: a response from elsewhere may end in anything."""
    if response[-11:] in _BARE_OPTS:
        return b"".join((response[:-2], _RDLEN.pack(len(option)), option))
    code, _length = _OPTION.unpack_from(option)
    return add_option(response, code, option[4:])


def add_option(response: bytes, code: int, data: bytes) -> bytes:
    """``response`` with one more EDNS option in its OPT (a server cookie, RFC 7873 §5.2).

    Our responses end with their OPT, so this is an append and a length patch; an OPT
    elsewhere in the additional section is extended in place, and a response without one
    gets ours (a query carrying an option had EDNS, so its answer must too).
    """
    option = _OPTION.pack(code, len(data)) + data
    msg_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(response)
    pos = 12
    for _ in range(qdcount):
        pos = skip_name(response, pos) + 4
    for index in range(ancount + nscount + arcount):
        start = pos
        pos = skip_name(response, pos)
        rtype, _rclass, _ttl, rdlen = _RR_FIXED.unpack_from(response, pos)
        end = pos + 10 + rdlen
        if rtype == TYPE_OPT and index >= ancount + nscount:
            head = response[start : pos + 8] + struct.pack("!H", rdlen + len(option))
            return response[:start] + head + response[pos + 10 : end] + option + response[end:]
        pos = end
    header = HEADER.pack(msg_id, flags, qdcount, ancount, nscount, arcount + 1)
    opt = _OPT_FIXED.pack(TYPE_OPT, EDNS_PAYLOAD, 0, 0, 0, len(option))
    return header + response[12:] + b"\x00" + opt + option
