"""`dnsmesh node install` with the real glibc stub: in a network namespace made here, with
the installed tree's resolv.conf bind-mounted over /etc/resolv.conf (a private mount
namespace per lookup), getaddrinfo resolves a policy name through the agent; after
uninstall the node resolves as before and its files are byte-identical."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import DNSMESH, AgentProcess
from tests.support.netns import NetNs, dnsmasq, network_namespace
from tests.support.policies import policy_text
from tests.support.trees import snapshot

OLD_RESOLVER = "127.0.0.2"  # the node's resolver before install: dnsmasq
EXTERNAL = ("ext.test", "203.0.113.7")
POLICY = ("web.mesh.test", "10.1.2.3")


@pytest.fixture
def ns() -> Iterator[NetNs]:
    with network_namespace() as made, dnsmasq(made, OLD_RESOLVER, f"/{EXTERNAL[0]}/{EXTERNAL[1]}"):
        yield made


# getaddrinfo through Python's socket module: glibc's stub, nothing of dnspython's.
GETADDRINFO = (
    "import socket, sys; "
    "print(socket.getaddrinfo(sys.argv[1], 53, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])"
)


def lookup(ns: NetNs, root: Path, name: str) -> str | None:
    """The first IPv4 address getaddrinfo gives for ``name``, with ``root``'s resolv.conf."""
    script = 'mount --bind "$1" /etc/resolv.conf && exec "$2" -c "$3" "$4"'
    resolv = str(root / "etc/resolv.conf")
    command = ["unshare", "-m", "sh", "-c", script, "sh", resolv, sys.executable, GETADDRINFO]
    done = subprocess.run(
        [*ns.prefix, *command, name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def agent_flags(root: Path) -> list[str]:
    """The agent's flags from the installed agent.env, its node paths read inside ``root``."""
    flags: list[str] = []
    for line in (root / "etc/dnsmesh/agent.env").read_text().splitlines():
        if not line.startswith("#"):
            flags += shlex.split(line.partition("=")[2])
    return [str(root / f.lstrip("/")) if f.startswith("/etc/") else f for f in flags]


def plain(root: Path) -> None:
    (root / "etc/resolv.conf").write_text(f"nameserver {OLD_RESOLVER}\noptions edns0\n")


def symlinked(root: Path) -> None:
    (root / "run/resolvconf").mkdir(parents=True)
    (root / "run/resolvconf/resolv.conf").write_text(f"nameserver {OLD_RESOLVER}\n")
    (root / "etc/resolv.conf").symlink_to("../run/resolvconf/resolv.conf")


@pytest.mark.parametrize("shape", [plain, symlinked])
def test_install_makes_getaddrinfo_ask_the_agent_and_uninstall_undoes_it(
    ns: NetNs, tmp_path: Path, shape: Callable[[Path], None]
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    shape(root)
    before = snapshot(root)
    assert lookup(ns, root, EXTERNAL[0]) == EXTERNAL[1]
    assert lookup(ns, root, POLICY[0]) is None

    installed = subprocess.run(
        [DNSMESH, "node", "install", "--root", str(root), "--listen", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert installed.returncode == 0, installed.stderr
    policies = tmp_path / "web.json"
    policies.write_text(policy_text("web", [{"address": POLICY[1]}], domain=POLICY[0]))
    agent = AgentProcess([*agent_flags(root), "--policies", str(policies)], prefix=ns.prefix)
    try:
        agent.wait_event("agent.started")
        assert lookup(ns, root, POLICY[0]) == POLICY[1]  # the policy, from the agent
        assert lookup(ns, root, EXTERNAL[0]) == EXTERNAL[1]  # forwarded to the old resolver
    finally:
        assert agent.stop() == 0

    uninstalled = subprocess.run(
        [DNSMESH, "node", "uninstall", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert snapshot(root) == before
    assert lookup(ns, root, EXTERNAL[0]) == EXTERNAL[1]
    assert lookup(ns, root, POLICY[0]) is None
