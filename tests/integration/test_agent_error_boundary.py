"""The query entry's error boundary: a handler or forward that raises costs one SERVFAIL.

A failing handler is injected in front of the real pipeline (the pipeline is a plain value
of the entry, so this is the same seam the agent builds itself through). Every failing
query must get SERVFAIL with EDE 0 ("Other", RFC 8914) and one ``query.error`` line, while
the queries around it, on the same TCP connection too, are answered as usual.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from agent.answer import Answer, Source
from agent.pipeline import Pipeline
from dnsmesh.dnswire import Query
from tests.integration.conftest import RunningAgent, policy_yaml
from tests.integration.fakedns import FakeUpstream
from tests.integration.test_agent_tcp import frame, read_message

StartAgent = Callable[..., RunningAgent]


class Injected(RuntimeError):
    pass


def _failing(pipeline: Pipeline) -> Pipeline:
    """The pipeline with a first handler that raises for *.boom names, and a forward that
    raises for *.explode names."""

    def boom(query: Query, client: str) -> bytes | None:
        if query.qname.endswith(b"\x04boom\x04mesh\x04test\x00"):
            raise Injected("handler failed on purpose")
        return None

    async def final(query: Query, client: str) -> Answer:
        if b"\x07explode" in query.qname:
            raise Injected("forward failed on purpose")
        return await pipeline.final(query, client)

    return Pipeline(immediate=((boom, Source.POLICY), *pipeline.immediate), final=final)


@pytest.fixture
def agent(tmp_path: Path, start_agent: StartAgent, upstream: FakeUpstream) -> RunningAgent:
    upstream.answer("fine.example.test", "A", "192.0.2.7")
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("ok", "ok.mesh.test", [{"address": "10.1.0.9"}]))
    running = start_agent(upstreams=[upstream], policies=path)
    entry = running.server.entry

    def inject() -> None:
        entry.pipeline = _failing(entry.pipeline)

    running.call(inject)
    return running


def _assert_internal_servfail(response: dns.message.Message) -> None:
    assert response.rcode() == dns.rcode.SERVFAIL
    codes = [o.code for o in response.options if isinstance(o, dns.edns.EDEOption)]
    assert codes == [dns.edns.EDECode.OTHER], response.options


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "query.error"]


def _step(record: logging.LogRecord) -> str:
    step: str = record.__dict__["dnsmesh_fields"]["step"]
    return step


def test_udp_handler_and_forward_failures_are_servfail_and_the_agent_keeps_serving(
    agent: RunningAgent, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="agent.entry"):
        _assert_internal_servfail(agent.query("a.boom.mesh.test"))
        _assert_internal_servfail(agent.query("b.explode.example.test"))
        # Answered as before, from the policy and from the upstream.
        assert agent.query("ok.mesh.test").answer[0][0].to_text() == "10.1.0.9"
        assert agent.query("fine.example.test").answer[0][0].to_text() == "192.0.2.7"
    assert [_step(r) for r in _errors(caplog)] == ["handler", "forward"]
    assert agent.server.counts()[Source.ERROR] == 2


def test_tcp_pipelined_failures_leave_the_other_queries_on_the_connection_answered(
    agent: RunningAgent, caplog: pytest.LogCaptureFixture
) -> None:
    names = ["c.boom.mesh.test", "ok.mesh.test", "d.explode.example.test", "fine.example.test"]
    queries = [dns.message.make_query(n, "A", use_edns=0) for n in names]
    with (
        caplog.at_level(logging.ERROR, logger="agent.entry"),
        socket.create_connection((agent.host, agent.port), timeout=3) as sock,
    ):
        sock.sendall(b"".join(frame(q) for q in queries))  # pipelined in one write
        answers = {r.id: r for r in (read_message(sock) for _ in queries)}
        # The connection is still open and serving after the failures.
        again = dns.message.make_query("ok.mesh.test", "A")
        sock.sendall(frame(again))
        assert read_message(sock).answer[0][0].to_text() == "10.1.0.9"
    boom, ok, explode, fine = (answers[q.id] for q in queries)
    _assert_internal_servfail(boom)
    _assert_internal_servfail(explode)
    assert ok.answer[0][0].to_text() == "10.1.0.9"
    assert fine.answer[0][0].to_text() == "192.0.2.7"
    assert sorted(_step(r) for r in _errors(caplog)) == ["forward", "handler"]
