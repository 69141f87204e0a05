"""Policy answers through the real agent over real loopback sockets."""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.integration.conftest import RunningAgent, policy_yaml
from tests.integration.fakedns import FakeUpstream

StartAgent = Callable[..., RunningAgent]


def addresses(response: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in response.answer for rr in rrset]


def burst(agent: RunningAgent, name: str, count: int, source: str | None = None) -> list[str]:
    """Send ``count`` queries over one UDP socket, a window at a time; the first address of each."""
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if source:
            sock.bind((source, 0))
        sock.settimeout(3)
        window = 100
        for start in range(0, count, window):
            ids = set()
            for i in range(start, min(count, start + window)):
                q = dns.message.make_query(name, "A")
                q.id = i & 0xFFFF
                ids.add(q.id)
                sock.sendto(q.to_wire(), (agent.host, agent.port))
            while ids:
                data = sock.recv(4096)
                r = dns.message.from_wire(data)
                ids.discard(r.id)
                out.append(addresses(r)[0])
    return out


def test_weighted_split_holds_within_a_few_percent(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        policy_yaml(
            "split",
            "split.mesh.test",
            [{"address": "10.0.0.1", "weight": 80}, {"address": "10.0.0.2", "weight": 20}],
        )
    )
    agent = start_agent(policies=path)
    picks = collections.Counter(burst(agent, "split.mesh.test", 4000))
    assert sum(picks.values()) == 4000
    assert abs(picks["10.0.0.1"] / 4000 - 0.80) < 0.03, picks


def test_sticky_keeps_each_client_on_its_endpoint(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    endpoints = [{"address": f"10.0.1.{i}", "weight": 1} for i in range(1, 5)]
    path.write_text(policy_yaml("cart", "cart.mesh.test", endpoints, strategy="sticky"))
    agent = start_agent(policies=path)
    seen: dict[str, set[str]] = {}
    for client in range(1, 41):
        source = f"127.0.{client}.{client + 7}"
        seen[source] = {
            addresses(agent.query("cart.mesh.test", source=source))[0] for _ in range(5)
        }
    assert all(len(picks) == 1 for picks in seen.values()), seen
    # Different clients spread over the endpoints (hashing, not one fixed answer).
    assert len({next(iter(p)) for p in seen.values()}) >= 3


def test_failover_answers_the_lowest_priority(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        policy_yaml(
            "db",
            "db.mesh.test",
            [{"address": "10.0.2.2", "priority": 1}, {"address": "10.0.2.1", "priority": 0}],
            strategy="failover",
        )
    )
    agent = start_agent(policies=path)
    assert {addresses(agent.query("db.mesh.test"))[0] for _ in range(30)} == {"10.0.2.1"}


def test_slices_follow_the_client_address(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        policy_yaml(
            "checkout",
            "checkout.mesh.test",
            [
                {"address": "10.0.3.1", "weight": 1, "group": "v1"},
                {"address": "10.0.3.2", "weight": 1, "group": "v2"},
            ],
            slices=[
                {"id": "beta", "match": {"client_cidrs": ["127.0.5.0/24"]}, "groups": ["v2"]},
                {"id": "blocked", "match": {"client_cidrs": ["127.0.6.0/24"]}, "action": "refuse"},
            ],
        )
    )
    agent = start_agent(policies=path)
    beta = {addresses(agent.query("checkout.mesh.test", source="127.0.5.9"))[0] for _ in range(20)}
    assert beta == {"10.0.3.2"}
    refused = agent.query("checkout.mesh.test", source="127.0.6.9")
    assert refused.rcode() == dns.rcode.REFUSED
    others = {
        addresses(agent.query("checkout.mesh.test", source="127.0.7.9"))[0] for _ in range(40)
    }
    assert others == {"10.0.3.1", "10.0.3.2"}


def test_nodata_with_soa_for_types_without_endpoints(
    tmp_path: Path, start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("v4", "v4.mesh.test", [{"address": "10.0.4.1"}], ttl=7))
    agent = start_agent(upstreams=[upstream], policies=path)
    for qtype in ("AAAA", "HTTPS", "MX"):
        r = agent.query("v4.mesh.test", qtype)
        assert r.rcode() == dns.rcode.NOERROR, qtype
        assert r.answer == []
        assert r.authority[0].rdtype == dns.rdatatype.SOA
        assert r.flags & dns.flags.AA
    nodata_soa = r.authority[0]
    (soa,) = agent.query("v4.mesh.test", "SOA").answer  # the apex holds the SOA it names
    assert soa.name == nodata_soa.name and soa[0] == nodata_soa[0]
    assert upstream.count() == 0  # a policy name is never forwarded


def test_question_case_is_echoed_byte_for_byte(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("case", "case.mesh.test", [{"address": "10.0.5.1"}]))
    agent = start_agent(policies=path)
    q = dns.message.make_query("CaSe.MeSh.TeSt", "A")
    wire = dns.query.udp(q, agent.host, port=agent.port, timeout=3)
    assert wire.question[0].name.to_text() == "CaSe.MeSh.TeSt."
    raw = q.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(raw, (agent.host, agent.port))
        reply = sock.recv(4096)
    assert b"\x04CaSe\x04MeSh\x04TeSt\x00" in reply


def test_opt_only_when_the_query_had_one(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("opt", "opt.mesh.test", [{"address": "10.0.6.1"}]))
    agent = start_agent(policies=path)
    assert agent.query("opt.mesh.test", edns=False).edns == -1
    with_opt = agent.query("opt.mesh.test", edns=True)
    assert with_opt.edns == 0
    assert addresses(with_opt) == ["10.0.6.1"]


def test_large_answer_truncates_over_udp_and_is_whole_over_tcp(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    path = tmp_path / "p.yaml"
    endpoints = [{"address": f"2001:db8::{i:x}"} for i in range(1, 33)]
    path.write_text(policy_yaml("big", "big.mesh.test", endpoints, answers=32))
    agent = start_agent(policies=path)
    # 32 AAAA records: 32 * 28 octets = 896 > 512, the limit of a client without EDNS.
    small = agent.query("big.mesh.test", "AAAA", edns=False)
    assert small.flags & dns.flags.TC
    assert small.answer == []
    fits = agent.query("big.mesh.test", "AAAA", edns=True, payload=1232)
    assert not fits.flags & dns.flags.TC
    assert len(addresses(fits)) == 32
    whole = agent.query("big.mesh.test", "AAAA", tcp=True, edns=False)
    assert not whole.flags & dns.flags.TC
    assert len(addresses(whole)) == 32


def test_wildcard_and_ipv6_listener(tmp_path: Path, start_agent: StartAgent) -> None:
    from agent.config import HostPort

    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("tenants", "*.api.mesh.test", [{"address": "10.0.7.1"}]))
    agent = start_agent(policies=path, listen=(HostPort("::1", 0), HostPort("127.0.0.1", 0)))
    v6 = agent.server.addresses[0]
    q = dns.message.make_query("acme.api.mesh.test", "A")
    for response in (
        dns.query.udp(q, v6.host, port=v6.port, timeout=3),
        dns.query.tcp(q, v6.host, port=v6.port, timeout=3),
    ):
        assert addresses(response) == ["10.0.7.1"]
    v4 = agent.server.addresses[1]
    assert addresses(dns.query.udp(q, v4.host, port=v4.port, timeout=3)) == ["10.0.7.1"]


def test_special_use_names_are_answered_here(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    agent = start_agent(upstreams=[upstream])
    assert addresses(agent.query("localhost", "A")) == ["127.0.0.1"]
    assert addresses(agent.query("db.localhost", "AAAA")) == ["::1"]
    assert agent.query("localhost", "MX").rcode() == dns.rcode.NOERROR
    for name in ("invalid", "foo.invalid", "printer.local"):
        r = agent.query(name)
        assert r.rcode() == dns.rcode.NXDOMAIN, name
        assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
    assert upstream.count() == 0
    assert agent.server.counts()["local"] == 6


@pytest.mark.timing  # a stall bound: alone, after the parallel part
def test_a_large_reload_does_not_stall_answers(tmp_path: Path, start_agent: StartAgent) -> None:
    import json
    import time

    from tests.integration.conftest import write_atomically
    from tests.support.polling import wait_until

    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "a.yaml").write_text(policy_yaml("live", "live.mesh.test", [{"address": "10.0.8.1"}]))
    agent = start_agent(policies=folder)
    many = [
        json.dumps(
            {
                "apiVersion": "dnsmesh/v1",
                "kind": "Policy",
                "metadata": {"name": f"bulk{i}"},
                "spec": {
                    "domain": f"bulk{i}.mesh.test",
                    "endpoints": [{"address": f"10.9.{i // 200}.{i % 200 + j}"} for j in range(4)],
                },
            }
        )
        for i in range(400)
    ]
    write_atomically(folder / "b.yaml", "\n---\n".join(many))
    worst = 0.0
    began = time.monotonic()
    # Until the reload lands, the live policy keeps being answered without a stall.
    while time.monotonic() - began < 10:
        sent = time.monotonic()
        assert addresses(agent.query("live.mesh.test")) == ["10.0.8.1"]
        worst = max(worst, time.monotonic() - sent)
        if agent.server.snapshot.lookup(b"\x07bulk399\x04mesh\x04test\x00") is not None:
            break
    reload_took = time.monotonic() - began
    wait_until(lambda: len(agent.server.snapshot) == 401, 1, "the reload")
    assert worst < 0.25, (worst, reload_took)
