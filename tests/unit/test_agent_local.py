"""Special-use names (RFC 6761/6762): bytes in, bytes out, no sockets."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rdatatype

from agent.handlers.local import LocalNames
from dnsmesh.dnswire import parse_query


def ask(name: str, qtype: str = "A") -> dns.message.Message | None:
    query = parse_query(dns.message.make_query(name, qtype).to_wire())
    wire = LocalNames().answer(query, "127.0.0.1")
    if wire is None:
        return None
    return dns.message.from_wire(wire)


def test_localhost_addresses() -> None:
    a = ask("localhost")
    assert a is not None and a.answer[0][0].to_text() == "127.0.0.1"
    aaaa = ask("LocalHost.", "AAAA")
    assert aaaa is not None and aaaa.answer[0][0].to_text() == "::1"
    assert aaaa.question[0].name.to_text() == "LocalHost."
    sub = ask("db.localhost")
    assert sub is not None and sub.answer[0][0].to_text() == "127.0.0.1"


def test_localhost_other_types_are_nodata() -> None:
    mx = ask("localhost", "MX")
    assert mx is not None and mx.rcode() == dns.rcode.NOERROR and not mx.answer
    assert mx.authority[0].rdtype == dns.rdatatype.SOA


def test_invalid_and_local_are_nxdomain() -> None:
    for name in ("invalid", "x.invalid", "printer.local", "local"):
        r = ask(name)
        assert r is not None and r.rcode() == dns.rcode.NXDOMAIN, name


def test_other_names_pass() -> None:
    for name in ("example.com", "xlocalhost", "localhost.example.com", "notlocal", "invalid.test"):
        assert ask(name) is None, name
