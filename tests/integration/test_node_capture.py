"""`dnsmesh node capture on|off` in a network namespace made here: a client asking another
address on port 53 (192.0.2.53, out a veth whose far end has no address: nothing answers) is
answered by the agent, over UDP and TCP, and so is one asking a live server; the agent's own
upstream queries, marked, are not captured (no loop); `off` deletes our table and only it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import DNSMESH, AgentProcess
from tests.support.netns import NetNs, dnsmasq, network_namespace
from tests.support.policies import policy_text

UPSTREAM = "127.0.0.2"  # dnsmasq: the agent's upstream, a live server on port 53
ELSEWHERE = "192.0.2.53"  # out a veth to nobody: nothing answers there
POLICY = ("web.mesh.test", "10.1.2.3")
EXTERNAL = ("ext.test", "203.0.113.7")


@pytest.fixture
def ns() -> Iterator[NetNs]:
    with network_namespace() as made:
        # A veth pair whose far end has no address: datagrams to 192.0.2.53 leave v0 (from
        # 192.0.2.1) and nobody answers. (veth, not dummy: the dummy module may be absent.)
        made.run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        made.run("ip", "addr", "add", "192.0.2.1/24", "dev", "v0")
        made.run("ip", "link", "set", "v1", "up")
        made.run("ip", "link", "set", "v0", "up")
        with dnsmasq(made, UPSTREAM, f"/{EXTERNAL[0]}/{EXTERNAL[1]}"):
            yield made


def dig(ns: NetNs, server: str, name: str, *flags: str) -> str:
    """The answer's first address, or dig's complaint (a timeout, a status)."""
    out = ns.run("dig", f"@{server}", "+time=1", "+tries=1", *flags, name, check=False)
    for line in out.splitlines():
        if line.startswith(name + ".") and "\tA\t" in line:
            return line.split()[-1]
        if "status:" in line and "NOERROR" not in line:
            return line.split("status:")[1].split(",")[0].strip()
    return "no answer" if "timed out" in out or "no servers" in out else out


def capture(ns: NetNs, *args: str) -> str:
    done = subprocess.run(
        [*ns.prefix, DNSMESH, "node", "capture", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_capture_redirects_port_53_to_the_agent_but_not_the_agents_own_queries(
    ns: NetNs, tmp_path: Path
) -> None:
    ns.run("nft", "add", "table", "inet", "someone_else")
    assert dig(ns, ELSEWHERE, POLICY[0]) == "no answer"
    capture(ns, "on", "--agent", "127.0.0.1:53")
    capture(ns, "on", "--agent", "127.0.0.1:53")  # again: the table is replaced, not doubled
    assert ns.run("nft", "list", "table", "inet", "dnsmesh").count("dnat ip to") == 1

    policies = tmp_path / "web.json"
    policies.write_text(policy_text("web", [{"address": POLICY[1]}], domain=POLICY[0]))
    # Started with capture on: its start-up loop check asks the upstream through the rules.
    agent = AgentProcess(
        [
            "--listen", "127.0.0.1:53",
            "--upstream", UPSTREAM,
            "--socket-mark", "0x646d",
            "--policies", str(policies),
            # captured clients keep their own source address: the node's
            "--allow", "127.0.0.0/8", "--allow", "192.0.2.0/24",
        ],
        prefix=ns.prefix,
    )  # fmt: skip
    try:
        agent.wait_event("agent.started")
        assert dig(ns, ELSEWHERE, POLICY[0]) == POLICY[1]
        assert dig(ns, ELSEWHERE, POLICY[0], "+tcp") == POLICY[1]
        assert dig(ns, UPSTREAM, POLICY[0]) == POLICY[1]  # a live server's traffic too
        # Forwarded by the agent to port 53 and answered there, not captured back into it.
        assert dig(ns, ELSEWHERE, EXTERNAL[0]) == EXTERNAL[1]

        assert capture(ns, "off").startswith("capture off")
        tables = ns.run("nft", "list", "tables")
        assert "dnsmesh" not in tables and "someone_else" in tables
        assert dig(ns, ELSEWHERE, POLICY[0]) == "no answer"
        assert dig(ns, UPSTREAM, POLICY[0]) == "REFUSED"  # dnsmasq itself, again
    finally:
        assert agent.stop() == 0
