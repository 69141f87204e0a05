"""The front door's rules (dnsmesh/admission.py) and the default --allow (agent/frontdoor.py)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from agent.cli import add_agent_commands
from agent.config import HostPort, config_from_args
from agent.frontdoor import build_limiter, default_allow, node_addresses
from dnsmesh import admission
from dnsmesh.admission import LOOPBACK, ClientAcl, RateLimiter, parse_network, udp_size_cap
from dnsmesh.errors import ConfigError


def _net(text: str) -> admission.Network:
    return ipaddress.ip_network(text)


def test_acl_matches_networks_and_memoises_both_verdicts() -> None:
    acl = ClientAcl([_net("10.0.0.0/8"), _net("2001:db8::/32")])
    assert acl.allows("10.1.2.3") and acl.allows("2001:db8::1")
    assert acl.allows("::ffff:10.0.0.1")  # a v4 client on a dual-stack socket
    assert not acl.allows("192.0.2.1") and not acl.allows("not an address")
    assert "10.1.2.3" in acl.admitted and "192.0.2.1" in acl.refused


def test_acl_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "MEMO_LIMIT", 4)
    acl = ClientAcl([_net("0.0.0.0/0")])
    for i in range(10):
        assert acl.allows(f"192.0.2.{i}")
    assert len(acl.admitted) <= 4


def test_bad_networks_are_refused_with_the_text() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.1/8"):
        parse_network("10.0.0.1/8")  # host bits set: a typo more often than not
    assert parse_network("10.0.0.1") == _net("10.0.0.1/32")


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(10.0, 3)
    assert [limiter.allow("192.0.2.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("192.0.2.2", 0.0)  # another source, another bucket
    assert not limiter.allow("192.0.2.1", 0.05)  # half a token
    assert limiter.allow("192.0.2.1", 0.1)  # one token after 0.1 s at 10/s
    assert [limiter.allow("192.0.2.1", 100.0) for _ in range(4)] == [True, True, True, False]


def test_buckets_are_per_prefix_and_exempt_networks_are_never_limited() -> None:
    limiter = RateLimiter(1.0, 1, v4_prefix=24, exempt=[_net("198.51.100.0/24")])
    assert limiter.key_for("2001:db8:1:2:3::4") == "2001:db8:1:2::/64"
    assert limiter.allow("192.0.2.1", 0.0)
    assert not limiter.allow("192.0.2.200", 0.0)  # the same /24
    assert all(limiter.allow("198.51.100.7", 0.0) for _ in range(100))
    assert limiter.key_for("198.51.100.7") is None


def test_buckets_are_bounded_least_recently_used_first() -> None:
    limiter = RateLimiter(1.0, 1, max_buckets=3)
    for i in range(10):
        limiter.allow(f"192.0.2.{i}", 0.0)
    assert len(limiter) == 3
    assert not limiter.allow("192.0.2.9", 0.0)  # still held: its bucket is empty
    assert limiter.allow("192.0.2.0", 0.0)  # evicted long ago: a full bucket again


def test_slip_answers_every_nth_over_the_limit() -> None:
    every_second = RateLimiter(1.0, 1, slip=2)
    assert [every_second.slips() for _ in range(6)] == [False, True] * 3
    assert not any(RateLimiter(1.0, 1, slip=0).slips() for _ in range(6))


def test_udp_size_cap() -> None:
    assert udp_size_cap(30, 10) == 512  # every client takes 512 octets
    assert udp_size_cap(100, 10) == 1000
    assert udp_size_cap(30, 0) == 65_535  # off


def test_default_allow_is_loopback_and_the_listen_addresses() -> None:
    allow = default_allow([HostPort("10.1.2.3", 53), HostPort("127.0.0.1", 53)])
    assert allow == (*LOOPBACK, _net("10.1.2.3/32"))


def test_default_allow_on_a_wildcard_is_the_nodes_own_addresses(tmp_path: Path) -> None:
    fib = tmp_path / "fib_trie"
    fib.write_text(
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.0.2.2\n        /32 host LOCAL\n"
        "     |-- 192.0.2.255\n        /32 link BROADCAST\n"
    )
    inet6 = tmp_path / "if_inet6"
    inet6.write_text("fd000000000000000000000000000002 04 40 00 82     eth0\n")
    assert node_addresses(fib, inet6) == [_net("192.0.2.2/32"), _net("fd00::2/128")]
    assert node_addresses(tmp_path / "none", tmp_path / "none") == []
    allow = default_allow([HostPort("0.0.0.0", 53)])
    assert _net("0.0.0.0/0") not in allow and set(LOOPBACK) <= set(allow)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_commands(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    return parser.parse_args(["agent", *argv])


def test_flags_reach_the_config() -> None:
    config = config_from_args(
        _parse(
            "--allow",
            "10.0.0.0/8",
            "--allow",
            "::1",
            "--refuse-mode",
            "drop",
            "--rate-limit",
            "50",
            "--rate-limit-exempt",
            "10.1.0.0/16",
        )
    )
    assert config.allow == (_net("10.0.0.0/8"), _net("::1/128")) and config.refuse_drop
    limiter = build_limiter(config)
    assert limiter is not None and limiter.burst == 50  # default burst: one second's rate
    assert limiter.exempt == (_net("10.1.0.0/16"),)
    defaults = config_from_args(_parse())
    assert defaults.allow is None and build_limiter(defaults) is None
    assert defaults.trust_ecs_from == ()  # nobody's ECS is believed by default


def test_trusted_forwarders_reach_the_config() -> None:
    config = config_from_args(_parse("--trust-ecs-from", "10.0.0.0/8", "--trust-ecs-from", "::1"))
    assert config.trust_ecs_from == (_net("10.0.0.0/8"), _net("::1/128"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--allow", "10.0.0.0/33"), "--allow"),
        (("--allow", "everyone"), "--allow"),
        (("--rate-limit-exempt", "10.0.0.1/8"), "--rate-limit-exempt"),
        (("--rate-limit", "-1"), "--rate-limit"),
        (("--rate-limit-prefix-v6", "129"), "--rate-limit-prefix-v6"),
        (("--amplification-factor", "-1"), "--amplification-factor"),
        (("--trust-ecs-from", "10.0.0.1/8"), "--trust-ecs-from"),
    ],
)
def test_bad_flags_are_refused(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_args(_parse(*argv))


def test_the_cookie_secret_file_reaches_the_config(tmp_path: Path) -> None:
    path = tmp_path / "cookie-secret"
    path.write_text("e5e973e5a6b2a43f48e7dc849e37bfcf\n")
    config = config_from_args(_parse("--cookie-secret-file", str(path)))
    assert config.cookie_secret == bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")
    assert config_from_args(_parse()).cookie_secret is None  # a random one at start


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read it"),
        ("", "0 octets, expected 16"),
        ("e5e973e5a6b2a43f", "8 octets, expected 16"),
        ("secret-passphrase", "not hex digits"),
    ],
)
def test_a_bad_cookie_secret_file_is_refused(
    tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "cookie-secret"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=f"--cookie-secret-file {path}: {message}"):
        config_from_args(_parse("--cookie-secret-file", str(path)))
