"""The agent process where listening is hard: no IPv6 on the host, addresses in use, and
bursts of datagrams that arrive while its loop is not reading."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import pytest

from tests.integration.conftest import DNSMESH, AgentProcess, policy_yaml

# Wall-clock bounds: run alone after the parallel part of the suite (scripts/test).
pytestmark = pytest.mark.timing

Spawn = Callable[..., AgentProcess]


# -- hosts without IPv6 ----------------------------------------------------------------------


def _namespaces_usable() -> str | None:
    """Why a network namespace without IPv6 cannot be made here, or None when it can."""
    for tool in ("unshare", "nsenter", "ip", "sysctl", "dig"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["unshare", "-n", "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    return None


class NamespacedAgent(AgentProcess):
    """``dnsmesh agent`` in a network namespace of its own where lo has IPv4 only."""

    def __init__(self, args: list[str]) -> None:  # AgentProcess's, under unshare
        setup = (
            "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
            '&& sysctl -qw net.ipv6.conf.lo.disable_ipv6=1 && exec "$@"'
        )
        # unshare and sh exec in turn, so the pid is the agent's and SIGTERM reaches it.
        self.args = ["unshare", "-n", "sh", "-c", setup, "sh", DNSMESH, "agent",
                     "--log-format", "json", *args]  # fmt: skip
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.logs: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def dig(self, port: int, name: str) -> list[str]:
        out = subprocess.run(
            ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "dig", "@127.0.0.1", "-p",
             str(port), "+short", "+time=2", "+tries=1", name],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return out.stdout.split()


@pytest.fixture
def namespaced() -> Iterator[Callable[[list[str]], NamespacedAgent]]:
    reason = _namespaces_usable()
    if reason is not None:
        pytest.skip(f"no network namespace without IPv6: {reason}")
    started: list[NamespacedAgent] = []

    def start(args: list[str]) -> NamespacedAgent:
        agent = NamespacedAgent(args)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def test_without_ipv6_the_agent_serves_on_ipv4_and_says_what_it_skipped(
    tmp_path: Path, namespaced: Callable[[list[str]], NamespacedAgent]
) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(policy_yaml("web", "web.mesh.test", [{"address": "10.3.0.1"}]))
    agent = namespaced(
        ["--policies", str(policies), "--listen", "127.0.0.1:0", "--listen", "[::1]:0",
         "--upstream", "127.0.0.1:9", "--no-loop-check"]
    )  # fmt: skip
    started = agent.wait_event("agent.started")[0]
    assert len(started["listen"]) == 1 and started["listen"][0].startswith("127.0.0.1:")
    skipped = agent.events("agent.listen_skipped")
    assert [s["address"] for s in skipped] == ["[::1]:0"]
    assert "Cannot assign requested address" in skipped[0]["error"]
    port = agent.addresses[0].port
    assert agent.dig(port, "web.mesh.test") == ["10.3.0.1"]
    assert agent.stop() == 0


def test_without_ipv6_an_agent_with_only_ipv6_addresses_fails_and_says_why(
    namespaced: Callable[[list[str]], NamespacedAgent],
) -> None:
    agent = namespaced(["--listen", "[::1]:0", "--upstream", "127.0.0.1:9", "--no-loop-check"])
    assert agent.proc.wait(15) == 1
    agent.stop()
    out = "".join(agent.raw)
    assert "cannot listen on any --listen address: [::1]:0: Cannot assign requested address" in out
    assert not agent.events("agent.started")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_an_address_in_use_still_fails_the_start_loudly(spawn_agent: Spawn, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as holder:  # no SO_REUSEPORT: exclusive
        holder.bind((host, 0))
        port = holder.getsockname()[1]
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        other = "[::1]:0" if ":" not in host else "127.0.0.1:0"
        agent = spawn_agent(
            "--listen", other, "--listen", listen, "--upstream", "127.0.0.1:9",
            "--no-loop-check", wait=False,
        )  # fmt: skip
        assert agent.proc.wait(15) == 1
    out = "".join(agent.raw)
    assert f"cannot listen on {listen}: Address already in use" in out
    assert not agent.events("agent.started")


# -- UDP bursts ------------------------------------------------------------------------------

BURST = 1500  # ~3.5 MB of kernel buffer at ~2.3 KB a datagram: 16x what the default holds
PADDING = 1100  # bytes of EDNS padding (RFC 7830) per query: a large datagram


def _burst_received(agent: AgentProcess) -> int:
    """Send BURST large queries while the agent is stopped (SIGSTOP: its loop reads
    nothing, as when it is busy), let it run again, and count the answers that come back."""
    port = agent.addresses[0].port
    query = dns.message.make_query(
        "web.mesh.test", "A", use_edns=0, options=[dns.edns.GenericOption(12, b"\0" * PADDING)]
    )
    wire = query.to_wire()
    assert len(wire) > PADDING
    answers = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        client.connect(("127.0.0.1", port))
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(BURST):
                client.send(wire)
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        client.settimeout(1.0)
        deadline = time.monotonic() + 20
        while answers < BURST and time.monotonic() < deadline:
            try:
                client.recv(4096)
            except TimeoutError:
                break
            answers += 1
    return answers


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    file = tmp_path / "p.yaml"
    file.write_text(policy_yaml("web", "web.mesh.test", [{"address": "10.3.0.1"}]))
    return file


def test_a_burst_of_large_datagrams_is_queued_not_dropped(
    spawn_agent: Spawn, policies: Path
) -> None:
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--no-loop-check",
    )  # fmt: skip
    if agent.events("agent.udp_rcvbuf_capped"):
        pytest.skip("net.core.rmem_max caps the buffer and the agent lacks CAP_NET_ADMIN here")
    received = _burst_received(agent)
    print(f"\nburst of {BURST} datagrams, default --udp-rcvbuf: {received} answered")
    assert received >= BURST * 0.98
    granted = agent.events("agent.listening")[0]["udp_rcvbuf"]
    assert granted >= 4 * 1024 * 1024  # what the kernel reports: 8 MiB, the 4 MiB doubled


def test_with_the_os_default_buffer_the_same_burst_is_dropped(
    spawn_agent: Spawn, policies: Path
) -> None:
    """The control: what the test above would see without the larger buffer."""
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--no-loop-check", "--udp-rcvbuf", "0",
    )  # fmt: skip
    received = _burst_received(agent)
    print(f"\nburst of {BURST} datagrams, --udp-rcvbuf 0: {received} answered")
    default = Path("/proc/sys/net/core/rmem_default").read_text().strip()
    assert agent.events("agent.listening")[0]["udp_rcvbuf"] == int(default)
    assert received < BURST / 4


def test_a_small_buffer_request_is_granted_and_logged(spawn_agent: Spawn) -> None:
    agent = spawn_agent(
        "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--no-loop-check",
        "--udp-rcvbuf", "512KiB",
    )  # fmt: skip
    assert agent.events("agent.listening")[0]["udp_rcvbuf"] == 2 * 512 * 1024  # Linux doubles
