"""DoT and DoH upstreams through the real agent: local TLS servers with a throwaway CA.

Each refusal test also runs a plain DNS server on port 53 of the same loopback address:
an encrypted upstream that fails must never be asked in plain text, so it must see nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import pytest
import trustme

from tests.integration.conftest import FakeClock, RunningAgent
from tests.integration.encrypted_servers import (
    BlackHole,
    DohServer,
    DotServer,
    Http11DohServer,
    server_context,
)
from tests.integration.fakedns import FakeUpstream, LoopThread
from tests.support.polling import wait_until

StartAgent = Callable[..., RunningAgent]
NAME = "dns.test"  # what the test servers' certificates say


def addresses(response: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in response.answer for rr in rrset]


def ede(response: dns.message.Message) -> list[tuple[int, str]]:
    return [(o.code, o.text or "") for o in response.options if isinstance(o, dns.edns.EDEOption)]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def plain(loop_thread: LoopThread) -> Iterator[FakeUpstream]:
    """Plain DNS (UDP and TCP) on port 53 of a loopback address of its own, where the
    encrypted servers of the test also listen: where a downgrade would go."""
    for _ in range(20):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        fake = FakeUpstream(loop_thread, host, 53)
        try:
            fake.start()
        except OSError:
            continue
        yield fake
        fake.stop()
        return
    pytest.skip("no loopback address with port 53 free")


@pytest.fixture
def backend(loop_thread: LoopThread) -> FakeUpstream:
    """The answers of the encrypted test servers (not started: they call its handler)."""
    fake = FakeUpstream(loop_thread)
    fake.answer("www.example.test", "A", "192.0.2.80", ttl=300)
    for i in range(20):
        fake.answer(f"n{i}.example.test", "A", f"192.0.2.{i + 1}", ttl=300)
    return fake


@pytest.fixture
def make_dot(
    loop_thread: LoopThread, backend: FakeUpstream, ca: trustme.CA
) -> Iterator[Callable[..., DotServer]]:
    servers: list[DotServer] = []

    def make(host: str = "127.0.0.1", port: int = 0, names: tuple[str, ...] = (NAME,)) -> DotServer:
        server = DotServer(loop_thread, backend, server_context(ca, *names), host, port)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_doh(
    loop_thread: LoopThread, backend: FakeUpstream, ca: trustme.CA
) -> Iterator[Callable[..., DohServer]]:
    servers: list[DohServer] = []

    def make(host: str = "127.0.0.1", port: int = 0, names: tuple[str, ...] = (NAME,)) -> DohServer:
        context = server_context(ca, *names, alpn=["h2"])
        server = DohServer(loop_thread, backend, context, host, port)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def ask_together(
    agent: RunningAgent, names: list[str], timeout: float = 5.0
) -> list[dns.message.Message]:
    async def all_of() -> list[dns.message.Message]:
        return await asyncio.gather(
            *(
                dns.asyncquery.udp(
                    dns.message.make_query(name, "A"), agent.host, timeout=timeout, port=agent.port
                )
                for name in names
            )
        )

    return asyncio.run(all_of())


# -- DNS over TLS -----------------------------------------------------------------------------


def test_dot_answers_on_one_reused_connection(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    dot = make_dot()
    agent = start_agent(upstreams=[f"tls://{dot.address}#{NAME}"], upstream_ca=ca_file)
    for i in range(20):
        assert addresses(agent.query(f"n{i}.example.test")) == [f"192.0.2.{i + 1}"]
    assert backend.count(transport="dot") == 20
    assert dot.accepted == 1  # one handshake for twenty queries
    assert len({r.source for r in backend.received}) == 1


def test_dot_pipelines_concurrent_queries_on_one_connection(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    names = [f"n{i}.example.test" for i in range(10)]
    for i, name in enumerate(names):
        # The later asked, the sooner answered: the answers come back out of order.
        backend.answer(name, "A", f"192.0.2.{i + 1}", delay=0.5 + 0.05 * (9 - i))
    dot = make_dot()
    agent = start_agent(
        upstreams=[f"tls://{dot.address}#{NAME}"],
        upstream_ca=ca_file,
        attempt_timeout=2.0,
        query_timeout=3.0,
    )
    agent.query("www.example.test")  # the connection is up before the burst
    began = time.monotonic()
    responses = ask_together(agent, names)
    took = time.monotonic() - began
    assert [addresses(r) for r in responses] == [[f"192.0.2.{i + 1}"] for i in range(10)]
    assert dot.accepted == 1
    # One at a time, the ten would take over 5 s; pipelined, about the slowest one (0.95 s).
    assert took < 3.0, took


def test_dot_idle_connection_is_closed_and_reopened(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    dot = make_dot()
    agent = start_agent(
        upstreams=[f"tls://{dot.address}#{NAME}"], upstream_ca=ca_file, upstream_idle_timeout=0.3
    )
    assert addresses(agent.query("n0.example.test")) == ["192.0.2.1"]
    assert dot.accepted == 1
    wait_until(lambda: not dot.open, 5, "the agent closing its idle connection")
    assert addresses(agent.query("n1.example.test")) == ["192.0.2.2"]
    assert dot.accepted == 2


def test_dot_reconnects_when_the_server_closed_the_connection(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    make_upstream: Callable[..., FakeUpstream],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    dot = make_dot()
    second = make_upstream()  # where a failed attempt on the closed connection would go
    second.answer("n1.example.test", "A", "192.0.2.99")
    agent = start_agent(upstreams=[f"tls://{dot.address}#{NAME}", second], upstream_ca=ca_file)
    assert addresses(agent.query("n0.example.test")) == ["192.0.2.1"]
    dot.close_on_next_query = True  # the server's idle timeout, as our query arrives
    assert addresses(agent.query("n1.example.test")) == ["192.0.2.2"]
    assert dot.accepted == 2 and backend.count("n1.example.test") == 1
    assert second.count() == 0  # asked again on a new connection, not failed over
    assert not agent.server.upstream.servers[0].suspect


@pytest.mark.parametrize("refusal", ["wrong name", "untrusted CA"])
@pytest.mark.parametrize("transport", ["dot", "doh"])
def test_a_bad_certificate_is_refused_and_never_downgraded(
    refusal: str,
    transport: str,
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    make_doh: Callable[..., DohServer],
    backend: FakeUpstream,
    plain: FakeUpstream,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    plain.answer("www.example.test", "A", "192.0.2.99")  # what a downgrade would get
    name = "other.test" if refusal == "wrong name" else NAME
    trusted = ca_file
    if refusal == "untrusted CA":
        trusted = tmp_path / "another-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(trusted))
    if transport == "dot":
        server: DotServer | DohServer = make_dot(plain.host, 853)
        upstream = f"tls://{plain.host}#{name}"
    else:
        server = make_doh(plain.host)
        upstream = f"{server.url()}#{name}"
    agent = start_agent(upstreams=[upstream], upstream_ca=trusted)
    r = agent.query("www.example.test")
    assert r.rcode() == dns.rcode.SERVFAIL
    [(code, text)] = ede(r)
    assert code == 22 and "certificate" in text, text
    assert server.hellos and set(server.hellos) == {name}  # TLS was tried ...
    assert backend.count() == 0  # ... and no query went through it
    time.sleep(0.3)  # a probe or a fallback would come now
    assert plain.count() == 0  # nor in plain text, over UDP or TCP


def test_failover_from_a_dead_dot_upstream_to_a_live_one(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    loop_thread: LoopThread,
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    hole = BlackHole(loop_thread).start()  # accepts, never completes a handshake
    try:
        live = make_dot()
        agent = start_agent(
            upstreams=[f"tls://{hole.host}:{hole.port}#{NAME}", f"tls://{live.address}#{NAME}"],
            upstream_ca=ca_file,
            attempt_timeout=0.3,
            query_timeout=1.5,
            down_base=30,
        )
        assert addresses(agent.query("n0.example.test")) == ["192.0.2.1"]
        dead = agent.server.upstream.servers[0]
        wait_until(lambda: dead.down_until > time.monotonic(), 5, "the dead one marked down")
        began = time.monotonic()
        assert addresses(agent.query("n1.example.test")) == ["192.0.2.2"]
        assert time.monotonic() - began < 0.25  # straight to the live one, no attempt timeout
        assert hole.accepted >= 1 and backend.count(transport="dot") == 2
    finally:
        hole.stop()


def test_serve_stale_when_the_dot_upstream_dies(
    start_agent: StartAgent, make_dot: Callable[..., DotServer], ca_file: Path
) -> None:
    dot = make_dot()
    clock = FakeClock()
    agent = start_agent(
        upstreams=[f"tls://{dot.address}#{NAME}"], upstream_ca=ca_file, clock=clock, stale_ttl=30
    )
    assert addresses(agent.query("www.example.test")) == ["192.0.2.80"]
    dot.stop()
    clock.advance(400)  # expired (TTL 300), within max_stale
    r = agent.query("www.example.test")
    assert r.rcode() == dns.rcode.NOERROR
    assert addresses(r) == ["192.0.2.80"]
    assert r.answer[0].ttl == 30
    assert [code for code, _ in ede(r)] == [3]  # RFC 8914 Stale Answer


# -- DNS over HTTPS ---------------------------------------------------------------------------


def test_doh_answers_over_http2_on_one_reused_connection(
    start_agent: StartAgent,
    make_doh: Callable[..., DohServer],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    doh = make_doh()
    agent = start_agent(upstreams=[f"{doh.url()}#{NAME}"], upstream_ca=ca_file)
    for i in range(20):
        assert addresses(agent.query(f"n{i}.example.test")) == [f"192.0.2.{i + 1}"]
    assert backend.count(transport="doh") == 20
    assert doh.accepted == 1  # the server speaks only HTTP/2: every query was an h2 stream
    assert set(doh.requests) == {("POST", "/dns-query", "application/dns-message")}


def test_doh_carries_concurrent_queries_on_one_connection(
    start_agent: StartAgent,
    make_doh: Callable[..., DohServer],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    names = [f"n{i}.example.test" for i in range(10)]
    for i, name in enumerate(names):
        backend.answer(name, "A", f"192.0.2.{i + 1}", delay=0.5)
    doh = make_doh()
    agent = start_agent(
        upstreams=[f"{doh.url()}#{NAME}"],
        upstream_ca=ca_file,
        attempt_timeout=2.0,
        query_timeout=3.0,
    )
    agent.query("www.example.test")
    began = time.monotonic()
    responses = ask_together(agent, names)
    took = time.monotonic() - began
    assert [addresses(r) for r in responses] == [[f"192.0.2.{i + 1}"] for i in range(10)]
    assert doh.accepted == 1
    assert took < 3.0, took  # one at a time: over 5 s


def test_failover_from_a_dead_doh_upstream_to_a_live_dot_one(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    make_doh: Callable[..., DohServer],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    doh = make_doh()
    dot = make_dot()
    dead_url = f"{doh.url()}#{NAME}"
    doh.stop()  # nothing listens there now: connection refused
    agent = start_agent(
        upstreams=[dead_url, f"tls://{dot.address}#{NAME}"], upstream_ca=ca_file, down_base=30
    )
    assert addresses(agent.query("n0.example.test")) == ["192.0.2.1"]
    assert backend.count(transport="dot") == 1
    dead = agent.server.upstream.servers[0]
    wait_until(lambda: dead.down_until > time.monotonic(), 5, "the dead one marked down")


def test_doh_over_http11_when_the_server_offers_no_http2(
    start_agent: StartAgent,
    loop_thread: LoopThread,
    backend: FakeUpstream,
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    doh = Http11DohServer(loop_thread, backend, ca, tmp_path).start()
    try:
        agent = start_agent(upstreams=[f"{doh.url()}#{NAME}"], upstream_ca=ca_file)
        for i in range(5):
            assert addresses(agent.query(f"n{i}.example.test")) == [f"192.0.2.{i + 1}"]
        assert {(version, method) for version, method, _ in doh.requests} == {("1.1", "POST")}
        assert len({port for _, _, port in doh.requests}) == 1  # one kept-alive connection
    finally:
        doh.stop()


def test_a_hanging_dot_handshake_is_given_up_and_retried(
    start_agent: StartAgent, loop_thread: LoopThread, ca_file: Path
) -> None:
    hole = BlackHole(loop_thread).start()  # accepts the TCP connection, never answers TLS
    try:
        agent = start_agent(
            upstreams=[f"tls://{hole.host}:{hole.port}#{NAME}"],
            upstream_ca=ca_file,
            attempt_timeout=0.3,
            query_timeout=0.5,
            down_base=0.3,
        )
        assert agent.query("n0.example.test").rcode() == dns.rcode.SERVFAIL
        # The handshake is bounded (by the query timeout), so the probes that follow try a
        # new connection; unbounded, they would all wait on the first one for a minute.
        wait_until(lambda: hole.accepted >= 2, 5, "a second handshake")
    finally:
        hole.stop()


def test_a_dot_servfail_tries_the_next_upstream(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    make_upstream: Callable[..., FakeUpstream],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    backend.on("sf.example.test", "A", rcode=dns.rcode.SERVFAIL)
    dot = make_dot()
    second = make_upstream()
    second.answer("sf.example.test", "A", "192.0.2.77")
    agent = start_agent(upstreams=[f"tls://{dot.address}#{NAME}", second], upstream_ca=ca_file)
    assert addresses(agent.query("sf.example.test")) == ["192.0.2.77"]
    assert backend.count("sf.example.test") == 1 and second.count("sf.example.test") == 1


def test_a_slow_dot_answer_still_wins_after_its_attempt_timed_out(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    backend.answer("slow.example.test", "A", "192.0.2.55", delay=0.7)
    dot = make_dot()
    agent = start_agent(
        upstreams=[f"tls://{dot.address}#{NAME}"],
        upstream_ca=ca_file,
        attempt_timeout=0.5,
        query_timeout=2.0,
    )
    agent.query("www.example.test")  # the connection is up: no handshake in the timing
    began = time.monotonic()
    assert addresses(agent.query("slow.example.test")) == ["192.0.2.55"]
    # The first attempt's answer at ~0.7 s, not the retry's at ~1.2 s nor a timeout.
    assert time.monotonic() - began < 1.1


def test_doh_http_errors_fail_the_attempt(
    start_agent: StartAgent, make_doh: Callable[..., DohServer], ca_file: Path
) -> None:
    doh = make_doh()
    agent = start_agent(
        upstreams=[f"https://{doh.host}:{doh.port}/wrong#{NAME}"], upstream_ca=ca_file
    )
    r = agent.query("www.example.test")
    assert r.rcode() == dns.rcode.SERVFAIL
    [(code, text)] = ede(r)
    assert code == 22 and "HTTP status 404" in text, text


def test_the_loop_check_runs_over_dot(
    start_agent: StartAgent,
    make_dot: Callable[..., DotServer],
    backend: FakeUpstream,
    ca_file: Path,
) -> None:
    dot = make_dot()
    agent = start_agent(
        upstreams=[f"tls://{dot.address}#{NAME}"], upstream_ca=ca_file, loop_check=True
    )
    wait_until(lambda: backend.count(transport="dot") >= 1, 5, "the loop check's query")
    assert addresses(agent.query("www.example.test")) == ["192.0.2.80"]
    assert agent.server.upstream.servers[0].disabled is None
    assert dot.accepted == 1
