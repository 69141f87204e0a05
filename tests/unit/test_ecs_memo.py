"""The memos on a trusted forwarder's ECS path: the parse of an ECS query (dnsmesh/dnswire.py),
the network's text and the answer's option (dnsmesh/ecs.py), and the append to our own
bare OPT. Each must give what the unmemoised path gives, for many networks, and stay bounded.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator

import dns.edns
import dns.message
import pytest

from dnsmesh import dnswire, ecs
from dnsmesh.ecs import OPTION_ECS, ClientSubnet, answer_option, ecs_option, network_text
from dnsmesh.policy import parse_policy
from dnsmesh.snapshot import CompiledPolicy
from tests.support.policies import policy_doc


def _networks() -> Iterator[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A spread of IPv4 and IPv6 networks, prefixes on and off octet boundaries."""
    for index in range(60):
        source = (0, 7, 16, 22, 24, 31, 32)[index % 7]
        address = ipaddress.IPv4Address(0x0A000000 + index * 0x10307)
        yield ipaddress.ip_network(f"{address}/{source}", strict=False)
    for index in range(60):
        source = (0, 1, 48, 56, 60, 64, 127, 128)[index % 8]
        address6 = ipaddress.IPv6Address((0x20010DB8 << 96) + index * 0x1_0000_0F0F_0000_0001)
        yield ipaddress.ip_network(f"{address6}/{source}", strict=False)


def _packet(network: ipaddress.IPv4Network | ipaddress.IPv6Network, msg_id: int, do: bool) -> bytes:
    option = dns.edns.ECSOption(str(network.network_address), network.prefixlen)
    message = dns.message.make_query(
        "web.mesh.internal", "A", use_edns=0, want_dnssec=do, options=[option]
    )
    message.id = msg_id
    return message.to_wire()


def _raised(packet: bytes) -> dnswire.WithEcs:
    with pytest.raises(dnswire.WithEcs) as caught:
        dnswire.parse_query(packet)
    return caught.value


def _policy(slices: list[dict[str, object]]) -> CompiledPolicy:
    endpoints = [{"address": "10.3.0.1", "group": "main"}, {"address": "10.3.0.2", "group": "b"}]
    return CompiledPolicy(parse_policy(policy_doc("web", endpoints, slices=slices)))


POLICIES = {
    "by-client": _policy([{"id": "b", "match": {"ecs_cidrs": ["10.0.0.0/12"]}, "groups": ["b"]}]),
    "anyone": _policy([]),
    # a refused slice answers with an EDE option in its OPT: the append falls back to the walk
    "refused": _policy([{"id": "no", "match": {"ecs_cidrs": ["0.0.0.0/0"]}, "action": "refuse"}]),
}


@pytest.mark.parametrize("do", [False, True])
def test_a_memoised_ecs_parse_and_answer_equal_the_unmemoised_ones(do: bool) -> None:
    for network in _networks():
        dnswire._ECS_TAILS.clear()
        ecs._KEYS.clear()
        ecs._OPTIONS.clear()
        fresh = _raised(_packet(network, 1, do))  # parsed in full, then memoised
        again = _raised(_packet(network, 2, do))  # from the memo, another ID
        assert again.query == fresh.query._replace(id=2)
        assert again.subnet == fresh.subnet
        assert again.plain[:2] == b"\x00\x02" and again.plain[2:] == fresh.plain[2:]
        assert dnswire.parse_query(again.plain) == again.query
        subnet = again.subnet
        assert subnet.key == network_text(subnet) == subnet.key  # the memo, then a hit
        assert ipaddress.ip_network(subnet.key) == network
        for name, policy in POLICIES.items():
            wire = policy.respond(again.query, subnet.key, random.Random(7))
            scope = subnet.source if policy.by_client else 0
            expected = dnswire.add_option(wire, OPTION_ECS, ecs_option(subnet, scope))
            assert dnswire.add_option_to_own(wire, answer_option(subnet, scope)) == expected, name
            back = dns.message.from_wire(expected)
            sent = [o for o in back.options if o.otype == OPTION_ECS]
            assert len(sent) == 1 and sent[0].scopelen == scope, name


def test_the_ecs_memos_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnswire, "ECS_MEMO_LIMIT", 8)
    monkeypatch.setattr(ecs, "MEMO_LIMIT", 8)
    dnswire._ECS_TAILS.clear()
    for index, network in enumerate(_networks()):
        subnet = _raised(_packet(network, index, False)).subnet
        assert answer_option(subnet, subnet.source)[:2] == b"\x00\x08"
        assert subnet.key
        assert len(dnswire._ECS_TAILS) <= 8
        assert len(ecs._KEYS) <= 8 and len(ecs._OPTIONS) <= 8
    # A query too big to keep (padded past TAIL_MEMO_MAX_OCTETS) is parsed each time.
    dnswire._ECS_TAILS.clear()
    padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 1000)
    option = dns.edns.ECSOption("10.8.3.0", 24)
    big = dns.message.make_query("web.mesh.internal", "A", use_edns=0, options=[padding, option])
    assert _raised(big.to_wire()).subnet == ClientSubnet(1, 24, b"\x0a\x08\x03")
    assert not dnswire._ECS_TAILS
