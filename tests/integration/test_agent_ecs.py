"""The real ``dnsmesh agent`` process with EDNS Client Subnet and per-slice resource limits:
a trusted forwarder's ECS network picks its slice and gets the scope back, an untrusted
sender's ECS is ignored, dig +subnet works too, and a limited slice answers its burst and
refuses the rest, as /metrics counts."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from agent.querylog_config import QueryLogConfig
from dnsmesh.admission import parse_network
from dnsmesh.cookies import OPTION_COOKIE
from tests.integration.conftest import AgentProcess, RunningAgent, policy_yaml
from tests.support.polling import wait_until

Spawn = Callable[..., AgentProcess]
StartAgent = Callable[..., RunningAgent]
TRUSTED = "127.0.0.1"  # the forwarder the agent is told to trust
UNTRUSTED = "127.0.0.3"
LIMITED = "127.0.0.5"  # the one client of the limited slice
ENDPOINTS = [
    {"address": "10.3.0.1", "group": "main"},
    {"address": "10.3.0.2", "group": "beta"},
    {"address": "10.3.0.3", "group": "lab"},
]
SLICES = [
    {"id": "beta", "match": {"ecs_cidrs": ["10.8.0.0/16"]}, "groups": ["beta"]},
    {"id": "lab", "match": {"client_cidrs": ["10.9.0.0/16"]}, "groups": ["lab"]},
    # What an untrusted sender gets by its own address, whatever its ECS option says.
    {"id": "untrusted", "match": {"client_cidrs": [f"{UNTRUSTED}/32"]}, "groups": ["main"]},
    {
        "id": "burst",
        "match": {"client_cidrs": [f"{LIMITED}/32"]},
        "groups": ["main"],
        "resource_limits": {"qps": 5, "burst": 5},
    },
]


@pytest.fixture
def agent(tmp_path: Path, spawn_agent: Spawn) -> AgentProcess:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "web.yaml").write_text(
        policy_yaml("web", "web.mesh.test", ENDPOINTS, slices=SLICES, ttl=30)
    )
    (policies / "flat.yaml").write_text(policy_yaml("flat", "flat.mesh.test", ENDPOINTS[:1]))
    return spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--trust-ecs-from", f"{TRUSTED}/32", "--trust-ecs-from", "::1",
    )  # fmt: skip


def _ask(
    agent: AgentProcess, name: str, source: str, subnet: str | None = None
) -> dns.message.Message:
    options = [] if subnet is None else [dns.edns.ECSOption.from_text(subnet)]
    query = dns.message.make_query(name, "A", use_edns=0, options=options)
    port = agent.addresses[0].port
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3, source=source)


def _subnet(reply: dns.message.Message) -> dns.edns.ECSOption | None:
    found = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    assert len(found) <= 1
    return found[0] if found else None


def _addresses(reply: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in reply.answer for rr in rrset]


def test_a_trusted_forwarders_ecs_picks_the_slice_and_gets_the_scope(agent: AgentProcess) -> None:
    for subnet, address in (("10.8.3.0/24", "10.3.0.2"), ("10.9.200.0/22", "10.3.0.3")):
        reply = _ask(agent, "web.mesh.test", TRUSTED, subnet)
        assert _addresses(reply) == [address]
        assert reply.answer[0].ttl == 30  # the policy's TTL
        echoed = _subnet(reply)
        assert echoed is not None
        network, source = subnet.split("/")
        prefix = int(source)
        # Family, source and address copied; the scope is the whole source prefix.
        assert (echoed.address, echoed.srclen, echoed.scopelen) == (network, prefix, prefix)
    # A policy whose answer does not depend on the client: scope 0, any client may have it.
    echoed = _subnet(_ask(agent, "flat.mesh.test", TRUSTED, "10.8.3.0/24"))
    assert echoed is not None and (echoed.srclen, echoed.scopelen) == (24, 0)
    # No ECS option in the query, none in the answer.
    assert _subnet(_ask(agent, "web.mesh.test", TRUSTED)) is None


def test_an_untrusted_senders_ecs_is_ignored(agent: AgentProcess) -> None:
    for _ in range(5):
        reply = _ask(agent, "web.mesh.test", UNTRUSTED, "10.8.3.0/24")
        assert _addresses(reply) == ["10.3.0.1"]  # its own address's slice, not beta
        assert _subnet(reply) is None


def test_a_malformed_ecs_option_is_formerr(agent: AgentProcess) -> None:
    bad = dns.edns.GenericOption(8, b"\x00\x01\x18\x00\x0a\x08")  # a /24 in two octets
    query = dns.message.make_query("web.mesh.test", "A", use_edns=0, options=[bad])
    reply = dns.query.udp(query, "127.0.0.1", port=agent.addresses[0].port, timeout=3)
    assert reply.rcode() == dns.rcode.FORMERR


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed")
def test_dig_subnet_gets_the_slice_and_the_scope(agent: AgentProcess) -> None:
    port = agent.addresses[0].port
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "-b", TRUSTED, "+time=2", "+tries=1",
         "+subnet=10.8.3.0/24", "web.mesh.test", "A"],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout  # fmt: skip
    assert "CLIENT-SUBNET: 10.8.3.0/24/24" in out, out
    assert re.search(r"^web\.mesh\.test\.\s+30\s+IN\s+A\s+10\.3\.0\.2$", out, re.M), out


def _limited_total(agent: AgentProcess) -> float:
    admin = agent.wait_event("agent.admin_listening")[0]["address"]
    text = httpx.get(f"http://{admin}/metrics", timeout=5).text
    found = re.search(
        r'^dnsmesh_agent_slice_limited_total\{policy="web",slice="burst"\} (\S+)$', text, re.M
    )
    assert found, text
    return float(found.group(1))


@pytest.mark.timing
def test_a_limited_slice_answers_its_burst_and_refuses_the_rest(agent: AgentProcess) -> None:
    assert _limited_total(agent) == 0
    began = time.monotonic()
    rcodes = [_ask(agent, "web.mesh.test", LIMITED).rcode() for _ in range(50)]
    elapsed = time.monotonic() - began
    answered = rcodes.count(dns.rcode.NOERROR)
    refused = rcodes.count(dns.rcode.REFUSED)
    assert answered + refused == 50
    # The burst, plus what 5 qps refilled while we asked (slow on a loaded machine), + 1
    # for the token that was nearly there.
    assert 5 <= answered <= 5 + math.ceil(5 * elapsed) + 1, (answered, elapsed)
    assert refused == _limited_total(agent)
    # Other clients of the same policy are not limited by that slice.
    assert {_ask(agent, "web.mesh.test", UNTRUSTED).rcode() for _ in range(10)} == {
        dns.rcode.NOERROR
    }


def test_ecs_with_a_cookie_over_tcp_and_its_query_log_line(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    policies = tmp_path / "web.yaml"
    policies.write_text(policy_yaml("web", "web.mesh.test", ENDPOINTS, slices=SLICES))
    log = tmp_path / "queries.log"
    agent = start_agent(
        policies=policies,
        query_log=QueryLogConfig(str(log)),
        trust_ecs_from=(parse_network(f"{TRUSTED}/32"),),
    )
    options = [
        dns.edns.GenericOption(OPTION_COOKIE, b"c" * 8),
        dns.edns.ECSOption("10.8.3.0", 24),
    ]
    query = dns.message.make_query("web.mesh.test", "A", use_edns=0, options=options)
    reply = dns.query.tcp(query, agent.host, port=agent.port, timeout=3, source=TRUSTED)
    assert _addresses(reply) == ["10.3.0.2"]
    echoed = _subnet(reply)
    assert echoed is not None and echoed.scopelen == 24
    assert [o for o in reply.options if isinstance(o, dns.edns.CookieOption)]
    lines = wait_until(lambda: log.exists() and log.read_text().splitlines(), 5.0, "a line")
    line = json.loads(lines[0])
    assert (line["source"], line["client"]) == ("policy", "10.8.3.0/24")
    assert line["decision"]["slice"] == "beta"
