"""Robustness: malformed packets, responses, odd opcodes, and a fuzz against the running server."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import RunningAgent, policy_yaml
from tests.integration.fakedns import FakeUpstream

StartAgent = Callable[..., RunningAgent]


@pytest.fixture
def agent(tmp_path: Path, start_agent: StartAgent, upstream: FakeUpstream) -> RunningAgent:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("ok", "ok.mesh.test", [{"address": "10.2.0.1"}]))
    return start_agent(upstreams=[upstream], policies=path, attempt_timeout=0.2, query_timeout=0.4)


def udp_exchange(agent: RunningAgent, packet: bytes, wait: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(packet, (agent.host, agent.port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def assert_still_answers(agent: RunningAgent) -> None:
    for tcp in (False, True):
        response = agent.query("ok.mesh.test", tcp=tcp)
        assert response.answer[0][0].to_text() == "10.2.0.1"


def test_garbage_then_a_good_query(agent: RunningAgent) -> None:
    for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34" + b"\xff" * 40):
        udp_exchange(agent, junk, wait=0.05)
    with socket.create_connection((agent.host, agent.port), timeout=3) as sock:
        sock.sendall(struct.pack("!H", 5) + b"hello")  # a framed message that is no DNS
    assert_still_answers(agent)
    assert agent.server.counts()["malformed"] >= 5


def test_responses_are_never_answered(agent: RunningAgent) -> None:
    query = dns.message.make_query("ok.mesh.test", "A")
    response = dns.message.make_response(query).to_wire()  # QR=1
    assert udp_exchange(agent, response, wait=0.3) is None
    assert_still_answers(agent)


def test_other_opcodes_get_notimp(agent: RunningAgent) -> None:
    query = dns.message.make_query("ok.mesh.test", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = udp_exchange(agent, query.to_wire())
    assert reply is not None
    parsed = dns.message.from_wire(reply)
    assert parsed.rcode() == dns.rcode.NOTIMP and parsed.id == query.id
    assert parsed.flags & dns.flags.RA


def test_two_questions_get_formerr(agent: RunningAgent) -> None:
    query = dns.message.make_query("ok.mesh.test", "A")
    wire = bytearray(query.to_wire())
    wire[4:6] = struct.pack("!H", 2)  # QDCOUNT 2, one question present
    reply = udp_exchange(agent, bytes(wire))
    assert reply is not None
    assert reply[:2] == wire[:2] and reply[3] & 0x0F == dns.rcode.FORMERR


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(["ok.mesh.test", "x.example.test", "localhost", "a.b.local"]))
    qtype = draw(st.sampled_from(["A", "AAAA", "TXT", "HTTPS", "ANY"]))
    use_edns = draw(st.booleans())
    wire = bytearray(
        dns.message.make_query(name, qtype, use_edns=0 if use_edns else False).to_wire()
    )
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(wire) - 1))
        wire[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(wire)))
    return bytes(wire[:cut]) + draw(st.binary(max_size=8))


packets = st.one_of(st.binary(max_size=600), mutated_queries())


@pytest.fixture
def no_agent_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.ERROR):
        yield
    crashes = [r for r in caplog.records if r.name.startswith(("agent", "asyncio"))]
    assert not crashes, [r.getMessage() for r in crashes]


def fuzz_packet(agent: RunningAgent, packet: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, (agent.host, agent.port))
    with socket.create_connection((agent.host, agent.port), timeout=3) as tcp:
        tcp.sendall(struct.pack("!H", len(packet)) + packet)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(packet=packets)
def test_fuzz_smoke_then_still_answers(
    agent: RunningAgent, no_agent_errors: None, packet: bytes
) -> None:
    fuzz_packet(agent, packet)
    response = agent.query("ok.mesh.test")
    assert response.answer[0][0].to_text() == "10.2.0.1"


@pytest.mark.slow
@settings(
    max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(packet=packets)
def test_fuzz_campaign(agent: RunningAgent, no_agent_errors: None, packet: bytes) -> None:
    fuzz_packet(agent, packet)
    assert_still_answers(agent)
