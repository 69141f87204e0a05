"""Property tests: random and mutated packets never crash the wire code.

parse_query may only return a Query or raise MalformedQuery, or WithCookie or WithEcs
whose copy without the option parses to the same Query; whatever it returns, a policy
answers without raising and dnspython can read that answer; every reply a MalformedQuery
offers is a readable response. parse_upstream_response may only raise BadUpstreamResponse.
The normal suite runs a few hundred examples each; ``-m slow`` runs a longer campaign.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import dns.edns
import dns.message
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsmesh.dnsforward import (
    BadUpstreamResponse,
    build_forwarded_response,
    build_question,
    parse_upstream_response,
)
from dnsmesh.dnswire import (
    MalformedQuery,
    Query,
    WithCookie,
    WithEcs,
    build_response,
    fit_udp,
    name_to_text,
    name_to_wire,
    parse_query,
    udp_limit_for,
)
from dnsmesh.policy import parse_policy
from dnsmesh.snapshot import CompiledPolicy, compile_snapshot


def _seed_queries() -> list[bytes]:
    out = []
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x07" * 8)
    ecs = dns.edns.ECSOption("10.8.3.0", 22)
    for name, rdtype in [("api.example", "A"), ("a.B.svc.Example", "AAAA"), ("x", "HTTPS")]:
        out.append(dns.message.make_query(name, rdtype, use_edns=False).to_wire())
        out.append(dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=True).to_wire())
        out.append(dns.message.make_query(name, rdtype, use_edns=0, options=[cookie]).to_wire())
        out.append(dns.message.make_query(name, rdtype, use_edns=0, options=[ecs]).to_wire())
    return out


SEEDS = _seed_queries()


def _policies() -> list[CompiledPolicy]:
    endpoints = [
        {"address": "10.0.0.1", "weight": 5, "group": "a", "priority": 1},
        {"address": "10.0.0.2", "weight": 1, "group": "b"},
        {"address": "2001:db8::1", "weight": 2, "group": "a"},
    ]
    slices = [
        {"id": "b", "match": {"client_cidrs": ["10.8.0.0/16"]}, "groups": ["b"]},
        {"id": "no", "match": {"client_cidrs": ["10.9.0.0/16", "::/0"]}, "action": "refuse"},
    ]
    docs = [
        ("w", "api.example", {"strategy": "weighted", "answers": 2, "slices": slices}),
        ("s", "*.svc.example", {"strategy": "sticky"}),
        ("f", "f.example", {"strategy": "failover", "answers": 3}),
    ]
    policies = [
        parse_policy(
            {
                "apiVersion": "dnsmesh/v1",
                "kind": "Policy",
                "metadata": {"name": name},
                "spec": {"domain": domain, "endpoints": endpoints, **extra},
            }
        )
        for name, domain, extra in docs
    ]
    return compile_snapshot(policies).policies()


POLICIES = _policies()
CLIENTS = ["127.0.0.1", "10.8.1.1", "10.9.1.1", "::1", "::ffff:10.8.0.1", "junk"]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    packet = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 4))
        if kind == 0 and packet:  # flip a byte
            packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
        elif kind == 1:  # truncate
            del packet[draw(st.integers(0, len(packet))) :]
        elif kind == 2:  # insert bytes
            at = draw(st.integers(0, len(packet)))
            packet[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 3 and len(packet) >= 12:  # rewrite a header word (flags or a count)
            struct.pack_into("!H", packet, 2 * draw(st.integers(1, 5)), draw(st.integers(0, 65535)))
        elif kind == 4:  # append garbage
            packet += draw(st.binary(max_size=16))
    return bytes(packet)


packets = st.one_of(st.binary(max_size=600), mutated(SEEDS))


def _check_query_packet(packet: bytes, client: str) -> None:
    try:
        query = parse_query(packet)
    except MalformedQuery as exc:
        if exc.reply is not None:
            reply = dns.message.from_wire(exc.reply)
            assert reply.flags & 0x8000
            assert exc.reply[:2] == packet[:2]
        return
    except WithCookie as found:
        assert parse_query(found.plain) == found.query
        query = found.query
    except WithEcs as subnet:
        assert parse_query(subnet.plain) == subnet.query
        query = subnet.query
        client = subnet.subnet.key  # what a trusted forwarder's query is answered for
    assert isinstance(query, Query)
    assert query.udp_limit == udp_limit_for(query.edns_payload)
    name_to_text(query.qname)
    assert query.question.lower().startswith(query.qname)
    for policy in POLICIES:
        wire = policy.respond(query, client, random.Random(0))
        assert wire[:2] == packet[:2]
        dns.message.from_wire(fit_udp(wire, query.udp_limit))
    dns.message.from_wire(build_response(query, 2))


FAST = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW = settings(max_examples=30_000, deadline=None, database=None)


@FAST
@given(packet=packets, client=st.sampled_from(CLIENTS))
def test_query_packets_never_crash(packet: bytes, client: str) -> None:
    _check_query_packet(packet, client)


@pytest.mark.slow
def test_query_packets_never_crash_campaign() -> None:

    @SLOW
    @given(packet=packets, client=st.sampled_from(CLIENTS))
    def campaign(packet: bytes, client: str) -> None:
        _check_query_packet(packet, client)

    campaign()


QNAME = name_to_wire("www.example.com")
QUESTION = build_question(QNAME, 1, 1)
MSG_ID = 99


def _seed_responses() -> list[bytes]:
    request = dns.message.make_query("www.example.com", "A", use_edns=0)
    request.id = MSG_ID
    out = []
    for rcode, sections in [
        (0, [("answer", "www.example.com.", 60, "CNAME", "web.example.com.")]),
        (0, [("answer", "www.example.com.", 60, "A", "192.0.2.1")]),
        (3, [("authority", "example.com.", 60, "SOA", "a.example. b.example. 1 2 3 4 5")]),
        (0, [("additional", "ns.example.com.", 60, "AAAA", "2001:db8::2")]),
    ]:
        response = dns.message.make_response(request)
        response.set_rcode(rcode)
        for section, name, ttl, rdtype, text in sections:
            getattr(response, section).append(dns.rrset.from_text(name, ttl, "IN", rdtype, text))
        out.append(response.to_wire())
    return out


RESPONSE_SEEDS = _seed_responses()
CLIENT_QUERY = parse_query(dns.message.make_query("WWW.example.com", "A", use_edns=0).to_wire())


def _check_upstream_packet(packet: bytes, age: int) -> None:
    try:
        answer = parse_upstream_response(packet, MSG_ID, QUESTION)
    except BadUpstreamResponse:
        return
    assert 0 <= answer.cache_ttl <= 604800
    assert len(answer.ttl_offsets) == answer.ancount + answer.nscount + answer.arcount or (
        answer.truncated
    )
    for offset in answer.ttl_offsets:
        assert offset + 4 <= len(answer.sections)
    wire = build_forwarded_response(CLIENT_QUERY, answer, age, stale_ttl=None if age else 30)
    assert wire[:2] == CLIENT_QUERY.id.to_bytes(2, "big")


upstream_packets = st.one_of(st.binary(max_size=600), mutated(RESPONSE_SEEDS))


@FAST
@given(packet=upstream_packets, age=st.integers(0, 100_000))
def test_upstream_packets_never_crash(packet: bytes, age: int) -> None:
    _check_upstream_packet(packet, age)


@pytest.mark.slow
def test_upstream_packets_never_crash_campaign() -> None:

    @SLOW
    @given(packet=upstream_packets, age=st.integers(0, 100_000))
    def campaign(packet: bytes, age: int) -> None:
        _check_upstream_packet(packet, age)

    campaign()


def _exhaust(check: Callable[[bytes], None], seed: bytes) -> None:
    for size in range(len(seed) + 1):
        check(seed[:size])


def test_every_prefix_of_every_seed() -> None:
    for seed in SEEDS:
        _exhaust(lambda p: _check_query_packet(p, "127.0.0.1"), seed)
    for seed in RESPONSE_SEEDS:
        _exhaust(lambda p: _check_upstream_packet(p, 3), seed)
