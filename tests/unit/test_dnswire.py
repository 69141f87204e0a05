"""dnswire: queries in, responses out, as bytes, cross-checked against dnspython."""

from __future__ import annotations

import struct
from ipaddress import ip_address

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from dnsmesh import dnswire
from dnsmesh.dnswire import (
    EDE_PROHIBITED,
    FLAG_RA,
    FLAG_TC,
    RCODE_FORMERR,
    RCODE_NOERROR,
    RCODE_NOTIMP,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    TYPE_A,
    TYPE_AAAA,
    MalformedQuery,
    Query,
    build_error,
    build_response,
    fit_udp,
    name_to_text,
    name_to_wire,
    parse_query,
    parse_query_and_cookie,
    record_a,
    record_soa,
    udp_limit_for,
)


def make_query(
    name: str = "www.Example.COM",
    rdtype: str = "A",
    *,
    edns: bool = False,
    dnssec: bool = False,
    payload: int = 1232,
    options: list[dns.edns.Option] | None = None,
    msg_id: int = 0x1234,
) -> bytes:
    if edns or dnssec or options:
        message = dns.message.make_query(
            name, rdtype, use_edns=0, want_dnssec=dnssec, payload=payload, options=options
        )
    else:
        message = dns.message.make_query(name, rdtype, use_edns=False)
    message.id = msg_id
    return message.to_wire()


def header(packet: bytes) -> tuple[int, ...]:
    return struct.unpack_from("!HHHHHH", packet)


# --- parse_query ----------------------------------------------------------------------------


def test_plain_query_fields() -> None:
    query = parse_query(make_query("www.Example.COM", "AAAA"))
    assert query.id == 0x1234
    assert query.flags & dnswire.FLAG_RD
    assert query.qname == b"\x03www\x07example\x03com\x00"
    assert query.question == b"\x03www\x07Example\x03COM\x00\x00\x1c\x00\x01"
    assert (query.qtype, query.qclass) == (TYPE_AAAA, 1)
    assert query.edns_payload is None
    assert query.dnssec_ok is False
    assert query.udp_limit == 512


@pytest.mark.parametrize(
    ("payload", "limit"), [(512, 512), (100, 512), (1232, 1232), (4096, 1232), (1400, 1232)]
)
def test_edns_payload_and_udp_limit(payload: int, limit: int) -> None:
    query = parse_query(make_query(edns=True, payload=payload))
    assert query.edns_payload == payload
    assert query.udp_limit == limit


def test_do_bit_and_options_are_read() -> None:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    query, found = parse_query_and_cookie(make_query(dnssec=True, options=[cookie]))
    assert found == b"\x01" * 8
    assert query.dnssec_ok is True
    assert query.edns_payload == 1232


def test_same_tail_parses_the_same_twice_and_ids_differ() -> None:
    first = parse_query(make_query(msg_id=1))
    second = parse_query(make_query(msg_id=2))
    assert first.id == 1 and second.id == 2
    assert first[2:] == second[2:]


def test_query_is_immutable() -> None:
    query = parse_query(make_query())
    with pytest.raises(AttributeError):
        query.id = 3  # type: ignore[misc]


def test_query_keyword_construction() -> None:
    query = Query(
        id=1,
        flags=0,
        qname=b"\x00",
        question=b"\x00\x00\x01\x00\x01",
        qtype=1,
        qclass=1,
        edns_payload=None,
        dnssec_ok=False,
    )
    assert query.udp_limit == 512
    assert udp_limit_for(None) == 512
    assert udp_limit_for(4096) == 1232
    assert udp_limit_for(100) == 512


def _reply_rcode(exc: MalformedQuery) -> int:
    assert exc.reply is not None
    message = dns.message.from_wire(exc.reply)
    return message.rcode()


def test_short_header_is_dropped() -> None:
    for size in range(12):
        with pytest.raises(MalformedQuery) as info:
            parse_query(make_query()[:size])
        assert info.value.reply is None


def test_response_is_never_answered() -> None:
    packet = bytearray(make_query())
    packet[2] |= 0x80
    with pytest.raises(MalformedQuery) as info:
        parse_query(bytes(packet))
    assert info.value.reply is None


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, 6])
def test_other_opcodes_get_notimp(opcode: int) -> None:
    packet = bytearray(make_query())
    packet[2] = (packet[2] & 0x87) | (opcode << 3)
    with pytest.raises(MalformedQuery) as info:
        parse_query(bytes(packet))
    assert info.value.reply is not None
    msg_id, flags, *counts = header(info.value.reply)
    assert msg_id == 0x1234
    assert flags & 0x8000 and flags & 0xF == RCODE_NOTIMP
    assert flags & FLAG_RA  # a recursive server says so in every answer, NOTIMP too
    assert (flags >> 11) & 0xF == opcode
    assert counts == [0, 0, 0, 0]


def test_update_opcode_parses_with_dnspython_as_notimp() -> None:
    packet = bytearray(make_query())
    packet[2] = (packet[2] & 0x87) | (dns.opcode.UPDATE << 3)
    with pytest.raises(MalformedQuery) as info:
        parse_query(bytes(packet))
    assert info.value.reply is not None
    assert header(info.value.reply)[1] & 0xF == RCODE_NOTIMP


@pytest.mark.parametrize(
    "counts", [(0, 0, 0, 0), (2, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 2)]
)
def test_wrong_section_counts_get_formerr(counts: tuple[int, int, int, int]) -> None:
    packet = bytearray(make_query())
    struct.pack_into("!HHHH", packet, 4, *counts)
    with pytest.raises(MalformedQuery) as info:
        parse_query(bytes(packet))
    assert _reply_rcode(info.value) == RCODE_FORMERR


def _with_question(question: bytes, arcount: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, arcount) + question


@pytest.mark.parametrize(
    "question",
    [
        b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself: a loop
        b"\x03www\xc0\x0c\x00\x01\x00\x01",  # pointer after a label
        b"\x03www\x40abc\x00\x00\x01\x00\x01",  # extended label type 0x40
        b"\x03www\x80abc\x00\x00\x01\x00\x01",  # reserved label type 0x80
        b"\x03www\x07exam",  # label runs past the end
        b"\x03www",  # no root label
        b"",  # no question at all
        b"\x03www\x00\x00\x01",  # type/class cut short
        b"\x03www\x00\x00\x01\x00\x01garbage",  # trailing bytes
        (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # 257 octets: over 255
    ],
)
def test_bad_questions_get_formerr(question: bytes) -> None:
    with pytest.raises(MalformedQuery) as info:
        parse_query(_with_question(question))
    assert _reply_rcode(info.value) == RCODE_FORMERR
    assert info.value.reply is not None
    assert header(info.value.reply)[0] == 7


def test_longest_legal_name_parses() -> None:
    # 3 x 63-octet labels + one 61-octet label = 255 octets with lengths and the root.
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00"
    assert len(name) == 255
    query = parse_query(_with_question(name + b"\x00\x01\x00\x01"))
    assert query.qname == name


def test_root_question_parses() -> None:
    query = parse_query(_with_question(b"\x00\x00\x02\x00\x01"))
    assert query.qname == b"\x00"
    assert name_to_text(query.qname) == "."


def _opt(payload: int = 1232, ttl: int = 0, rdata: bytes = b"", owner: bytes = b"\x00") -> bytes:
    return owner + struct.pack("!HHIH", 41, payload, ttl, len(rdata)) + rdata


QUESTION = b"\x03www\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "additional",
    [
        _opt(owner=b"\x03www\x00"),  # OPT not owned by the root
        b"\x00" + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04",  # an A, not an OPT
        _opt(rdata=b"\x00\x0a\x00\x08\x01\x02"),  # option longer than the rdata
        _opt(rdata=b"\x00\x0a"),  # option header cut short
        _opt() + b"\x00",  # trailing byte after the OPT
        _opt()[:-1],  # OPT cut short
        b"",  # ARCOUNT says 1 but nothing is there
    ],
)
def test_bad_opt_gets_formerr(additional: bytes) -> None:
    with pytest.raises(MalformedQuery) as info:
        parse_query(_with_question(QUESTION + additional, arcount=1))
    assert _reply_rcode(info.value) == RCODE_FORMERR


def test_opt_with_trailing_bytes_but_arcount_zero_is_formerr_even_after_a_good_parse() -> None:
    good = _with_question(QUESTION + _opt(), arcount=1)
    assert parse_query(good).edns_payload == 1232
    with pytest.raises(MalformedQuery):
        parse_query(_with_question(QUESTION + _opt(), arcount=0))


def test_edns_version_1_gets_badvers_with_question() -> None:
    with pytest.raises(MalformedQuery) as info:
        parse_query(_with_question(QUESTION + _opt(ttl=0x00010000), arcount=1))
    assert info.value.reply is not None
    message = dns.message.from_wire(info.value.reply)
    assert message.rcode() == dns.rcode.BADVERS
    assert message.edns == 0
    assert str(message.question[0].name) == "www."


def test_malformed_query_is_a_dnsmesh_error() -> None:
    from dnsmesh.errors import DnsmeshError

    assert issubclass(MalformedQuery, DnsmeshError)


# --- names ----------------------------------------------------------------------------------


def test_name_to_wire_and_back() -> None:
    assert name_to_wire("a.bc.def") == b"\x01a\x02bc\x03def\x00"
    assert name_to_wire("a.bc.def.") == b"\x01a\x02bc\x03def\x00"
    assert name_to_wire("") == b"\x00"
    assert name_to_text(b"\x01a\x02bc\x03def\x00") == "a.bc.def"
    with pytest.raises(ValueError):
        name_to_wire("a..b")
    with pytest.raises(ValueError):
        name_to_wire("x" * 64)


def test_name_to_text_escapes_unprintable_bytes() -> None:
    assert name_to_text(b"\x03a\x00b\x03c.d\x00") == "a\\000b.c\\046d"
    assert name_to_text(b"\x02\x1b[\x00") == "\\027\\091"
    assert name_to_text(b"\x05_http\x04_tcp\x00") == "_http._tcp"


# --- responses ------------------------------------------------------------------------------


def test_build_response_is_what_dnspython_expects() -> None:
    wire = make_query("Api.Example.com", "A", dnssec=True)
    query = parse_query(wire)
    answers = [record_a(ip_address("192.0.2.1"), 30), record_a(ip_address("192.0.2.2"), 30)]
    response = build_response(query, RCODE_NOERROR, answers, authoritative=True)
    message = dns.message.from_wire(response)
    assert dns.message.from_wire(wire).is_response(message)
    assert message.id == query.id
    assert message.flags & dns.flags.QR and message.flags & dns.flags.AA
    assert message.flags & dns.flags.RD and message.flags & dns.flags.RA
    assert str(message.question[0].name) == "Api.Example.com."  # 0x20 case echoed
    assert message.edns == 0 and message.payload == 1232
    assert message.ednsflags & dns.flags.DO
    rrset = message.answer[0]
    assert rrset.ttl == 30
    assert sorted(r.address for r in rrset) == ["192.0.2.1", "192.0.2.2"]


def test_response_without_edns_has_no_opt_and_no_aa_by_default() -> None:
    query = parse_query(make_query())
    message = dns.message.from_wire(build_response(query, RCODE_NOERROR))
    assert message.edns == -1
    assert not message.flags & dns.flags.AA
    assert not message.answer


def test_rd_is_echoed_only_when_set() -> None:
    wire = bytearray(make_query())
    wire[2] &= ~0x01  # clear RD
    query = parse_query(bytes(wire))
    message = dns.message.from_wire(build_error(query, RCODE_SERVFAIL))
    assert not message.flags & dns.flags.RD
    assert message.rcode() == dns.rcode.SERVFAIL


def test_build_error_with_ede() -> None:
    query = parse_query(make_query(edns=True))
    message = dns.message.from_wire(build_error(query, RCODE_REFUSED, (EDE_PROHIBITED, "no")))
    assert message.rcode() == dns.rcode.REFUSED
    (option,) = message.options
    assert isinstance(option, dns.edns.EDEOption)
    assert option.code == dns.edns.EDECode.PROHIBITED
    assert option.text == "no"


def test_ede_is_dropped_without_edns() -> None:
    query = parse_query(make_query())
    message = dns.message.from_wire(build_error(query, RCODE_REFUSED, (EDE_PROHIBITED, "")))
    assert message.edns == -1


def test_record_a_and_aaaa() -> None:
    query = parse_query(make_query("x.test", "AAAA"))
    rr6 = record_a(ip_address("2001:db8::5"), 7)
    message = dns.message.from_wire(build_response(query, 0, [rr6]))
    rrset = message.answer[0]
    assert rrset.rdtype == dns.rdatatype.AAAA and rrset.ttl == 7
    assert rrset[0].address == "2001:db8::5"
    assert struct.unpack_from("!HH", record_a(ip_address("10.0.0.1"), 1), 2)[0] == TYPE_A


def test_record_soa() -> None:
    query = parse_query(make_query("x.test", "MX"))
    soa = record_soa(name_to_wire("test"), 9, 5, serial=42)
    message = dns.message.from_wire(build_response(query, 0, authority=[soa]))
    rrset = message.authority[0]
    assert rrset.rdtype == dns.rdatatype.SOA and rrset.ttl == 9
    assert str(rrset.name) == "test."
    assert rrset[0].serial == 42 and rrset[0].minimum == 5
    assert str(rrset[0].rname) == "hostmaster.test."


# --- truncation -----------------------------------------------------------------------------


def test_fit_udp_passes_small_responses() -> None:
    query = parse_query(make_query())
    response = build_response(query, 0, [record_a(ip_address("10.0.0.1"), 5)])
    assert fit_udp(response, 512) is response


@pytest.mark.parametrize("edns", [False, True])
def test_fit_udp_truncates_to_header_question_and_opt(edns: bool) -> None:
    query = parse_query(make_query("many.test", "AAAA", edns=edns))
    answers = [record_a(ip_address(f"2001:db8::{i:x}"), 5) for i in range(50)]
    response = build_response(query, 0, answers, authoritative=True)
    assert len(response) > 1232
    cut = fit_udp(response, query.udp_limit)
    assert len(cut) <= query.udp_limit
    message = dns.message.from_wire(cut)
    assert message.flags & dns.flags.TC and message.flags & dns.flags.AA
    assert not message.answer
    assert str(message.question[0].name) == "many.test."
    assert message.edns == (0 if edns else -1)
    assert header(cut)[1] & FLAG_TC


def test_tail_memo_is_bounded_in_entries_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnswire, "TAIL_MEMO_LIMIT", 8)
    for i in range(50):
        parse_query(make_query(f"n{i}.example"))
        assert len(dnswire._TAILS) <= 8
    dnswire._TAILS.clear()
    padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 1000)
    big = make_query("padded.example", options=[padding])
    assert parse_query(big).edns_payload == 1232
    assert not dnswire._TAILS  # too big to keep
    parse_query(make_query("small.example"))
    assert len(dnswire._TAILS) == 1
