"""Agent settings: HOST:PORT parsing, resolv.conf parsing and the never-forward-to-self rule."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.cli import add_agent_commands
from agent.config import HostPort, config_from_args, parse_host_port
from agent.resolvconf import is_self, parse_resolv_conf, upstreams_from_resolv_conf
from agent.sync.config import parse_labels
from dnsmesh.errors import ConfigError
from dnsmesh.policy import MAX_LABELS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:53", HostPort("127.0.0.1", 53)),
        ("[::1]:1053", HostPort("::1", 1053)),
        ("[2001:DB8::1]:53", HostPort("2001:db8::1", 53)),
        ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


def test_default_port_for_upstreams() -> None:
    assert parse_host_port("192.0.2.1", 53) == HostPort("192.0.2.1", 53)
    assert parse_host_port("::1", 53) == HostPort("::1", 53)
    assert parse_host_port("[::1]", 53) == HostPort("::1", 53)


@pytest.mark.parametrize("text", ["localhost:53", "1.2.3.4", "1.2.3.4:x", "1.2.3.4:70000", "[::1"])
def test_bad_host_port(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(text)


def test_str_round_trips() -> None:
    for text in ("127.0.0.1:53", "[::1]:53"):
        assert str(parse_host_port(text)) == text


def test_parse_resolv_conf() -> None:
    text = """
# comment
; another
search example.com
nameserver 192.0.2.1
nameserver   2001:db8::53   # trailing comment
nameserver fe80::1%eth0
nameserver not-an-address
nameserver 192.0.2.1
options edns0 timeout:1
"""
    assert parse_resolv_conf(text) == [
        HostPort("192.0.2.1", 53),
        HostPort("2001:db8::53", 53),
        HostPort("fe80::1", 53),
    ]


def never_local(host: str) -> bool:
    return host.startswith("127.") or host == "::1"


def test_is_self_exact_and_wildcard() -> None:
    own = [HostPort("127.0.0.1", 53)]
    assert is_self(HostPort("127.0.0.1", 53), own, never_local)
    assert not is_self(HostPort("127.0.0.1", 5353), own, never_local)
    assert not is_self(HostPort("127.0.0.2", 53), own, never_local)
    wildcard = [HostPort("0.0.0.0", 53)]
    assert is_self(HostPort("127.0.0.2", 53), wildcard, never_local)
    assert not is_self(HostPort("192.0.2.1", 53), wildcard, never_local)
    v6_wildcard = [HostPort("::", 53)]
    assert is_self(HostPort("::1", 53), v6_wildcard, never_local)
    assert not is_self(HostPort("2001:db8::1", 53), v6_wildcard, never_local)
    assert not is_self(HostPort("127.0.0.1", 53), v6_wildcard, never_local)  # V6ONLY


def test_upstreams_from_resolv_conf_skip_self(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.1\nnameserver 192.0.2.1\n")
    listening = [HostPort("127.0.0.1", 53)]
    assert upstreams_from_resolv_conf(path, listening, never_local) == [HostPort("192.0.2.1", 53)]
    path.write_text("nameserver 127.0.0.1\n")
    with pytest.raises(ConfigError, match="names no nameserver"):
        upstreams_from_resolv_conf(path, listening, never_local)
    with pytest.raises(ConfigError, match="cannot read"):
        upstreams_from_resolv_conf(tmp_path / "missing", listening, never_local)


def test_agent_labels_are_held_to_the_limits_the_controller_checks() -> None:
    assert parse_labels(["zone=eu west", "topology.kubernetes.io/zone=a"]) == {
        "zone": "eu west",
        "topology.kubernetes.io/zone": "a",
    }
    assert parse_labels([f"k={'v' * 63}"]) == {"k": "v" * 63}
    for refused in ([f"k={'v' * 64}"], [f"{'k' * 64}=v"], ["-k=v"], ["k=a\x01b"]):
        with pytest.raises(ConfigError, match="--label"):
            parse_labels(refused)
    with pytest.raises(ConfigError, match="--label"):
        parse_labels([f"k{i}=v" for i in range(MAX_LABELS + 1)])


def _agent_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_commands(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    return parser.parse_args(["agent", *argv])


def test_labels_reach_the_config_without_a_controller() -> None:
    # node-label slices are decided by them, so they count for an agent of files only
    config = config_from_args(_agent_args("--label", "zone=a", "--label", "rack = 7"))
    assert config.labels == {"zone": "a", "rack": "7"}
    assert config_from_args(_agent_args()).labels == {}
    with pytest.raises(ConfigError, match="--label"):
        config_from_args(_agent_args("--label", "no-equals-sign"))
