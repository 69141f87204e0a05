"""dnsforward against forgery and odd upstreams: 0x20 case, relayed stale answers, TTL caps."""

from __future__ import annotations

import os
import struct

import dns.edns
import dns.message
import dns.rrset
import pytest

from dnsmesh.dnsforward import (
    BadUpstreamResponse,
    CaseMismatch,
    build_forwarded_response,
    build_question,
    build_upstream_query,
    parse_upstream_response,
    randomize_case,
)
from dnsmesh.dnswire import TYPE_A, name_to_wire, parse_query

MSG_ID = 4242
LOWER = name_to_wire("www.example.com")


def _letters(name: bytes) -> list[int]:
    return [i for i, b in enumerate(name) if chr(b).isalpha()]


def test_randomize_case_flips_only_letters_where_the_noise_says() -> None:
    name = name_to_wire("a1-b.x9.example")
    noise = bytes([0x20] * len(name))  # flip every letter
    assert randomize_case(name, noise) == name_to_wire("A1-B.X9.EXAMPLE")
    assert randomize_case(name, bytes(len(name))) == name  # no bit 5: unchanged
    assert randomize_case(name, bytes([0xDF] * len(name))) == name  # every bit but bit 5


def test_randomize_case_keeps_lengths_digits_and_the_name() -> None:
    name = name_to_wire("r4nd0m.label.example.test")
    seen = set()
    for _ in range(64):
        cased = randomize_case(name, os.urandom(len(name)))
        assert len(cased) == len(name) and cased.lower() == name
        for i, (a, b) in enumerate(zip(name, cased, strict=True)):
            if i not in _letters(name):
                assert a == b  # label lengths, digits and the root byte never move
        seen.add(cased)
    # 20 letters: 64 draws nearly never repeat; a fixed output would mean no randomness.
    assert len(seen) > 50


def test_names_without_letters_carry_no_case_bits() -> None:
    name = name_to_wire("1.2.3.4.in-addr.arpa")
    assert len(_letters(name)) == 10  # only the suffix's letters
    digits = name_to_wire("1.2.3.4")
    assert randomize_case(digits, bytes([0xFF] * len(digits))) == digits


def _reply_to(query_wire: bytes, *, ttl: int = 300, ede: int | None = None) -> bytes:
    query = dns.message.from_wire(query_wire)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", "A", "192.0.2.1"))
    if ede is not None:
        response.use_edns(0, options=[dns.edns.EDEOption(ede)])
    return response.to_wire()


def test_a_reply_must_echo_the_random_case_exactly() -> None:
    sent = randomize_case(LOWER, bytes([0x20, 0, 0x20] * 10))
    assert sent != LOWER
    question = build_question(sent, TYPE_A, 1)
    good = _reply_to(build_upstream_query(sent, TYPE_A, 1, MSG_ID))
    assert parse_upstream_response(good, MSG_ID, question).ancount == 1
    # A forger who guesses the ID but not the case (here: the lower-case name) is refused.
    forged = _reply_to(build_upstream_query(LOWER, TYPE_A, 1, MSG_ID))
    with pytest.raises(BadUpstreamResponse, match="question"):
        parse_upstream_response(forged, MSG_ID, question)


def test_a_reply_that_lost_only_the_case_is_told_apart() -> None:
    sent = randomize_case(LOWER, bytes([0x20] * len(LOWER)))
    question = build_question(sent, TYPE_A, 1)
    lowered = _reply_to(build_upstream_query(LOWER, TYPE_A, 1, MSG_ID))
    with pytest.raises(CaseMismatch):
        parse_upstream_response(lowered, MSG_ID, question)
    # Over TCP the case is not checked; another name still is.
    assert parse_upstream_response(lowered, MSG_ID, question, exact_case=False).ancount == 1
    other = _reply_to(build_upstream_query(name_to_wire("www.example.org"), TYPE_A, 1, MSG_ID))
    with pytest.raises(BadUpstreamResponse) as refused:
        parse_upstream_response(other, MSG_ID, question, exact_case=False)
    assert not isinstance(refused.value, CaseMismatch)


def test_our_random_case_copied_into_records_is_restored() -> None:
    sent = randomize_case(LOWER, bytes([0x20] * len(LOWER)))
    question = build_question(sent, TYPE_A, 1)
    # No compression: the owner name is written out in our random case.
    record = sent + struct.pack("!HHIH", TYPE_A, 1, 60, 4) + bytes([192, 0, 2, 1])
    wire = struct.pack("!HHHHHH", MSG_ID, 0x8180, 1, 1, 0, 0) + question + record
    answer = parse_upstream_response(wire, MSG_ID, question, restore_name=LOWER)
    assert sent not in answer.sections and LOWER in answer.sections
    client = parse_query(dns.message.make_query("WWW.Example.com", "A").to_wire())
    out = dns.message.from_wire(build_forwarded_response(client, answer, 0))
    assert out.question[0].name.to_text() == "WWW.Example.com."
    assert out.answer[0].name.to_text() == "www.example.com."
    assert [rr.to_text() for rr in out.answer[0]] == ["192.0.2.1"]


def test_an_upstream_stale_answer_is_relayed_stale_and_not_cacheable() -> None:
    question = build_question(LOWER, TYPE_A, 1)
    wire = _reply_to(build_upstream_query(LOWER, TYPE_A, 1, MSG_ID), ttl=30, ede=3)
    answer = parse_upstream_response(wire, MSG_ID, question)
    assert answer.relayed_stale and answer.cache_ttl == 0
    client = parse_query(dns.message.make_query("www.example.com", "A", use_edns=0).to_wire())
    out = dns.message.from_wire(build_forwarded_response(client, answer, 0))
    assert [o.code for o in out.options if isinstance(o, dns.edns.EDEOption)] == [3]
    # Another EDE (here 18, Prohibited) says nothing about staleness.
    other = _reply_to(build_upstream_query(LOWER, TYPE_A, 1, MSG_ID), ttl=30, ede=18)
    fresh = parse_upstream_response(other, MSG_ID, question)
    assert not fresh.relayed_stale and fresh.cache_ttl == 30


def test_ttls_are_capped_for_the_cache_and_the_client() -> None:
    question = build_question(LOWER, TYPE_A, 1)
    wire = _reply_to(build_upstream_query(LOWER, TYPE_A, 1, MSG_ID), ttl=604_800)
    answer = parse_upstream_response(wire, MSG_ID, question, max_ttl=86_400)
    assert answer.cache_ttl == 86_400 and answer.ttls == (86_400,)
    client = parse_query(dns.message.make_query("www.example.com", "A").to_wire())
    out = dns.message.from_wire(build_forwarded_response(client, answer, 0))
    assert out.answer[0].ttl == 86_400
