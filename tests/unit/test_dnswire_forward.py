"""dnsforward: our upstream query, checking upstream answers, the client's (cached) copy."""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from dnsmesh.dnsforward import (
    MAX_CACHE_TTL,
    BadUpstreamResponse,
    UpstreamAnswer,
    build_forwarded_response,
    build_question,
    build_upstream_query,
    parse_upstream_response,
)
from dnsmesh.dnswire import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_SERVFAIL,
    TYPE_A,
    fit_udp,
    name_to_wire,
    parse_query,
)

QNAME = name_to_wire("www.example.com")
QUESTION = build_question(QNAME, TYPE_A, 1)
MSG_ID = 4242


def upstream_query() -> dns.message.Message:
    return dns.message.from_wire(build_upstream_query(QNAME, TYPE_A, 1, MSG_ID))


def upstream_response(
    *rrsets: tuple[str, str, int, str, list[str]],
    rcode: int = RCODE_NOERROR,
    edns: bool = True,
    ad: bool = False,
) -> bytes:
    """rrsets: (section, name, ttl, type, rdatas)."""
    response = dns.message.make_response(upstream_query())
    response.set_rcode(rcode)
    if not edns:
        response.use_edns(False)
    if ad:
        response.flags |= dns.flags.AD
    for section, name, ttl, rdtype, rdatas in rrsets:
        rrset = dns.rrset.from_text(name, ttl, "IN", rdtype, *rdatas)
        getattr(response, section).append(rrset)
    return response.to_wire()


def client_query(name: str = "WWW.example.COM", *, edns: bool = True, dnssec: bool = False):
    if edns or dnssec:
        message = dns.message.make_query(name, "A", use_edns=0, want_dnssec=dnssec)
    else:
        message = dns.message.make_query(name, "A", use_edns=False)
    message.id = 777
    return parse_query(message.to_wire())


SOA_TEXT = "ns.example.com. host.example.com. 1 3600 600 86400 60"


def test_upstream_query_is_rd_with_edns_1232_and_no_do() -> None:
    message = upstream_query()
    assert message.id == MSG_ID
    assert message.flags & dns.flags.RD
    assert message.edns == 0 and message.payload == 1232
    assert not message.ednsflags & dns.flags.DO
    assert str(message.question[0].name) == "www.example.com."
    assert message.question[0].rdtype == dns.rdatatype.A


def test_answer_with_cname_chain() -> None:
    wire = upstream_response(
        ("answer", "www.example.com.", 300, "CNAME", ["web.example.com."]),
        ("answer", "web.example.com.", 60, "A", ["192.0.2.1", "192.0.2.2"]),
        ("additional", "web.example.com.", 90, "AAAA", ["2001:db8::1"]),
    )
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    assert answer.rcode == RCODE_NOERROR
    assert (answer.ancount, answer.nscount, answer.arcount) == (3, 0, 1)
    assert answer.cache_ttl == 60  # the smallest answer TTL
    assert answer.ttls == (300, 60, 60, 90)
    assert len(answer.ttl_offsets) == 4
    for offset, ttl in zip(answer.ttl_offsets, answer.ttls, strict=True):
        assert struct.unpack_from("!I", answer.sections, offset)[0] == ttl
    assert not answer.truncated
    assert b"\x00\x00\x29" not in answer.sections[-11:]  # the upstream OPT is gone


def test_question_must_echo_our_case_byte_for_byte() -> None:
    # 0x20: the case we sent is part of what a forger must guess.
    wire = bytearray(upstream_response(("answer", "www.example.com.", 5, "A", ["192.0.2.1"])))
    wire[13:16] = b"WwW"
    with pytest.raises(BadUpstreamResponse, match="question"):
        parse_upstream_response(bytes(wire), MSG_ID, QUESTION)
    cased = build_question(name_to_wire("WwW.example.com"), TYPE_A, 1)
    assert parse_upstream_response(bytes(wire), MSG_ID, cased).ancount == 1


def _mutate(wire: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(wire)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = upstream_response(("answer", "www.example.com.", 5, "A", ["192.0.2.1"]))


@pytest.mark.parametrize(
    "packet",
    [
        GOOD[:11],
        _mutate(GOOD, 0, "!H", MSG_ID + 1),  # wrong ID
        _mutate(GOOD, 2, "!H", 0x0100),  # QR clear: a query, not a response
        _mutate(GOOD, 2, "!H", 0x8000 | (2 << 11)),  # opcode STATUS
        _mutate(GOOD, 4, "!H", 0),  # no question
        _mutate(GOOD, 4, "!H", 2),  # two questions
        GOOD[:12] + b"\x03wwx" + GOOD[16:],  # another name
        _mutate(GOOD, 12 + len(QNAME), "!H", 28),  # another type
        GOOD[:-1],  # last record cut short
        _mutate(GOOD, 6, "!H", 3),  # ANCOUNT promises records that are not there
        GOOD[: 12 + len(QUESTION)] + b"\xc0",  # a pointer cut in half
        GOOD[: 12 + len(QUESTION)] + b"\x50abc",  # an extended label type
    ],
)
def test_bad_upstream_responses_are_refused(packet: bytes) -> None:
    with pytest.raises(BadUpstreamResponse):
        parse_upstream_response(packet, MSG_ID, QUESTION)


def test_truncated_upstream_response() -> None:
    wire = _mutate(GOOD, 2, "!H", 0x8380)  # QR RD RA TC
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    assert answer.truncated
    assert answer.cache_ttl == 0
    assert answer.sections == b""
    # passed on as is, it tells the client to retry over TCP rather than look like NODATA
    message = dns.message.from_wire(build_forwarded_response(client_query(), answer, 0))
    assert message.flags & dns.flags.TC
    assert not message.answer


def test_nxdomain_caches_for_min_of_soa_ttl_and_minimum() -> None:
    wire = upstream_response(
        ("authority", "example.com.", 300, "SOA", [SOA_TEXT]), rcode=RCODE_NXDOMAIN
    )
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    assert answer.rcode == RCODE_NXDOMAIN
    assert answer.cache_ttl == 60
    wire = upstream_response(
        ("authority", "example.com.", 20, "SOA", [SOA_TEXT]), rcode=RCODE_NXDOMAIN
    )
    assert parse_upstream_response(wire, MSG_ID, QUESTION).cache_ttl == 20


def test_nodata_caches_from_soa() -> None:
    wire = upstream_response(("authority", "example.com.", 45, "SOA", [SOA_TEXT]))
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    assert (answer.rcode, answer.ancount, answer.nscount) == (RCODE_NOERROR, 0, 1)
    assert answer.cache_ttl == 45


def test_negative_without_soa_is_not_cached() -> None:
    wire = upstream_response(rcode=RCODE_NXDOMAIN)
    assert parse_upstream_response(wire, MSG_ID, QUESTION).cache_ttl == 0
    referral = upstream_response(("authority", "example.com.", 300, "NS", ["ns.example.com."]))
    assert parse_upstream_response(referral, MSG_ID, QUESTION).cache_ttl == 0


def test_servfail_is_not_cached() -> None:
    wire = upstream_response(rcode=RCODE_SERVFAIL)
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    assert answer.rcode == RCODE_SERVFAIL and answer.cache_ttl == 0


def test_cache_ttl_is_capped_and_top_bit_ttls_read_as_zero() -> None:
    wire = upstream_response(("answer", "www.example.com.", 2_000_000, "A", ["192.0.2.1"]))
    assert parse_upstream_response(wire, MSG_ID, QUESTION).cache_ttl == MAX_CACHE_TTL
    ttl_at = 12 + len(QUESTION) + 2 + 4
    wire = _mutate(GOOD, ttl_at, "!I", 0x80000005)
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    assert answer.cache_ttl == 0 and answer.ttls == (0,)


def test_extended_rcode_from_upstream_opt() -> None:
    response = dns.message.make_response(upstream_query())
    response.set_rcode(dns.rcode.BADCOOKIE)  # 23: upper bits travel in the OPT
    answer = parse_upstream_response(response.to_wire(), MSG_ID, QUESTION)
    assert answer.rcode == 23
    forwarded = dns.message.from_wire(build_forwarded_response(client_query(), answer, 0))
    assert forwarded.rcode() == dns.rcode.BADCOOKIE


def _rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def test_opt_that_is_not_the_last_record() -> None:
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    packet = (
        struct.pack("!HHHHHH", MSG_ID, 0x8180, 1, 1, 0, 3)
        + QUESTION
        + _rr(b"\xc0\x0c", 1, 50, b"\xc0\x00\x02\x01")
        + _rr(b"\x02ns\xc0\x10", 1, 70, b"\xc0\x00\x02\x35")
        + opt
        + _rr(b"\xc0\x0c", 28, 50, b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01")
    )
    answer = parse_upstream_response(packet, MSG_ID, QUESTION)
    assert (answer.ancount, answer.nscount, answer.arcount) == (1, 0, 1)
    assert answer.ttls == (50, 70)
    message = dns.message.from_wire(build_forwarded_response(client_query(), answer, 0))
    assert message.answer[0][0].address == "192.0.2.1"
    assert str(message.additional[0].name) == "ns.example.COM."
    assert message.edns == 0  # our own OPT, not the upstream's


def test_opt_in_the_answer_section_is_refused() -> None:
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    packet = struct.pack("!HHHHHH", MSG_ID, 0x8180, 1, 1, 0, 0) + QUESTION + opt
    with pytest.raises(BadUpstreamResponse):
        parse_upstream_response(packet, MSG_ID, QUESTION)


def test_forwarded_response_counts_down_and_keeps_pointers_valid() -> None:
    wire = upstream_response(
        ("answer", "www.example.com.", 300, "CNAME", ["web.example.com."]),
        ("answer", "web.example.com.", 60, "A", ["192.0.2.1"]),
        ("authority", "example.com.", 10, "NS", ["ns.example.com."]),
    )
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    query = client_query("WWW.example.COM")
    message = dns.message.from_wire(build_forwarded_response(query, answer, 25))
    assert message.id == 777
    assert str(message.question[0].name) == "WWW.example.COM."
    cname, a_rrset = message.answer
    assert cname.ttl == 275 and a_rrset.ttl == 35
    assert str(cname[0].target) == "web.example.COM."
    assert a_rrset[0].address == "192.0.2.1"
    assert message.authority[0].ttl == 0  # floored, never negative
    assert not message.flags & dns.flags.AA
    assert message.flags & dns.flags.RA and message.flags & dns.flags.RD
    assert message.edns == 0
    # the cached answer itself is untouched
    assert answer.ttls == (300, 60, 10)
    again = dns.message.from_wire(build_forwarded_response(query, answer, 0))
    assert again.answer[0].ttl == 300


def test_forwarded_response_serving_stale() -> None:
    wire = upstream_response(("answer", "www.example.com.", 300, "A", ["192.0.2.1"]))
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    message = dns.message.from_wire(
        build_forwarded_response(client_query(), answer, 5000, stale_ttl=30)
    )
    assert message.answer[0].ttl == 30
    (option,) = message.options
    assert isinstance(option, dns.edns.EDEOption)
    assert option.code == dns.edns.EDECode.STALE_ANSWER
    plain = dns.message.from_wire(
        build_forwarded_response(client_query(edns=False), answer, 5000, stale_ttl=30)
    )
    assert plain.edns == -1 and plain.answer[0].ttl == 30


def test_forwarded_response_without_client_edns_has_no_opt() -> None:
    answer = parse_upstream_response(GOOD, MSG_ID, QUESTION)
    message = dns.message.from_wire(build_forwarded_response(client_query(edns=False), answer, 0))
    assert message.edns == -1
    assert message.answer[0][0].address == "192.0.2.1"


def test_ad_only_for_clients_that_ask() -> None:
    wire = upstream_response(("answer", "www.example.com.", 5, "A", ["192.0.2.1"]), ad=True)
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    plain = dns.message.from_wire(build_forwarded_response(client_query(), answer, 0))
    assert not plain.flags & dns.flags.AD
    secure = dns.message.from_wire(build_forwarded_response(client_query(dnssec=True), answer, 0))
    assert secure.flags & dns.flags.AD
    assert secure.ednsflags & dns.flags.DO


def test_answer_without_ttls_tuple_still_counts_down() -> None:
    parsed = parse_upstream_response(GOOD, MSG_ID, QUESTION)
    bare = UpstreamAnswer(
        parsed.rcode,
        parsed.flags,
        parsed.sections,
        parsed.ancount,
        parsed.nscount,
        parsed.arcount,
        parsed.ttl_offsets,
        parsed.cache_ttl,
        parsed.truncated,
    )
    message = dns.message.from_wire(build_forwarded_response(client_query(), bare, 2))
    assert message.answer[0].ttl == 3


def test_count_down_is_right_whatever_the_order_of_ages() -> None:
    wire = upstream_response(
        ("answer", "www.example.com.", 100, "A", ["192.0.2.1"]),
        ("authority", "example.com.", 7, "NS", ["ns.example.com."]),
    )
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    query = client_query()
    for age in [5, 5, 6, 5, 0, 99, 100, 101, 6, 5]:
        message = dns.message.from_wire(build_forwarded_response(query, answer, age))
        assert message.answer[0].ttl == max(100 - age, 0)
        assert message.authority[0].ttl == max(7 - age, 0)
    stale = dns.message.from_wire(build_forwarded_response(query, answer, 5, stale_ttl=30))
    assert stale.answer[0].ttl == 30
    again = dns.message.from_wire(build_forwarded_response(query, answer, 5))
    assert again.answer[0].ttl == 95


def test_question_type_compares_exactly_not_case_folded() -> None:
    # HTTPS is type 65 = 0x0041 ("A"); lower-casing would turn it into 0x0061 (97)
    question = build_question(QNAME, 65, 1)
    packet = struct.pack("!HHHHHH", MSG_ID, 0x8180, 1, 0, 0, 0) + QNAME + b"\x00\x61\x00\x01"
    with pytest.raises(BadUpstreamResponse):
        parse_upstream_response(packet, MSG_ID, question)
    good = struct.pack("!HHHHHH", MSG_ID, 0x8180, 1, 0, 0, 0) + QNAME + b"\x00\x41\x00\x01"
    assert parse_upstream_response(good, MSG_ID, question).rcode == RCODE_NOERROR


def test_memoised_responses_match_fresh_ones_for_every_query_shape() -> None:
    wire = upstream_response(("answer", "www.example.com.", 300, "A", ["192.0.2.1"]), ad=True)
    shared = parse_upstream_response(wire, MSG_ID, QUESTION)
    shapes = []
    for edns in (False, True):
        for dnssec in (False, True) if edns else (False,):
            for flag_bits in (0x0000, 0x0100, 0x0010, 0x0020, 0x0130):
                message = dns.message.make_query(
                    "wWw.example.com", "A", use_edns=0 if edns else False, want_dnssec=dnssec
                )
                message.flags = flag_bits
                shapes.append(parse_query(message.to_wire()))
    order = [(shape, age) for age in (0, 3, 0, 3, 301) for shape in shapes]
    random.Random(5).shuffle(order)
    for shape, age in order:
        fresh = parse_upstream_response(wire, MSG_ID, QUESTION)
        assert build_forwarded_response(shape, shared, age) == build_forwarded_response(
            shape, fresh, age
        )
        flags = dns.message.from_wire(build_forwarded_response(shape, shared, age)).flags
        assert bool(flags & dns.flags.RD) == bool(shape.flags & 0x0100)
        assert bool(flags & dns.flags.CD) == bool(shape.flags & 0x0010)
        assert bool(flags & dns.flags.AD) == bool(shape.dnssec_ok or shape.flags & 0x0020)


def test_large_forwarded_answer_is_truncated_for_a_plain_udp_client() -> None:
    addresses = [f"192.0.2.{i}" for i in range(1, 60)]
    wire = upstream_response(
        ("answer", "www.example.com.", 300, "CNAME", ["web.example.com."]),
        ("answer", "web.example.com.", 60, "A", addresses),
        ("authority", "example.com.", 60, "NS", ["ns1.example.com.", "ns2.example.com."]),
        ("additional", "ns1.example.com.", 60, "A", ["192.0.2.250"]),
    )
    answer = parse_upstream_response(wire, MSG_ID, QUESTION)
    for edns in (False, True):
        query = client_query(edns=edns)
        full = build_forwarded_response(query, answer, 0)
        assert len(dns.message.from_wire(full).answer[1]) == 59
        cut = fit_udp(full, query.udp_limit)
        if len(full) <= query.udp_limit:
            assert cut == full
            continue
        message = dns.message.from_wire(cut)
        assert message.flags & dns.flags.TC
        assert not message.answer and not message.authority
        assert message.edns == (0 if edns else -1)
        assert message.id == 777
