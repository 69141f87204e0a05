"""Upstreams from resolv.conf, skipping the agent's own address (both on port 53 here)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import dns.rcode
import pytest

from agent.config import HostPort
from tests.integration.conftest import RunningAgent
from tests.integration.fakedns import FakeUpstream

StartAgent = Callable[..., RunningAgent]
MakeUpstream = Callable[..., FakeUpstream]


def random_loopback() -> str:
    # A random 127/8 address keeps two parallel runs from meeting on port 53.
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def on_port_53(start: Callable[[str], object]) -> object:
    for _ in range(10):
        try:
            return start(random_loopback())
        except PermissionError:
            pytest.skip("binding port 53 needs root or CAP_NET_BIND_SERVICE")
        except OSError:
            continue  # that address is taken: try another
    raise OSError("no free loopback address on port 53")


def test_resolv_conf_nameservers_are_used_minus_the_agent_itself(
    tmp_path: Path, start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    fake = on_port_53(lambda host: make_upstream(host, 53))
    assert isinstance(fake, FakeUpstream)
    fake.answer("via-resolv.example.test", "A", "192.0.2.53")
    resolv = tmp_path / "resolv.conf"
    holder: dict[str, str] = {}

    def start(host: str) -> RunningAgent:
        holder["host"] = host
        # The agent's own address comes first, as on a node whose resolv.conf points at it.
        resolv.write_text(
            f"# test\nsearch example.test\nnameserver {host}\n"
            f"nameserver {fake.host}  ; the real one\noptions edns0\n"
        )
        return start_agent(upstreams=None, resolv_conf=resolv, listen=(HostPort(host, 53),))

    agent = on_port_53(start)
    assert isinstance(agent, RunningAgent)
    assert [s.address for s in agent.server.upstream.servers] == [HostPort(fake.host, 53)]
    response = agent.query("via-resolv.example.test")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer[0][0].to_text() == "192.0.2.53"
    assert fake.count("via-resolv.example.test") == 1
