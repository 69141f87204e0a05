"""Forwarding, caching, serve-stale and failover through the real agent and fake upstreams."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import dns.asyncquery
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import pytest

from tests.integration.conftest import FakeClock, RunningAgent
from tests.integration.fakedns import FakeUpstream, Rule
from tests.support.polling import wait_until

StartAgent = Callable[..., RunningAgent]
MakeUpstream = Callable[..., FakeUpstream]


def addresses(response: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in response.answer for rr in rrset]


def ede_codes(response: dns.message.Message) -> list[int]:
    return [o.code for o in response.options if isinstance(o, dns.edns.EDEOption)]


def test_forwards_unknown_names(start_agent: StartAgent, upstream: FakeUpstream) -> None:
    upstream.answer("www.example.test", "A", "192.0.2.10")
    agent = start_agent(upstreams=[upstream])
    r = agent.query("www.example.test")
    assert addresses(r) == ["192.0.2.10"]
    assert not r.flags & dns.flags.AA
    assert r.flags & dns.flags.RA
    assert upstream.count("www.example.test") == 1
    assert r.edns == 0
    assert agent.server.counts()["upstream"] == 1
    # From the cache, to a client without EDNS: no OPT in the answer (RFC 6891 §7).
    plain = agent.query("www.example.test", edns=False)
    assert plain.edns == -1 and addresses(plain) == ["192.0.2.10"]


def test_cache_counts_ttl_down(start_agent: StartAgent, upstream: FakeUpstream) -> None:
    upstream.answer("ttl.example.test", "A", "192.0.2.11", ttl=100)
    clock = FakeClock()
    agent = start_agent(upstreams=[upstream], clock=clock)
    assert agent.query("ttl.example.test").answer[0].ttl == 100
    clock.advance(30)
    again = agent.query("ttl.example.test")
    assert again.answer[0].ttl == 70
    assert upstream.count("ttl.example.test") == 1
    clock.advance(71)  # expired: asked again
    assert agent.query("ttl.example.test").answer[0].ttl == 100
    assert upstream.count("ttl.example.test") == 2


def test_cache_key_ignores_case_but_echoes_it(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("mixed.example.test", "A", "192.0.2.12")
    agent = start_agent(upstreams=[upstream])
    agent.query("mixed.example.test")
    r = agent.query("MiXeD.example.TEST")
    assert r.question[0].name.to_text() == "MiXeD.example.TEST."
    assert addresses(r) == ["192.0.2.12"]
    assert upstream.count("mixed.example.test") == 1


def test_negative_answers_are_cached_for_the_soa_minimum(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.nxdomain("gone.example.test", soa_ttl=300, minimum=20)
    clock = FakeClock()
    agent = start_agent(upstreams=[upstream], clock=clock)
    first = agent.query("gone.example.test")
    assert first.rcode() == dns.rcode.NXDOMAIN
    assert first.authority  # the SOA travels with it (RFC 2308)
    clock.advance(19)
    assert agent.query("gone.example.test").rcode() == dns.rcode.NXDOMAIN
    assert upstream.count("gone.example.test") == 1
    clock.advance(2)  # past MINIMUM (20 < SOA TTL 300): the negative entry expired
    agent.query("gone.example.test")
    assert upstream.count("gone.example.test") == 2


def test_cache_is_bounded_lru(start_agent: StartAgent, upstream: FakeUpstream) -> None:
    for i in range(4):
        upstream.answer(f"n{i}.example.test", "A", f"192.0.2.{20 + i}")
    agent = start_agent(upstreams=[upstream], cache_size=3)
    for i in range(3):
        agent.query(f"n{i}.example.test")
    agent.query("n0.example.test")  # n0 is now the most recent; n1 the least
    agent.query("n3.example.test")  # evicts n1
    assert len(agent.server.cache) == 3
    agent.query("n0.example.test")
    agent.query("n2.example.test")
    assert upstream.count("n0.example.test") == 1
    assert upstream.count("n2.example.test") == 1
    agent.query("n1.example.test")
    assert upstream.count("n1.example.test") == 2


def test_serve_stale_when_upstream_dies(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    upstream = make_upstream()
    upstream.answer("stale.example.test", "A", "192.0.2.30", ttl=10)
    clock = FakeClock()
    agent = start_agent(upstreams=[upstream], clock=clock, stale_ttl=30)
    assert addresses(agent.query("stale.example.test")) == ["192.0.2.30"]
    upstream.stop()
    clock.advance(60)  # expired, within max_stale
    r = agent.query("stale.example.test")
    assert r.rcode() == dns.rcode.NOERROR
    assert addresses(r) == ["192.0.2.30"]
    assert r.answer[0].ttl == 30
    assert ede_codes(r) == [3]  # RFC 8914 Stale Answer
    assert agent.server.counts()["stale"] == 1
    clock.advance(86_400)  # past max_stale: no more stale answers
    assert agent.query("stale.example.test").rcode() == dns.rcode.SERVFAIL


def test_servfail_with_ede_within_the_bound_when_all_upstreams_are_dead(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    silent = make_upstream()
    silent.on("dead.example.test", "A", silent=True)
    silent2 = make_upstream()
    silent2.on("dead.example.test", "A", silent=True)
    agent = start_agent(upstreams=[silent, silent2], attempt_timeout=0.3, query_timeout=0.8)
    began = time.monotonic()
    r = agent.query("dead.example.test", timeout=5)
    took = time.monotonic() - began
    assert r.rcode() == dns.rcode.SERVFAIL
    assert ede_codes(r) == [22]  # No Reachable Authority
    assert 0.5 < took < 1.5, took  # the bound is 0.8 s, and it was not silence
    assert silent.count("dead.example.test") >= 1 and silent2.count("dead.example.test") >= 1


def test_failover_to_the_next_upstream_and_down_marking(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    first = make_upstream()
    second = make_upstream()
    for fake in (first, second):
        fake.on("a.example.test", "A", answer=["192.0.2.40"], ttl=0)
        fake.on("b.example.test", "A", answer=["192.0.2.41"], ttl=0)
    second.on("c.example.test", "A", answer=["192.0.2.42"], ttl=0)
    second.on("d.example.test", "A", answer=["192.0.2.43"], ttl=0)
    first.on("a.example.test", "A", silent=True)
    agent = start_agent(
        upstreams=[first, second], attempt_timeout=0.3, query_timeout=1.5, down_base=30
    )
    assert addresses(agent.query("a.example.test")) == ["192.0.2.40"]
    assert first.count("a.example.test") == 1 and second.count("a.example.test") == 1
    servers = agent.server.upstream.servers
    # One slow name only makes the first suspect; its probe (". NS") is answered, so it is
    # not down, and it is preferred again.
    wait_until(lambda: first.count("", "NS") == 1 and not servers[0].suspect, 5, "the probe")
    assert servers[0].failures == 1 and servers[0].down_until == 0.0
    assert addresses(agent.query("b.example.test")) == ["192.0.2.41"]
    assert first.count("b.example.test") == 1
    # Dead, it is marked down by its probe: the next query goes straight to the second.
    first.rules.clear()
    first.default = Rule(silent=True)
    assert addresses(agent.query("c.example.test")) == ["192.0.2.42"]
    wait_until(lambda: servers[0].down_until > time.monotonic(), 5, "the failed probe")
    assert addresses(agent.query("d.example.test")) == ["192.0.2.43"]
    assert first.count("d.example.test") == 0


def test_down_upstream_is_rechecked_after_its_backoff(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    first = make_upstream()
    second = make_upstream()
    first.on("x.example.test", "A", silent=True)
    second.answer("x.example.test", "A", "192.0.2.50", ttl=0)
    first.answer("y.example.test", "A", "192.0.2.51", ttl=0)
    clock = FakeClock()
    agent = start_agent(upstreams=[first, second], clock=clock, attempt_timeout=0.3, down_base=5)
    agent.query("x.example.test")
    assert agent.server.upstream.servers[0].failures == 1
    clock.advance(6)  # backoff over: preferred again, and it answers, so it is up again
    assert addresses(agent.query("y.example.test")) == ["192.0.2.51"]
    assert first.count("y.example.test") == 1
    assert agent.server.upstream.servers[0].failures == 0


def test_truncated_upstream_answer_is_retried_over_tcp(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    records = [f"192.0.2.{i}" for i in range(1, 101)]  # 100 A records: 1.6 kB
    upstream.answer("big.example.test", "A", *records, truncate_udp=True)
    agent = start_agent(upstreams=[upstream])
    over_tcp = agent.query("big.example.test", tcp=True)
    assert len(addresses(over_tcp)) == 100
    assert upstream.count("big.example.test", transport="udp") == 1
    assert upstream.count("big.example.test", transport="tcp") == 1
    # Over UDP the client gets TC (too big for 1232) and then the whole answer over TCP.
    over_udp = agent.query("big.example.test")
    assert over_udp.flags & dns.flags.TC
    assert upstream.count("big.example.test") == 2  # both from the cache


def test_replies_with_wrong_id_or_question_are_ignored(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("id.example.test", "A", "192.0.2.60", wrong_id_first=True)
    upstream.answer("q.example.test", "A", "192.0.2.61", wrong_question_first=True)
    agent = start_agent(upstreams=[upstream])
    r1 = agent.query("id.example.test")
    assert r1.rcode() == dns.rcode.NOERROR and addresses(r1) == ["192.0.2.60"]
    r2 = agent.query("q.example.test")
    assert r2.rcode() == dns.rcode.NOERROR and addresses(r2) == ["192.0.2.61"]


def test_identical_concurrent_queries_are_coalesced(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("slow.example.test", "A", "192.0.2.70", delay=0.3)
    agent = start_agent(upstreams=[upstream])

    async def many() -> list[dns.message.Message]:
        queries = [dns.message.make_query("slow.example.test", "A") for _ in range(20)]
        return await asyncio.gather(
            *(dns.asyncquery.udp(q, agent.host, port=agent.port, timeout=3) for q in queries)
        )

    responses = asyncio.run(many())
    assert all(addresses(r) == ["192.0.2.70"] for r in responses)
    assert upstream.count("slow.example.test") == 1


def test_upstream_servfail_tries_the_next_one(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    broken = make_upstream()
    good = make_upstream()
    broken.on("sf.example.test", "A", rcode=dns.rcode.SERVFAIL)
    good.answer("sf.example.test", "A", "192.0.2.80")
    agent = start_agent(upstreams=[broken, good])
    assert addresses(agent.query("sf.example.test")) == ["192.0.2.80"]


def test_no_upstreams_gives_servfail_not_nxdomain(start_agent: StartAgent) -> None:
    agent = start_agent(upstreams=[])
    r = agent.query("nowhere.example.test")
    assert r.rcode() == dns.rcode.SERVFAIL
    assert ede_codes(r) == [22]


@pytest.mark.parametrize("tcp", [False, True])
def test_forwarded_answers_work_over_both_transports(
    start_agent: StartAgent, upstream: FakeUpstream, tcp: bool
) -> None:
    upstream.answer("both.example.test", "AAAA", "2001:db8::1")
    agent = start_agent(upstreams=[upstream])
    assert addresses(agent.query("both.example.test", "AAAA", tcp=tcp)) == ["2001:db8::1"]


def test_forwards_in_flight_are_bounded(start_agent: StartAgent, upstream: FakeUpstream) -> None:
    for i in range(5):
        upstream.answer(f"f{i}.example.test", "A", "192.0.2.90", delay=0.3)
    agent = start_agent(upstreams=[upstream], max_inflight=2)

    async def many() -> list[dns.message.Message | None]:
        async def one(i: int) -> dns.message.Message | None:
            q = dns.message.make_query(f"f{i}.example.test", "A")
            try:
                return await dns.asyncquery.udp(q, agent.host, port=agent.port, timeout=1.0)
            except dns.exception.Timeout:
                return None

        return await asyncio.gather(*(one(i) for i in range(5)))

    answered = [r for r in asyncio.run(many()) if r is not None]
    assert len(answered) == 2
    assert upstream.count() == 2
    assert agent.server.counts()["dropped"] == 3


@pytest.mark.timing  # real attempt timeouts of 0.2 s: failed once beside another worker
def test_upstream_down_and_up_are_logged_once_each(
    start_agent: StartAgent, make_upstream: MakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = make_upstream()
    flaky.default = Rule(silent=True)  # dead: its probe goes unanswered too
    clock = FakeClock()
    agent = start_agent(upstreams=[flaky], clock=clock, attempt_timeout=0.2, query_timeout=0.5)
    with caplog.at_level(logging.INFO, logger="agent.upstream"):
        agent.query("down.example.test")  # two attempts and a probe fail: one warning
        flaky.default = Rule()
        flaky.answer("up.example.test", "A", "192.0.2.95", ttl=0)
        clock.advance(120)
        agent.query("up.example.test")
    events = [(r.getMessage(), r.levelname) for r in caplog.records]
    assert events == [("upstream.down", "WARNING"), ("upstream.up", "INFO")]
    down = caplog.records[0].dnsmesh_fields  # type: ignore[attr-defined]
    assert down["upstream"] == flaky.address and down["failures"] == 1


def test_a_forged_reply_from_another_port_is_not_accepted(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("spoof.example.test", "A", "192.0.2.96", spoof_first="203.0.113.66")
    agent = start_agent(upstreams=[upstream])
    assert addresses(agent.query("spoof.example.test")) == ["192.0.2.96"]


def test_each_upstream_query_has_a_fresh_id_and_source_port(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    agent = start_agent(upstreams=[upstream])
    for i in range(30):
        agent.query(f"fresh{i}.example.test")
    seen = [r for r in upstream.received if r.name.startswith("fresh")]
    assert len(seen) == 30
    assert len({r.source[1] for r in seen}) >= 29  # RFC 5452 §4: new port per query
    assert len({r.id for r in seen}) >= 28  # random 16-bit IDs: a repeat is rare


def test_an_upstream_servfail_is_passed_on_after_one_ask(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.on("sf1.example.test", "A", rcode=dns.rcode.SERVFAIL)
    agent = start_agent(upstreams=[upstream])
    assert agent.query("sf1.example.test").rcode() == dns.rcode.SERVFAIL
    assert upstream.count("sf1.example.test") == 1  # no second round for an answer
    assert agent.query("sf1.example.test").rcode() == dns.rcode.SERVFAIL
    assert upstream.count("sf1.example.test") == 2  # and SERVFAIL is not cached


def test_an_ipv6_upstream(start_agent: StartAgent, make_upstream: MakeUpstream) -> None:
    v6 = make_upstream("::1")
    v6.answer("six.example.test", "A", "192.0.2.6")
    records = [f"2001:db8::{i:x}" for i in range(1, 80)]
    v6.answer("six.example.test", "AAAA", *records, truncate_udp=True)
    agent = start_agent(upstreams=[v6])
    assert addresses(agent.query("six.example.test")) == ["192.0.2.6"]
    assert len(addresses(agent.query("six.example.test", "AAAA", tcp=True))) == 79
    assert v6.count("six.example.test", "AAAA", transport="tcp") == 1
