"""Forwarding loops: never to ourselves, and a loop through another resolver is detected."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import dns.rcode
import pytest

from agent.config import HostPort
from tests.integration.conftest import RunningAgent
from tests.integration.fakedns import FakeUpstream, Rule
from tests.support.polling import wait_until

StartAgent = Callable[..., RunningAgent]


def hostport(agent: RunningAgent) -> HostPort:
    return HostPort(agent.host, agent.port)


def test_two_agents_forwarding_to_each_other(
    start_agent: StartAgent, caplog: pytest.LogCaptureFixture
) -> None:
    a = start_agent(upstreams=[], loop_check=True)
    # B does not probe, so that A is the one to find the loop (with both probing at once,
    # either may find it first; both outcomes break the loop).
    b = start_agent(upstreams=[f"{a.host}:{a.port}"], loop_check=False)
    with caplog.at_level(logging.ERROR, logger="agent.handlers.loopguard"):
        # A's upstream changes to B: A probes B, B forwards the probe back to A.
        a.call(lambda: a.server.set_upstreams([hostport(b)]))
        wait_until(
            lambda: any(r.getMessage() == "upstream.loop_detected" for r in caplog.records),
            3,
            "the loop_detected log",
        )
    assert a.server.loop_guard.detected == [hostport(b)]
    assert a.server.upstream.servers[0].disabled == "forwarding loop"
    # A no longer forwards anywhere: an unknown name fails fast instead of circling.
    began = time.monotonic()
    assert a.query("circle.example.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - began < 0.5


def test_agent_whose_upstream_forwards_back_to_it(
    start_agent: StartAgent, upstream: FakeUpstream, make_upstream: Callable[..., FakeUpstream]
) -> None:
    agent = start_agent(upstreams=[upstream], loop_check=True)
    honest = make_upstream()
    honest.answer("real.example.test", "A", "192.0.2.99")
    # The fake now relays everything to the agent, as a misconfigured resolver would.
    upstream.default = Rule(forward_to=(agent.host, agent.port))
    agent.call(lambda: agent.server.set_upstreams([hostport(upstream), hostport(honest)]))
    wait_until(lambda: agent.server.loop_guard.detected == [hostport(upstream)], 3, "detection")
    assert honest.count() >= 1  # the honest one was probed too, and is not flagged
    assert [s.disabled for s in agent.server.upstream.servers] == ["forwarding loop", None]
    response = agent.query("real.example.test")
    assert response.answer[0][0].to_text() == "192.0.2.99"
    assert upstream.count("real.example.test") == 0


def test_own_listen_address_is_never_an_upstream(start_agent: StartAgent) -> None:
    agent = start_agent(upstreams=[])
    agent.call(lambda: agent.server.set_upstreams([hostport(agent)]))
    assert agent.server.upstream.servers == []
    assert agent.query("self.example.test").rcode() == dns.rcode.SERVFAIL


def test_loop_is_found_at_start(start_agent: StartAgent, upstream: FakeUpstream) -> None:
    from tests.support.ports import free_port

    port = free_port()
    upstream.default = Rule(forward_to=("127.0.0.1", port))
    agent = start_agent(
        upstreams=[upstream], loop_check=True, listen=(HostPort("127.0.0.1", port),)
    )
    wait_until(lambda: agent.server.loop_guard.detected == [hostport(upstream)], 3, "detection")
    assert agent.server.upstream.servers[0].disabled == "forwarding loop"


def test_upstream_change_probes_afresh(start_agent: StartAgent, upstream: FakeUpstream) -> None:
    agent = start_agent(upstreams=[], loop_check=True)
    upstream.default = Rule(forward_to=(agent.host, agent.port))
    upstream.answer("fixed.example.test", "A", "192.0.2.77")
    servers = agent.server.upstream

    def change() -> None:
        agent.call(lambda: agent.server.set_upstreams([hostport(upstream)]))

    change()
    wait_until(lambda: servers.servers[0].disabled is not None, 3, "first detection")
    change()  # the same looping upstream again: found again
    wait_until(lambda: upstream.count(qtype="HINFO") == 2, 3, "second probe")
    wait_until(lambda: servers.servers[0].disabled is not None, 3, "second detection")
    upstream.default = Rule(rcode=3, soa=(60, 60))  # the loop is fixed: NXDOMAIN for probes
    change()
    wait_until(lambda: upstream.count(qtype="HINFO") == 3, 3, "third probe")
    assert agent.query("fixed.example.test").answer[0][0].to_text() == "192.0.2.77"
    assert servers.servers[0].disabled is None


def test_an_undetected_loop_does_not_multiply_queries(start_agent: StartAgent) -> None:
    # A long backoff: the probe of a down upstream (". NS") would go round the loop too,
    # and this test counts what one client query causes.
    timeouts = {"query_timeout": 0.6, "attempt_timeout": 0.6, "down_base": 30}
    a = start_agent(upstreams=[], **timeouts)
    b = start_agent(upstreams=[f"{a.host}:{a.port}"], **timeouts)
    a.call(lambda: a.server.set_upstreams([hostport(b)]))  # loop checks are off here
    began = time.monotonic()
    assert a.query("round.example.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - began < 1.5
    # The query went round once and then joined itself at A (coalescing) until A's timeout.
    # A answered twice (the client, and its own query coming back), B once.
    wait_until(lambda: sum(b.server.counts().values()) >= 1, 2, "B's answer")
    wait_until(lambda: sum(a.server.counts().values()) >= 2, 2, "A's answers")
    assert sum(a.server.counts().values()) == 2
    assert sum(b.server.counts().values()) == 1
