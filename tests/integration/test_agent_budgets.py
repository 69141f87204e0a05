"""The forward path's time budgets under upstream faults: stale in time, SERVFAIL at once.

Every test puts a wide gap between the fixed and the broken behaviour: the old agent took
the whole query timeout (2 s by default, 5 s where configured so) for each of these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dns.edns
import dns.message
import dns.rcode
import pytest

from agent.config import AgentConfig
from tests.integration.conftest import FakeClock, RunningAgent
from tests.integration.fakedns import FakeUpstream, Rule
from tests.support.polling import wait_until

# Wall-clock bounds: run alone after the parallel part of the suite (scripts/test).
pytestmark = pytest.mark.timing

StartAgent = Callable[..., RunningAgent]
MakeUpstream = Callable[..., FakeUpstream]
DEFAULTS = AgentConfig()


def addresses(response: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in response.answer for rr in rrset]


def ede_codes(response: dns.message.Message) -> list[int]:
    return [o.code for o in response.options if isinstance(o, dns.edns.EDEOption)]


def black_hole(fake: FakeUpstream) -> None:
    """From now on the fake reads every query and answers none."""
    fake.rules.clear()
    fake.default = Rule(silent=True)


def timed(agent: RunningAgent, name: str) -> tuple[dns.message.Message, float]:
    began = time.monotonic()
    response = agent.query(name, timeout=10)
    return response, time.monotonic() - began


def test_stale_answer_comes_at_the_client_response_timer(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    upstream = make_upstream()
    upstream.answer("old.example.test", "A", "192.0.2.30", ttl=10)
    clock = FakeClock()
    # A 5 s query budget: before the timer the stale answer waited for all of it.
    agent = start_agent(
        upstreams=[upstream], clock=clock, attempt_timeout=5, query_timeout=5, down_base=30
    )
    assert addresses(agent.query("old.example.test")) == ["192.0.2.30"]
    black_hole(upstream)
    clock.advance(60)  # expired, inside the stale window
    r, took = timed(agent, "old.example.test")
    assert addresses(r) == ["192.0.2.30"] and ede_codes(r) == [3]
    assert r.answer[0].ttl == DEFAULTS.stale_ttl
    assert took < 3.0, took  # the timer is 1.8 s; the old agent answered at 5 s
    print(f"\nstale answer after {took:.3f}s")
    assert upstream.count("old.example.test") == 2


def test_the_query_behind_a_stale_answer_refreshes_the_cache(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    upstream = make_upstream()
    upstream.answer("slow.example.test", "A", "192.0.2.31", ttl=10)
    clock = FakeClock()
    agent = start_agent(upstreams=[upstream], clock=clock, attempt_timeout=5, query_timeout=5)
    agent.query("slow.example.test")
    upstream.answer("slow.example.test", "A", "192.0.2.32", ttl=300, delay=3.0)
    clock.advance(60)
    r, took = timed(agent, "slow.example.test")
    assert addresses(r) == ["192.0.2.31"] and ede_codes(r) == [3]
    assert took < 2.8, took  # stale at 1.8 s, before the upstream's 3 s answer
    # The upstream's late answer still lands in the cache: served fresh, not asked again.
    wait_until(lambda: agent.server.cache.get((b"\x04slow\x07example\x04test\x00", 1, 1)), 5)
    fresh = agent.query("slow.example.test")
    assert addresses(fresh) == ["192.0.2.32"] and ede_codes(fresh) == []
    assert upstream.count("slow.example.test") == 2


def test_servfail_at_once_while_every_upstream_is_down(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    dead = [make_upstream(), make_upstream()]
    for fake in dead:
        black_hole(fake)
    agent = start_agent(
        upstreams=dead,
        attempt_timeout=DEFAULTS.attempt_timeout,
        query_timeout=DEFAULTS.query_timeout,
        down_base=DEFAULTS.down_base,
    )
    first, took_first = timed(agent, "first.example.test")
    assert first.rcode() == dns.rcode.SERVFAIL and ede_codes(first) == [22]
    # The default budget is 1.5 s (the old agent: 2 s); slack for a loaded machine.
    assert took_first < 1.8, took_first
    later = [timed(agent, f"later{i}.example.test") for i in range(5)]
    for r, took in later:
        assert r.rcode() == dns.rcode.SERVFAIL and ede_codes(r) == [22]
        assert took < 0.3, took  # the old agent asked the dead set again: 2 s each
    assert all(fake.count(f"later{i}.example.test") == 0 for fake in dead for i in range(5))
    # Meanwhile the agent itself keeps checking them.
    for fake in dead:
        wait_until(lambda fake=fake: fake.count("", "NS") >= 1, 5, "a probe of a down upstream")
    print(f"\nSERVFAIL first {took_first:.3f}s, then {max(t for _, t in later):.3f}s at most")


def test_a_recovered_upstream_is_noticed_without_a_client_query(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    upstream = make_upstream()
    black_hole(upstream)
    clock = FakeClock()  # never moves: only a probe can end the down mark
    agent = start_agent(
        upstreams=[upstream], clock=clock, attempt_timeout=0.3, query_timeout=0.6, down_base=1
    )
    assert agent.query("back.example.test").rcode() == dns.rcode.SERVFAIL
    assert agent.server.upstream.all_down()
    asked = upstream.count("back.example.test")
    upstream.default = Rule()  # back: NOERROR (the probe asks for the root's NS)
    upstream.answer("back.example.test", "A", "192.0.2.33")
    wait_until(lambda: not agent.server.upstream.all_down(), 5, "the probe to see it back")
    assert upstream.count("back.example.test") == asked  # no client query paid for it
    r, took = timed(agent, "back.example.test")
    assert addresses(r) == ["192.0.2.33"]
    assert took < 0.3, took


def test_one_slow_name_does_not_make_a_live_upstream_down(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    # A lone recursive upstream, alive: it answers ". NS" (the probe) and other names at
    # once, but one cold name takes 0.8 s, longer than the 0.5 s attempt timeout.
    upstream = make_upstream()
    upstream.default = Rule(answer=["192.0.2.60"], ttl=0)  # every A name, and the probe
    upstream.answer("cold.example.test", "A", "192.0.2.61", delay=0.8)
    agent = start_agent(
        upstreams=[upstream],
        attempt_timeout=DEFAULTS.attempt_timeout,
        query_timeout=DEFAULTS.query_timeout,
        down_base=DEFAULTS.down_base,
    )
    with ThreadPoolExecutor(1) as pool:
        cold = pool.submit(timed, agent, "cold.example.test")
        # Past the first attempt's timeout, while the cold name is still being recursed.
        wait_until(lambda: upstream.count("cold.example.test") >= 2, 3, "the retry")
        during = [timed(agent, f"warm{i}.example.test") for i in range(3)]
        r, took = cold.result(10)
    after = [timed(agent, f"after{i}.example.test") for i in range(3)]
    # The late answer to the first attempt is a good answer: it wins over the retry, which
    # the old agent waited for in vain (answered at 1.3 s, its budget ended at 1.0 s).
    assert r.rcode() == dns.rcode.NOERROR and addresses(r) == ["192.0.2.61"], r
    assert took < 1.2, took
    for response, _ in during + after:
        # The old agent marked the upstream down and SERVFAILed these without asking.
        assert response.rcode() == dns.rcode.NOERROR, response
        assert addresses(response) == ["192.0.2.60"]
    assert not agent.server.upstream.all_down()
    print(f"\ncold name answered after {took:.3f}s")


def test_an_upstream_that_answers_probes_but_nothing_else_is_marked_down(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    # It is there (". NS" from its cache at once), but its recursion is broken: every
    # client attempt times out. Three in a row, across queries, mark it down.
    upstream = make_upstream()
    upstream.default = Rule(silent=True)
    upstream.on("", "NS", answer=["a.root-servers.net."])
    agent = start_agent(upstreams=[upstream], attempt_timeout=0.3, query_timeout=0.6, down_base=30)
    assert agent.query("one.example.test").rcode() == dns.rcode.SERVFAIL  # two attempts
    assert not agent.server.upstream.all_down()  # only suspect: its probes were answered
    assert agent.query("two.example.test").rcode() == dns.rcode.SERVFAIL  # the third
    assert agent.server.upstream.all_down()
    r, took = timed(agent, "three.example.test")
    assert r.rcode() == dns.rcode.SERVFAIL and ede_codes(r) == [22]
    assert took < 0.2, took
    assert upstream.count("three.example.test") == 0


def test_a_lone_live_upstream_gets_the_whole_budget_for_a_cold_name(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    # 1.2 s: after both attempts (0-0.5, 0.5-1.0) have timed out, inside the 1.5 s budget.
    upstream = make_upstream()
    upstream.answer("colder.example.test", "A", "192.0.2.62", delay=1.2)
    agent = start_agent(
        upstreams=[upstream],
        attempt_timeout=DEFAULTS.attempt_timeout,
        query_timeout=DEFAULTS.query_timeout,
        down_base=DEFAULTS.down_base,
    )
    r, took = timed(agent, "colder.example.test")
    # The old agent gave up at 1.0 s (two attempts); the upstream answered its probes, so
    # the agent keeps listening on both sockets until the budget ends.
    assert addresses(r) == ["192.0.2.62"], r
    assert took < DEFAULTS.query_timeout + 0.3, took
    assert upstream.count("colder.example.test") == 2


def test_three_dead_upstreams_are_known_down_by_the_second_query(
    start_agent: StartAgent, make_upstream: MakeUpstream
) -> None:
    dead = [make_upstream() for _ in range(3)]
    for fake in dead:
        black_hole(fake)
    agent = start_agent(
        upstreams=dead,
        attempt_timeout=DEFAULTS.attempt_timeout,
        query_timeout=DEFAULTS.query_timeout,
        down_base=DEFAULTS.down_base,
    )
    first, took_first = timed(agent, "first.example.test")  # A, B, C: 0.5 s each
    assert first.rcode() == dns.rcode.SERVFAIL and took_first < 1.8, took_first
    # The third one's probe was still running when the first query ended: the second query
    # asks it again, and stops once its probe marks it down instead of asking the two down
    # ones as a last resort (which took the whole 1.5 s).
    second, took_second = timed(agent, "second.example.test")
    assert second.rcode() == dns.rcode.SERVFAIL and took_second < 1.0, took_second
    third, took_third = timed(agent, "third.example.test")
    assert third.rcode() == dns.rcode.SERVFAIL and ede_codes(third) == [22]
    assert took_third < 0.3, took_third
    print(f"\nthree dead: {took_first:.3f}s, {took_second:.3f}s, {took_third:.3f}s")
