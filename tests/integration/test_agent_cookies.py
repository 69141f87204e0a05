"""DNS Cookies at the front door (RFC 7873, RFC 9018), over real sockets with dnspython and
dig: a first query gets a server cookie, a query that sends it back is spared the
amplification guard and the rate limit, a forged one is not, a malformed one is FORMERR."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from agent.querylog_config import QueryLogConfig
from dnsmesh.cookies import OPTION_COOKIE, RCODE_BADCOOKIE
from tests.integration.conftest import RunningAgent, policy_yaml
from tests.integration.fakedns import SERVER_COOKIE, FakeUpstream
from tests.support.polling import wait_until

StartAgent = Callable[..., RunningAgent]
CLIENT_COOKIE = bytes.fromhex("2464c4abcf10c957")


def _ask(
    agent: RunningAgent, name: str, qtype: str, cookie: bytes | None, *, tcp: bool = False
) -> dns.message.Message:
    options = [] if cookie is None else [dns.edns.GenericOption(OPTION_COOKIE, cookie)]
    query = dns.message.make_query(name, qtype, use_edns=0, payload=1232, options=options)
    if tcp:
        return dns.query.tcp(query, agent.host, port=agent.port, timeout=3)
    return dns.query.udp(query, agent.host, port=agent.port, timeout=3)


def _cookie(reply: dns.message.Message) -> bytes:
    """The whole COOKIE option of a reply (client cookie and server cookie)."""
    found = [o for o in reply.options if isinstance(o, dns.edns.CookieOption)]
    assert len(found) == 1, reply
    return found[0].client + found[0].server


def _big_agent(
    start_agent: StartAgent, upstream: FakeUpstream, **overrides: object
) -> RunningAgent:
    # An answer of ~900 octets to a query of ~70: over the guard's 10x, so truncated over
    # UDP for a client not exempt (loopback is exempt by default; not here).
    upstream.answer("big.example.test", "TXT", *[f'"{i:02d}{"x" * 58}"' for i in range(12)])
    return start_agent(upstreams=[upstream], amplification_exempt=(), **overrides)


def test_a_server_cookie_sent_back_spares_the_amplification_guard(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    agent = _big_agent(start_agent, upstream)
    first = _ask(agent, "big.example.test", "TXT", CLIENT_COOKIE)
    assert first.flags & dns.flags.TC and first.answer == []  # no proof yet: the guard holds
    cookie = _cookie(first)
    assert cookie[:8] == CLIENT_COOKIE and len(cookie) == 24 and cookie[8] == 1
    # Sent back, it proves the source: the whole answer over UDP, from the cache now.
    second = _ask(agent, "big.example.test", "TXT", cookie)
    assert not second.flags & dns.flags.TC
    assert len(second.answer[0]) == 12
    assert _cookie(second) == cookie  # young: handed back as it is (RFC 9018 §4.3)
    assert agent.server.entry.cookie_counts["valid"] == 1
    assert agent.server.counts()["amplification"] == 1


def test_a_forged_or_foreign_cookie_is_no_proof_and_gets_a_fresh_one(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    agent = _big_agent(start_agent, upstream)
    cookie = _cookie(_ask(agent, "big.example.test", "TXT", CLIENT_COOKIE))
    forged = cookie[:-1] + bytes([cookie[-1] ^ 0xFF])
    other_agent = _big_agent(start_agent, upstream)  # another random secret
    for agent_asked, sent in ((agent, forged), (other_agent, cookie)):
        reply = _ask(agent_asked, "big.example.test", "TXT", sent)
        assert reply.flags & dns.flags.TC and reply.answer == []
        fresh = _cookie(reply)
        assert fresh[:8] == CLIENT_COOKIE and fresh != sent
        assert agent_asked.server.entry.cookie_counts["valid"] == 0


@pytest.mark.parametrize("length", [0, 7, 12, 41])
def test_a_malformed_cookie_option_is_formerr(
    tmp_path: Path, start_agent: StartAgent, length: int
) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(policy_yaml("door", "door.mesh.test", [{"address": "10.9.0.1"}]))
    agent = start_agent(policies=policies)
    for tcp in (False, True):
        reply = _ask(agent, "door.mesh.test", "A", b"c" * length, tcp=tcp)
        assert reply.rcode() == dns.rcode.FORMERR and reply.answer == []
    assert agent.server.counts()["malformed"] == 2
    assert agent.server.counts()["policy"] == 0


def test_policy_answers_over_tcp_carry_the_cookie_too(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(policy_yaml("door", "door.mesh.test", [{"address": "10.9.0.1"}]))
    agent = start_agent(policies=policies)
    reply = _ask(agent, "door.mesh.test", "A", CLIENT_COOKIE, tcp=True)
    assert reply.answer[0][0].to_text() == "10.9.0.1"
    assert _ask(agent, "door.mesh.test", "A", _cookie(reply)).answer
    assert agent.server.entry.cookie_counts["valid"] == 1
    plain = _ask(agent, "door.mesh.test", "A", None)
    assert not [o for o in plain.options if o.otype == OPTION_COOKIE]  # none volunteered


def test_over_the_rate_limit_a_cookie_client_gets_badcookie_and_then_passes(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(policy_yaml("door", "door.mesh.test", [{"address": "10.9.0.1"}]))
    agent = start_agent(policies=policies, rate_limit=0.01, rate_limit_burst=1, rate_limit_slip=1)
    first = _ask(agent, "door.mesh.test", "A", CLIENT_COOKIE)  # the one token
    assert first.answer
    # Over the limit without a cookie: the TC=1 slip, as before.
    plain = _ask(agent, "door.mesh.test", "A", None)
    assert plain.flags & dns.flags.TC and plain.answer == []
    # Over the limit with a client cookie alone: BADCOOKIE and a fresh server cookie
    # (RFC 7873 §5.2.3), rather than a trip to TCP ...
    bad = _ask(agent, "door.mesh.test", "A", CLIENT_COOKIE)
    assert bad.rcode() == RCODE_BADCOOKIE and bad.answer == []
    assert not bad.flags & dns.flags.TC
    # ... and with it the client is exempt from the limit, query after query.
    cookie = _cookie(bad)
    for _ in range(5):
        assert _ask(agent, "door.mesh.test", "A", cookie).answer
    # A forged one is not.
    forged = _ask(agent, "door.mesh.test", "A", cookie[:-1] + bytes([cookie[-1] ^ 1]))
    assert forged.rcode() == RCODE_BADCOOKIE
    counts = agent.server.counts()
    assert counts["ratelimited"] == 3 and counts["policy"] == 6
    assert agent.server.entry.cookie_counts == {"valid": 5, "badcookie": 2}


def test_a_new_secret_in_the_file_is_used_and_the_old_one_still_taken(
    tmp_path: Path, start_agent: StartAgent, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = "e5e973e5a6b2a43f48e7dc849e37bfcf", "445536bcd2513298075a5d379663c962"
    secret_file = tmp_path / "cookie-secret"
    secret_file.write_text(old + "\n")
    policies = tmp_path / "p.yaml"
    policies.write_text(policy_yaml("door", "door.mesh.test", [{"address": "10.9.0.1"}]))
    agent = start_agent(
        policies=policies, cookie_secret=bytes.fromhex(old), cookie_secret_file=secret_file
    )
    cookies = agent.server.entry.cookies
    held = _cookie(_ask(agent, "door.mesh.test", "A", CLIENT_COOKIE))
    secret_file.write_text(new + "\n")
    wait_until(lambda: cookies.secret == bytes.fromhex(new), 5, "the rotation")
    # The cookie made with the old secret still proves the client, and is replaced with
    # one made with the new secret (RFC 9018 §4.4), which proves it from then on.
    replaced = _cookie(_ask(agent, "door.mesh.test", "A", held))
    assert replaced != held and replaced[:8] == CLIENT_COOKIE
    assert _cookie(_ask(agent, "door.mesh.test", "A", replaced)) == replaced
    assert agent.server.entry.cookie_counts["valid"] == 2
    # A bad file is logged and the secret in use kept.
    secret_file.write_text("not a secret")
    wait_until(
        lambda: any(r.msg == "cookie.secret_reload_failed" for r in caplog.records),
        5,
        "the failed reload",
    )
    assert cookies.secret == bytes.fromhex(new)
    assert _cookie(_ask(agent, "door.mesh.test", "A", replaced)) == replaced


dig = pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed")


def _dig(agent: RunningAgent, *args: str) -> str:
    command = ["dig", f"@{agent.host}", "-p", str(agent.port), "+tries=1", "+time=3", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout


@dig
def test_dig_gets_a_cookie_and_its_cookie_is_taken(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    agent = _big_agent(start_agent, upstream)
    first = _dig(agent, "+cookie", "+ignore", "+bufsize=1232", "big.example.test", "TXT")
    # dig checks that its client cookie came back ("good") and prints the whole option.
    found = re.search(r"; COOKIE: ([0-9a-f]{48}) \(good\)", first)
    assert found, first
    assert "flags: qr tc" in first  # no proof yet
    second = _dig(
        agent, f"+cookie={found[1]}", "+ignore", "+bufsize=1232", "big.example.test", "TXT"
    )
    assert re.search(r"flags: qr rd ra;.*ANSWER: 12", second), second
    assert agent.server.entry.cookie_counts["valid"] == 1
    malformed = _dig(agent, "+cookie=0102030405060708090a", "big.example.test", "TXT")
    assert "status: FORMERR" in malformed, malformed


# -- the agent as a client of its upstreams (--upstream-cookies) ---------------------------


def test_upstream_cookies_are_sent_and_the_server_cookie_kept(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("a.example.test", "A", "192.0.2.1", cookies=True)
    upstream.answer("b.example.test", "A", "192.0.2.2", cookies=True)
    agent = start_agent(upstreams=[upstream], upstream_cookies=True)
    assert agent.query("a.example.test").answer[0][0].to_text() == "192.0.2.1"
    assert agent.query("b.example.test").answer[0][0].to_text() == "192.0.2.2"
    first, second = (r.cookie for r in upstream.received)
    assert first is not None and len(first) == 8  # our client cookie alone at first
    assert second == first + SERVER_COOKIE  # then with the server cookie it gave us
    # Without the flag the upstream queries carry none.
    plain = start_agent(upstreams=[upstream])
    assert plain.query("c.example.test").rcode() == dns.rcode.NXDOMAIN
    assert upstream.received[-1].cookie is None


def test_an_upstream_reply_without_our_client_cookie_is_dropped_as_forged(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    # Each query first gets a reply with the right ID, port and 0x20 case but another
    # client cookie and a forged address, then the real one.
    upstream.answer("f.example.test", "A", "192.0.2.9", cookies=True, forged_cookie_first="6.6.6.6")
    upstream.answer("g.example.test", "A", "192.0.2.9", cookies=True, forged_cookie_first="6.6.6.6")
    agent = start_agent(upstreams=[upstream], upstream_cookies=True)
    assert agent.query("f.example.test").answer[0][0].to_text() == "192.0.2.9"
    # Without cookies the same forgery wins: the check is what stops it.
    plain = start_agent(upstreams=[upstream])
    assert plain.query("g.example.test").answer[0][0].to_text() == "6.6.6.6"
    assert upstream.count(transport="tcp") == 0


def test_an_upstream_badcookie_is_asked_again_over_tcp(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("h.example.test", "A", "192.0.2.3", cookies=True, badcookie_udp=True)
    agent = start_agent(upstreams=[upstream], upstream_cookies=True)
    reply = agent.query("h.example.test")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer[0][0].to_text() == "192.0.2.3"
    tcp = [r for r in upstream.received if r.transport == "tcp"]
    assert len(tcp) == 1 and tcp[0].cookie is not None
    assert tcp[0].cookie.endswith(SERVER_COOKIE)  # learned from the BADCOOKIE
    assert agent.server.upstream.badcookie == 1


def test_with_the_query_log_on_cookie_queries_get_their_cookie_and_their_line(
    tmp_path: Path, start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    log = tmp_path / "queries.log"
    policies = tmp_path / "p.yaml"
    policies.write_text(policy_yaml("web", "web.mesh.test", [{"address": "10.3.0.1"}]))
    agent = _big_agent(start_agent, upstream, policies=policies, query_log=QueryLogConfig(str(log)))
    policy = _ask(agent, "web.mesh.test", "A", CLIENT_COOKIE)
    assert [r.to_text() for r in policy.answer[0]] == ["10.3.0.1"]
    cookie = _cookie(policy)
    assert cookie[:8] == CLIENT_COOKIE
    forwarded = _ask(agent, "big.example.test", "TXT", cookie)  # proven: not truncated
    assert len(forwarded.answer[0]) == 12 and _cookie(forwarded)[:8] == CLIENT_COOKIE
    lines = wait_until(
        lambda: log.exists() and len(text := log.read_text().splitlines()) >= 2 and text,
        5,
        "two query log lines",
    )
    assert [(line["name"], line["source"]) for line in map(json.loads, lines)] == [
        ("web.mesh.test", "policy"),
        ("big.example.test", "upstream"),
    ]
