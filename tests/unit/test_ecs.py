"""EDNS Client Subnet (RFC 7871): the option parsed and built against dnspython's, malformed
ones refused FORMERR, the parse's WithEcs raise, and slices matched on the ECS network."""

from __future__ import annotations

import ipaddress
import random
import struct
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import pytest

from dnsmesh import dnswire
from dnsmesh.cookies import OPTION_COOKIE
from dnsmesh.ecs import (
    OPTION_ECS,
    ClientSubnet,
    EcsError,
    build_ecs,
    ecs_option,
    parse_ecs,
)
from dnsmesh.policy import parse_policy
from dnsmesh.snapshot import CompiledPolicy
from tests.support.policies import policy_doc


@pytest.mark.parametrize(
    ("address", "source", "key"),
    [
        ("10.8.3.0", 24, "10.8.3.0/24"),
        ("10.8.0.0", 22, "10.8.0.0/22"),  # a prefix that ends inside an octet
        ("192.0.2.7", 32, "192.0.2.7/32"),
        ("0.0.0.0", 0, "0.0.0.0/0"),  # "do not use my address" (RFC 7871 §7.1.2)
        ("2001:db8:1:ff00::", 56, "2001:db8:1:ff00::/56"),
    ],
)
def test_parse_and_build_round_trip_with_dnspython(address: str, source: int, key: str) -> None:
    sent = dns.edns.ECSOption(address, source).to_wire()
    subnet = parse_ecs(sent)
    assert subnet.source == source
    assert subnet.key == key
    assert build_ecs(ipaddress.ip_network(key)) == sent
    # The answer's option: family, source and address copied, our scope; dnspython reads it.
    back = dns.edns.option_from_wire(OPTION_ECS, ecs_option(subnet, source), 0, len(sent))
    assert isinstance(back, dns.edns.ECSOption)
    assert (back.address, back.srclen, back.scopelen) == (address, source, source)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00\x01\x18", "shorter than its 4 fixed octets"),
        (b"\x00\x03\x08\x00\x0a", "family 3"),
        (b"\x00\x01\x21\x00" + bytes(5), "longer than 32"),
        (b"\x00\x02\x81\x00" + bytes(17), "longer than 128"),
        (b"\x00\x01\x18\x18\x0a\x08\x03", "scope prefix-length must be 0"),
        (b"\x00\x01\x18\x00\x0a\x08\x03\x00", "4 octets for a /24"),  # too many octets
        (b"\x00\x01\x18\x00\x0a\x08", "2 octets for a /24"),  # too few
        (b"\x00\x01\x16\x00\x0a\x08\x03", "bits set past its /22"),
    ],
)
def test_a_malformed_option_is_refused_naming_the_fault(data: bytes, error: str) -> None:
    with pytest.raises(EcsError, match=error):
        parse_ecs(data)


def _query(*options: dns.edns.Option) -> bytes:
    return dns.message.make_query("ecs.mesh.test", "A", use_edns=0, options=list(options)).to_wire()


@pytest.mark.parametrize(
    "options",
    [
        [dns.edns.GenericOption(OPTION_ECS, b"\x00\x01\x18\x00\x0a\x08")],
        [dns.edns.ECSOption("10.8.3.0", 24), dns.edns.ECSOption("10.9.0.0", 16)],
    ],
    ids=["malformed", "two"],
)
def test_a_query_with_a_malformed_or_second_option_is_formerr(
    options: list[dns.edns.Option],
) -> None:
    with pytest.raises(dnswire.MalformedQuery) as caught:
        dnswire.parse_query(_query(*options))
    assert caught.value.reply is not None
    reply = dns.message.from_wire(caught.value.reply)
    assert reply.rcode() == dns.rcode.FORMERR
    assert str(reply.question[0].name) == "ecs.mesh.test."
    assert reply.edns == 0  # our OPT: EDNS itself is understood


def test_a_query_with_ecs_is_raised_with_the_option_and_a_plain_copy() -> None:
    ede = dns.edns.EDEOption(3)
    packet = _query(ede, dns.edns.ECSOption("10.8.3.0", 24))
    for _ in range(2):  # memoised apart: the second parse raises too
        with pytest.raises(dnswire.WithEcs) as caught:
            dnswire.parse_query(packet)
    found = caught.value
    assert found.subnet == ClientSubnet(1, 24, b"\x0a\x08\x03")
    assert dnswire.parse_query(found.plain) == found.query
    assert [o.otype for o in dns.message.from_wire(found.plain).options] == [ede.otype]
    # Off the hot path the option plays no part.
    assert dnswire.parse_query_and_cookie(packet) == (found.query, None)


def test_a_query_with_a_cookie_and_ecs_raises_the_cookie_first_keeping_ecs() -> None:
    cookie = dns.edns.GenericOption(OPTION_COOKIE, b"c" * 8)
    with pytest.raises(dnswire.WithCookie) as caught:
        dnswire.parse_query(_query(cookie, dns.edns.ECSOption("10.8.3.0", 24)))
    with pytest.raises(dnswire.WithEcs) as then:
        dnswire.parse_query(caught.value.plain)
    assert then.value.subnet.key == "10.8.3.0/24"
    assert not dns.message.from_wire(then.value.plain).options


def _policy(
    slices: list[dict[str, Any]], canary_share: int | None = None, **spec: Any
) -> CompiledPolicy:
    endpoints = [
        {"address": "10.3.0.1", "group": "main"},
        {"address": "10.3.0.2", "group": "beta"},
        {"address": "10.3.0.3", "group": "lab"},
    ]
    policy = parse_policy(policy_doc("web", endpoints, slices=slices, **spec))
    return CompiledPolicy(policy, canary_share=canary_share)


SLICES = [
    {"id": "beta", "match": {"ecs_cidrs": ["10.8.0.0/16"]}, "groups": ["beta"]},
    {"id": "lab", "match": {"client_cidrs": ["10.9.0.0/16"]}, "groups": ["lab"]},
]


@pytest.mark.parametrize(
    ("client", "slice_id"),
    [
        ("10.8.3.0/24", "beta"),  # an ECS network in ecs_cidrs
        ("10.8.0.0/16", "beta"),
        ("10.8.3.4", None),  # a client address never matches ecs_cidrs
        ("10.9.1.0/24", "lab"),  # from a trusted forwarder the ECS network is the client
        ("10.9.1.1", "lab"),
        ("::ffff:10.8.3.0/120", "beta"),  # v4-mapped, as a dual-stack socket gives
        ("10.7.0.0/24", None),
        ("0.0.0.0/0", None),
    ],
)
def test_slices_match_an_ecs_network_on_ecs_and_client_cidrs(
    client: str, slice_id: str | None
) -> None:
    policy = _policy(SLICES)
    assert policy.view_for(client).slice == slice_id
    assert policy.view_of(client).slice == slice_id


def test_the_answer_depends_on_the_client_with_address_slices_sticky_or_client_cohorts() -> None:
    assert _policy(SLICES).by_client
    assert not _policy([]).by_client
    assert _policy([], strategy="sticky").by_client
    canary = {"group": "beta", "steps": [10, 50]}
    assert not _policy([], 10, canary=canary).by_client  # random cohorts: a draw per query
    assert _policy([], 10, canary={**canary, "cohort": "client"}).by_client
    assert not _policy([], None, canary={**canary, "cohort": "client"}).by_client  # no rollout


def test_an_ecs_network_answers_its_slice_from_respond() -> None:
    policy = _policy(SLICES)
    query = dnswire.parse_query(dns.message.make_query("web.mesh.internal", "A").to_wire())
    for client, address in (("10.8.3.0/24", "10.3.0.2"), ("10.9.0.0/24", "10.3.0.3")):
        reply = dns.message.from_wire(policy.respond(query, client, random.Random(1)))
        assert reply.answer[0][0].to_text() == address


def test_the_option_bytes_are_the_rfc_layout() -> None:
    subnet = ClientSubnet(2, 56, bytes.fromhex("20010db80001ff"))
    assert ecs_option(subnet, 48) == struct.pack("!HBB", 2, 56, 48) + subnet.address
    assert subnet.key == "2001:db8:1:ff00::/56"


def test_the_key_names_the_network_sent_for_any_prefix() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        if rng.random() < 0.5:
            bits, raw = 32, ipaddress.IPv4Address(rng.getrandbits(32))
        else:  # sparse groups, so zero runs are compressed in every way
            groups = [rng.choice([0, 0, rng.getrandbits(16)]) for _ in range(8)]
            bits, raw = 128, ipaddress.IPv6Address(int("".join(f"{g:04x}" for g in groups), 16))
        network = ipaddress.ip_network((raw, rng.randint(0, bits)), strict=False)
        assert ipaddress.ip_network(parse_ecs(build_ecs(network)).key) == network
