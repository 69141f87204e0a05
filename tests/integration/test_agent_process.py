"""The real ``dnsmesh agent`` process: dig, reload, bad files, SIGTERM drain, SO_REUSEPORT."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from tests.integration.conftest import AgentProcess, policy_yaml, write_atomically
from tests.integration.fakedns import FakeUpstream
from tests.support.polling import wait_until
from tests.support.ports import free_port

Spawn = Callable[..., AgentProcess]
DIG = "/usr/bin/dig"


def dig(port: int, *args: str, host: str = "127.0.0.1") -> str:
    out = subprocess.run(
        [DIG, f"@{host}", "-p", str(port), "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout


def ask(port: int, name: str, qtype: str = "A", host: str = "127.0.0.1") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, qtype), host, port=port, timeout=2)


def first_address(response: dns.message.Message) -> str | None:
    return response.answer[0][0].to_text() if response.answer else None


def test_dig_against_the_agent_process(
    tmp_path: Path, spawn_agent: Spawn, upstream: FakeUpstream
) -> None:
    upstream.answer("www.example.test", "A", "192.0.2.5")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "web.yaml").write_text(
        policy_yaml("web", "web.mesh.test", [{"address": "10.3.0.1"}])
    )
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--listen", "[::1]:0",
        "--upstream", upstream.address,
    )  # fmt: skip
    v4, v6 = agent.addresses
    assert dig(v4.port, "+short", "web.mesh.test").split() == ["10.3.0.1"]
    assert dig(v4.port, "+short", "+tcp", "web.mesh.test").split() == ["10.3.0.1"]
    assert dig(v6.port, "+short", "web.mesh.test", host="::1").split() == ["10.3.0.1"]
    assert dig(v4.port, "+short", "www.example.test").split() == ["192.0.2.5"]
    assert "status: NXDOMAIN" in dig(v4.port, "nothing.invalid")
    assert agent.stop() == 0
    assert agent.events("agent.stopped")
    # --log-format json: every line is one JSON event.
    assert len(agent.logs) == len(agent.raw) >= 5


def test_policy_files_reload_within_two_seconds(
    tmp_path: Path, spawn_agent: Spawn, upstream: FakeUpstream
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", upstream.address
    )  # fmt: skip
    port = agent.addresses[0].port
    assert ask(port, "new.mesh.test").rcode() == dns.rcode.NXDOMAIN  # forwarded: no policy yet

    file = policies / "new.yaml"
    began = time.monotonic()
    write_atomically(file, policy_yaml("new", "new.mesh.test", [{"address": "10.3.1.1"}], ttl=0))
    wait_until(lambda: first_address(ask(port, "new.mesh.test")) == "10.3.1.1", 2.0, "add")
    added = time.monotonic() - began

    write_atomically(file, policy_yaml("new", "new.mesh.test", [{"address": "10.3.1.2"}], ttl=0))
    wait_until(lambda: first_address(ask(port, "new.mesh.test")) == "10.3.1.2", 2.0, "change")

    file.unlink()
    wait_until(lambda: ask(port, "new.mesh.test").rcode() == dns.rcode.NXDOMAIN, 2.0, "removal")
    assert added < 2.0
    assert len(agent.events("policy.reloaded")) >= 4  # start, add, change, remove


def test_a_bad_file_is_reported_and_the_last_good_policies_stay(
    tmp_path: Path, spawn_agent: Spawn
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    good = policy_yaml("keep", "keep.mesh.test", [{"address": "10.3.2.1"}])
    (policies / "keep.yaml").write_text(good)
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"
    )
    port = agent.addresses[0].port
    assert first_address(ask(port, "keep.mesh.test")) == "10.3.2.1"

    bad = policy_yaml("broken", "broken.mesh.test", [{"address": "10.3.2.2", "weight": -1}])
    write_atomically(
        policies / "zz-broken.yaml", "---\n" + good.replace("keep", "other") + "\n---\n" + bad
    )
    failure = agent.wait_event("policy.reload_failed", timeout=3)[0]
    assert failure["file"].endswith("zz-broken.yaml")
    assert failure["document"] == 2
    assert failure["field"] == "spec.endpoints[0].weight"
    assert failure["level"] == "error"
    # Nothing of the bad file applied (not even its good first document), the rest serves on.
    assert first_address(ask(port, "keep.mesh.test")) == "10.3.2.1"
    assert ask(port, "other.mesh.test").rcode() == dns.rcode.SERVFAIL  # forwarded to nowhere

    (policies / "zz-broken.yaml").unlink()
    write_atomically(policies / "keep.yaml", good.replace("10.3.2.1", "10.3.2.9"))
    wait_until(lambda: first_address(ask(port, "keep.mesh.test")) == "10.3.2.9", 2.0, "recovery")


def test_sigterm_drains_in_flight_queries_and_exits_0(
    spawn_agent: Spawn, upstream: FakeUpstream
) -> None:
    upstream.answer("slow.example.test", "A", "192.0.2.9", delay=0.8)
    agent = spawn_agent(
        "--listen", "127.0.0.1:0", "--upstream", upstream.address,
        "--attempt-timeout", "2", "--query-timeout", "3", "--drain-timeout", "3",
    )  # fmt: skip
    port = agent.addresses[0].port
    query = dns.message.make_query("slow.example.test", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        wait_until(lambda: upstream.count("slow.example.test") == 1, 3, "the forward")
        agent.proc.send_signal(signal.SIGTERM)
        reply = dns.message.from_wire(sock.recv(4096))
    assert reply.id == query.id and first_address(reply) == "192.0.2.9"
    assert agent.proc.wait(5) == 0
    stopping = agent.events("agent.stopping")
    assert stopping and stopping[0]["signal"] == "SIGTERM"
    assert agent.events("agent.stopped")[0]["abandoned"] == 0


def test_two_agents_share_a_port_with_so_reuseport(tmp_path: Path, spawn_agent: Spawn) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(policy_yaml("shared", "shared.mesh.test", [{"address": "10.3.3.1"}]))
    port = free_port()
    flags = (
        "--policies",
        str(policies),
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        "127.0.0.1:9",
    )
    old = spawn_agent(*flags)
    new = spawn_agent(*flags)  # starts beside the old one (a restart overlapping)
    assert old.proc.poll() is None and new.proc.poll() is None
    assert old.stop() == 0
    # The new process serves alone now, over UDP and TCP.
    assert first_address(ask(port, "shared.mesh.test")) == "10.3.3.1"
    tcp = dns.query.tcp(
        dns.message.make_query("shared.mesh.test", "A"), "127.0.0.1", port=port, timeout=2
    )
    assert first_address(tcp) == "10.3.3.1"


def test_bad_flags_exit_nonzero_with_a_message(tmp_path: Path) -> None:
    from tests.integration.conftest import DNSMESH

    result = subprocess.run(
        [DNSMESH, "agent", "--listen", "nonsense", "--upstream", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 1
    assert "nonsense" in result.stderr


def test_a_taken_port_is_reported_not_a_traceback() -> None:
    from tests.integration.conftest import DNSMESH

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody may share it
        port = holder.getsockname()[1]
        result = subprocess.run(
            [DNSMESH, "agent", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_shipped_example_policies_load_and_answer(spawn_agent: Spawn) -> None:
    from tests.integration.conftest import REPO

    agent = spawn_agent(
        "--policies", str(REPO / "policies"), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"
    )  # fmt: skip
    assert agent.events("policy.reloaded")[0]["policies"] == 4
    port = agent.addresses[0].port
    assert first_address(ask(port, "checkout.mesh.internal")) in {"127.0.10.1", "127.0.10.2"}
    assert first_address(ask(port, "orders-db.mesh.internal")) == "127.0.20.1"
    tenant = ask(port, "acme.api.mesh.internal")
    assert len(tenant.answer[0]) == 2  # answers: 2
