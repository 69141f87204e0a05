"""Slices answered by a real ``dnsmesh agent`` process from a policy file, asked by
dnspython clients bound to different loopback source addresses: by source address, by the
agent's ``--label`` (no controller), by debug label, and ``unmatched: refuse``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.integration.conftest import AgentProcess
from tests.support.policies import policy_text

Spawn = Callable[..., AgentProcess]
DOMAIN = "checkout.mesh.test"
ENDPOINTS = [
    {"address": "10.1.0.1", "group": "v1"},
    {"address": "10.2.0.1", "group": "v2"},
    {"address": "10.3.0.1", "group": "v3"},
    {"address": "10.4.0.1", "group": "v4"},
    {"address": "10.4.0.2", "group": "v4", "weight": 5},
]
SLICES = [
    {"id": "near", "match": {"client_cidrs": ["127.0.0.2/32"]}, "groups": ["v2"]},
    {
        "id": "zone-a",
        "match": {"client_cidrs": ["127.0.0.3/32"], "node_labels": {"zone": "a"}},
        "groups": ["v3"],
        "ttl": 7,
    },
    {"id": "zone-b", "match": {"node_labels": {"zone": "b"}}, "groups": ["v1"]},
    {
        "id": "beta",
        "match": {"debug_label": "beta"},
        "groups": ["v4"],
        # the slice's weights replace the endpoints': 10.4.0.2 (5 by the policy) gets none
        "weights": {"10.4.0.2": 0},
    },
]


def ask(port: int, name: str, source: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3, source=source)


def answer(response: dns.message.Message) -> tuple[str, list[str], int]:
    """(owner name, addresses, ttl) of a one-RRset answer."""
    (rrset,) = response.answer
    return rrset.name.to_text(), sorted(r.address for r in rrset), rrset.ttl


def refused_with_ede(response: dns.message.Message) -> bool:
    codes = [o.code for o in response.options if isinstance(o, dns.edns.EDEOption)]
    return response.rcode() == dns.rcode.REFUSED and codes == [dns.edns.EDECode.PROHIBITED]


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    text = policy_text("checkout", ENDPOINTS, domain=DOMAIN, slices=SLICES, unmatched="refuse")
    (folder / "checkout.yaml").write_text(text)
    return folder


def test_slices_by_source_node_label_and_debug_label(policies: Path, spawn_agent: Spawn) -> None:
    # --label without --controller: the labels are this node's for node-label slices
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--label", "zone=a", "--no-probes",
    )  # fmt: skip
    port = agent.addresses[0].port
    assert answer(ask(port, DOMAIN, "127.0.0.2")) == (f"{DOMAIN}.", ["10.2.0.1"], 30)
    assert answer(ask(port, DOMAIN, "127.0.0.3")) == (f"{DOMAIN}.", ["10.3.0.1"], 7)
    # zone-b is not this node's: 127.0.0.4 matches nothing and is refused
    assert refused_with_ede(ask(port, DOMAIN, "127.0.0.4"))
    assert refused_with_ede(ask(port, DOMAIN, "127.0.0.1"))
    # debug routing: the beta slice from any client, owned by the name asked
    for source in ("127.0.0.1", "127.0.0.2"):
        assert answer(ask(port, f"beta.{DOMAIN}", source)) == (
            f"beta.{DOMAIN}.",
            ["10.4.0.1"],
            30,
        )
    assert agent.stop() == 0


def test_node_label_slices_follow_the_agents_labels(policies: Path, spawn_agent: Spawn) -> None:
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--label", "zone=b", "--no-probes",
    )  # fmt: skip
    port = agent.addresses[0].port
    # zone-a's slice is dropped here; zone-b's (no client_cidrs) takes every other client
    assert answer(ask(port, DOMAIN, "127.0.0.3")) == (f"{DOMAIN}.", ["10.1.0.1"], 30)
    assert answer(ask(port, DOMAIN, "127.0.0.2")) == (f"{DOMAIN}.", ["10.2.0.1"], 30)
    assert agent.stop() == 0
