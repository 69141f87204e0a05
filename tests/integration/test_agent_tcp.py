"""TCP per RFC 7766: pipelining out of order, partial reads, idle timeout, connection bound."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import dns.message

from tests.integration.conftest import RunningAgent, policy_yaml
from tests.integration.fakedns import FakeUpstream
from tests.support.polling import wait_until

StartAgent = Callable[..., RunningAgent]


def frame(message: dns.message.Message) -> bytes:
    wire = message.to_wire()
    return struct.pack("!H", len(wire)) + wire


def read_message(sock: socket.socket) -> dns.message.Message:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    (size,) = struct.unpack("!H", exactly(2))
    return dns.message.from_wire(exactly(size))


def connect(agent: RunningAgent) -> socket.socket:
    sock = socket.create_connection((agent.host, agent.port), timeout=3)
    return sock


def test_slow_forward_does_not_hold_back_a_policy_answer(
    tmp_path: Path, start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("slow.example.test", "A", "192.0.2.1", delay=0.5)
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("fast", "fast.mesh.test", [{"address": "10.1.0.1"}]))
    agent = start_agent(upstreams=[upstream], policies=path, attempt_timeout=1.0, query_timeout=1.5)
    slow = dns.message.make_query("slow.example.test", "A")
    fast = dns.message.make_query("fast.mesh.test", "A")
    with connect(agent) as sock:
        began = time.monotonic()
        sock.sendall(frame(slow) + frame(fast))  # pipelined in one write
        first = read_message(sock)
        first_at = time.monotonic() - began
        second = read_message(sock)
    assert first.id == fast.id and first_at < 0.4, first_at  # the slow one takes 0.5 s
    assert second.id == slow.id
    assert second.answer[0][0].to_text() == "192.0.2.1"


def test_partial_reads_and_many_queries_on_one_connection(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("p", "p.mesh.test", [{"address": "10.1.0.2"}]))
    agent = start_agent(policies=path)
    queries = [dns.message.make_query("p.mesh.test", "A") for _ in range(20)]
    stream = b"".join(frame(q) for q in queries)
    with connect(agent) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(stream), 7):  # dribble it in 7-byte pieces
            sock.sendall(stream[i : i + 7])
            time.sleep(0.001)
        ids = {read_message(sock).id for _ in queries}
    assert ids == {q.id for q in queries}


def test_idle_connections_are_closed(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("p", "p.mesh.test", [{"address": "10.1.0.3"}]))
    agent = start_agent(policies=path, tcp_idle_timeout=0.3)
    with connect(agent) as sock:
        sock.sendall(frame(dns.message.make_query("p.mesh.test", "A")))
        read_message(sock)
        began = time.monotonic()
        assert sock.recv(10) == b""  # the server closed it
        assert 0.2 < time.monotonic() - began < 2.0


def test_connection_limit_closes_the_oldest_idle(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("p", "p.mesh.test", [{"address": "10.1.0.4"}]))
    agent = start_agent(policies=path, tcp_max_connections=2)
    query = frame(dns.message.make_query("p.mesh.test", "A"))
    first, second = connect(agent), connect(agent)
    try:
        for sock in (first, second):
            sock.sendall(query)
            read_message(sock)
        with connect(agent) as third:
            third.sendall(query)
            assert read_message(third).answer
            assert first.recv(10) == b""  # the least recently active idle one went
        second.sendall(query)
        assert read_message(second).answer
    finally:
        first.close()
        second.close()


def test_a_client_disconnecting_mid_query_does_not_hurt(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("gone.example.test", "A", "192.0.2.2", delay=0.2)
    agent = start_agent(upstreams=[upstream])
    with connect(agent) as sock:
        sock.sendall(frame(dns.message.make_query("gone.example.test", "A")))
    # The forward completes after the client left; its answer has nowhere to go.
    wait_until(lambda: agent.server.counts()["upstream"] == 1, what="the forward")
    assert agent.query("gone.example.test", tcp=True).answer


def test_pipelined_forwards_per_connection_are_bounded(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    for i in range(4):
        upstream.answer(f"s{i}.example.test", "A", f"192.0.2.{i + 1}", delay=0.3)
    agent = start_agent(upstreams=[upstream], tcp_max_pipelined=2, attempt_timeout=1.0)
    queries = [dns.message.make_query(f"s{i}.example.test", "A") for i in range(4)]
    with connect(agent) as sock:
        sock.sendall(b"".join(frame(q) for q in queries))
        ids = {read_message(sock).id for _ in queries}
    assert ids == {q.id for q in queries}  # all answered in the end
    arrivals = sorted(r.at for r in upstream.received)
    # Two at once; the third only after an answer freed a slot (0.3 s later).
    assert arrivals[1] - arrivals[0] < 0.15
    assert arrivals[2] - arrivals[0] > 0.25


def test_when_every_connection_is_busy_a_new_one_is_refused(
    start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("busy.example.test", "A", "192.0.2.3", delay=0.4)
    agent = start_agent(upstreams=[upstream], tcp_max_connections=1, attempt_timeout=1.0)
    with connect(agent) as busy:
        busy.sendall(frame(dns.message.make_query("busy.example.test", "A")))
        wait_until(lambda: upstream.count("busy.example.test") == 1, 2, "the forward")
        with connect(agent) as refused, contextlib.suppress(ConnectionResetError):
            assert refused.recv(10) == b""  # closed (or reset: the agent aborts it)
        assert read_message(busy).answer  # the busy one is served on
    assert agent.server.counts()["dropped"] == 1
