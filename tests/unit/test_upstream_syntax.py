"""``--upstream`` syntax: plain, tls:// and https://, and the errors for what is not."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import trustme

from agent.config import (
    HostPort,
    HttpsUpstream,
    TlsUpstream,
    UpstreamAddress,
    config_from_args,
    parse_upstream,
)
from cli.main import build_parser
from dnsmesh.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", HostPort("192.0.2.1", 53)),
        ("[2001:db8::1]:5353", HostPort("2001:db8::1", 5353)),
        ("tls://192.0.2.1#dns.example", TlsUpstream("192.0.2.1", 853, "dns.example")),
        ("TLS://192.0.2.1:8853#DNS.Example.", TlsUpstream("192.0.2.1", 8853, "dns.example")),
        ("tls://[2001:db8::1]#dns.example", TlsUpstream("2001:db8::1", 853, "dns.example")),
        (
            "https://dns.example/dns-query",
            HttpsUpstream("https://dns.example/dns-query", "dns.example", 443),
        ),
        (
            "https://192.0.2.1:8443/dns-query#dns.example",
            HttpsUpstream("https://192.0.2.1:8443/dns-query", "192.0.2.1", 8443, "dns.example"),
        ),
        (
            "https://[2001:db8::1]/q",
            HttpsUpstream("https://[2001:db8::1]/q", "2001:db8::1", 443),
        ),
    ],
)
def test_upstream_syntax(text: str, expected: UpstreamAddress) -> None:
    assert parse_upstream(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tls://192.0.2.1", "needs the name"),
        ("tls://192.0.2.1#", "needs the name"),
        ("tls://dns.example#dns.example", "not a numeric"),
        ("tls://192.0.2.1#bad_name!", "not a host name"),
        ("tls://192.0.2.1:99999#dns.example", "out of range"),
        ("https://192.0.2.1", "DoH path"),
        ("https://192.0.2.1/", "DoH path"),
        ("https:///dns-query", "no host"),
        ("https://192.0.2.1/dns-query?dns=x", "no query string"),
        ("https://u:p@192.0.2.1/dns-query", "credentials"),
        ("https://dns.example/dns-query#other.example", "numeric URL host"),
        ("https://192.0.2.1:x/dns-query", "not a URL"),
        ("quic://192.0.2.1", "unknown scheme"),
        ("udp://192.0.2.1", "unknown scheme"),
    ],
)
def test_bad_upstream_syntax(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_upstream(text)


def test_str_names_the_upstream_as_configured() -> None:
    for text in ("tls://192.0.2.1:853#dns.example", "https://192.0.2.1:8443/q#dns.example"):
        assert str(parse_upstream(text)) == text


def agent_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["agent", *argv])


def test_flags_reach_the_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    config = config_from_args(
        agent_args(
            "--upstream",
            "tls://192.0.2.1#dns.example",
            "--upstream",
            "192.0.2.2",
            "--upstream-ca",
            str(ca),
            "--upstream-idle-timeout",
            "3",
        )
    )
    assert config.upstreams == (
        TlsUpstream("192.0.2.1", 853, "dns.example"),
        HostPort("192.0.2.2", 53),
    )
    assert config.upstream_ca == ca and config.upstream_idle_timeout == 3.0


def test_a_missing_or_bad_ca_file_or_a_bad_idle_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config_from_args(agent_args("--upstream-ca", str(tmp_path / "nope.pem")))
    for junk in ("", "not a certificate\n", "-----BEGIN CERTIFICATE-----\nAAAA\n"):
        (tmp_path / "junk.pem").write_text(junk)
        with pytest.raises(ConfigError, match="no PEM CA certificate"):
            config_from_args(agent_args("--upstream-ca", str(tmp_path / "junk.pem")))
    with pytest.raises(ConfigError, match="--upstream-idle-timeout must be positive"):
        config_from_args(agent_args("--upstream-idle-timeout", "0"))
