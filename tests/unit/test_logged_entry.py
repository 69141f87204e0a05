"""The logging query entry answers exactly as the plain one, and records what it answered.

Both entries are fed the same datagrams (no sockets: ``answer_now`` is what the listeners
call) with the same seeded randomness, so a step of the walk that the logging copy got
wrong shows as a different answer.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rrset
import pytest

from agent.config import AgentConfig, HostPort
from agent.entry import QueryEntry
from agent.handlers.policy import PolicyAnswers
from agent.logged_entry import LoggedQueryEntry
from agent.querylog_config import QueryLogConfig
from agent.server import AgentServer
from dnsmesh.admission import parse_network
from dnsmesh.dnsforward import build_question, build_upstream_query, parse_upstream_response
from dnsmesh.dnswire import name_to_wire
from dnsmesh.policy import parse_policy
from dnsmesh.snapshot import compile_snapshot
from tests.support.policies import policy_doc

WEIGHTED = [{"address": "10.0.0.1", "weight": 3}, {"address": "10.0.0.2", "weight": 1}]


def server(tmp_path: Path, logged: bool, **overrides: Any) -> AgentServer:
    fields: dict[str, Any] = {
        "listen": (HostPort("127.0.0.1", 0),),
        "probes": False,
        "allow": (parse_network("127.0.0.0/8"),),
        **overrides,
    }
    if logged:
        fields["query_log"] = QueryLogConfig(str(tmp_path / "q.log"), max_rate=0)
    agent = AgentServer(dataclasses.replace(AgentConfig(), **fields), rng=random.Random(42))
    agent.apply_snapshot(compile_snapshot([parse_policy(policy_doc("web", WEIGHTED))], 1))
    qname = name_to_wire("cached.example")
    upstream_query = build_upstream_query(qname, 1, 1, 4242)
    response = dns.message.make_response(dns.message.from_wire(upstream_query))
    response.answer.append(dns.rrset.from_text("cached.example.", 300, "IN", "A", "192.0.2.1"))
    answer = parse_upstream_response(response.to_wire(), 4242, build_question(qname, 1, 1))
    agent.cache.put((qname, 1, 1), answer, answer.cache_ttl)
    return agent


def wire(name: str, rdtype: str = "A") -> bytes:
    message = dns.message.make_query(name, rdtype, use_edns=0)
    message.id = 7
    return message.to_wire()


DATAGRAMS = [
    (wire("web.mesh.internal"), "127.0.0.1"),
    (wire("web.mesh.internal", "AAAA"), "127.0.0.1"),
    (wire("WEB.mesh.internal"), "127.0.0.2"),
    (wire("localhost"), "127.0.0.1"),
    (wire("cached.example"), "127.0.0.1"),
    (wire("forward.example"), "127.0.0.1"),
    (wire("web.mesh.internal"), "192.0.2.1"),  # outside --allow
    (b"\x00\x07\x01\x00\x00\x02" + bytes(6), "127.0.0.1"),  # two questions: FORMERR
    (b"\x00\x07", "127.0.0.1"),  # no header: nothing to answer
    (b"\x00\x07", "192.0.2.1"),  # nor to a client outside --allow
] + [(wire("web.mesh.internal"), "127.0.0.1")] * 20  # weighted picks: the same draws


@pytest.mark.parametrize("refuse_drop", [False, True])
def test_both_entries_give_the_same_answers(tmp_path: Path, refuse_drop: bool) -> None:
    plain = server(tmp_path, False, refuse_drop=refuse_drop).entry
    logged = server(tmp_path, True, refuse_drop=refuse_drop).entry
    assert type(plain) is QueryEntry and isinstance(logged, LoggedQueryEntry)
    for data, client in DATAGRAMS:
        assert logged.answer_now(data, client) == plain.answer_now(data, client), (data, client)
    assert logged.totals() == plain.totals()
    assert [t.kinds for t in logged.tallies.values()] == [t.kinds for t in plain.tallies.values()]


def test_without_the_log_the_plain_entry_and_handler_run(tmp_path: Path) -> None:
    agent = server(tmp_path, False)
    assert agent.query_log is None
    assert type(agent.entry) is QueryEntry
    assert type(agent.pipeline.policies) is PolicyAnswers


def test_each_outcome_is_recorded_with_its_source(tmp_path: Path) -> None:
    agent = server(tmp_path, True)
    assert agent.query_log is not None
    for data, client in DATAGRAMS[:10]:
        agent.entry.answer_now(data, client)
    records = list(agent.query_log.queue)
    # The forwarded query is recorded when its forward answers; the silent one is recorded.
    assert [r[4] for r in records] == [
        "policy",
        "policy",
        "policy",
        "local",
        "cache",
        "refused",
        "error",
        "error",
        "refused",
    ]
    snapshot = agent.snapshot.policies()[0]
    assert [r[6] is snapshot for r in records[:3]] == [True] * 3
    assert all(r[6] is None for r in records[3:])
    assert records[6][7] == "not exactly one question"
    assert records[8][3] is None and records[8][5] is None  # nothing parsed, nothing sent


def test_a_reload_after_the_answer_does_not_relabel_its_line(tmp_path: Path) -> None:
    agent = server(tmp_path, True)
    log = agent.query_log
    assert log is not None
    log.open()
    sent = agent.entry.answer_now(wire("web.mesh.internal"), "127.0.0.1")
    assert isinstance(sent, bytes)
    # A reload lands before the writer formats the line: other endpoints, revision 2.
    other = [{"address": "10.9.9.9"}]
    agent.apply_snapshot(compile_snapshot([parse_policy(policy_doc("web", other))], 2))
    assert log.write_pending() == 1
    line = json.loads((tmp_path / "q.log").read_text())
    decision = line["decision"]
    assert decision["revision"] == 1
    assert [c["address"] for c in decision["candidates"]] == ["10.0.0.1", "10.0.0.2"]
    answered = [r.address for rrset in dns.message.from_wire(sent).answer for r in rrset]
    assert decision["picked"] == answered
    log.stop(1.0)


def test_a_rate_limited_query_is_recorded_with_its_name(tmp_path: Path) -> None:
    agent = server(tmp_path, True, rate_limit=1.0, rate_limit_slip=1)
    assert agent.query_log is not None
    data = wire("web.mesh.internal")
    slipped = agent.entry.over_limit(data, "127.0.0.1")
    assert slipped is not None and dns.message.from_wire(slipped).flags & dns.flags.TC
    [record] = agent.query_log.queue
    assert record[4] == "ratelimited" and record[5] == slipped
    assert record[3] is not None and record[3].qname == name_to_wire("web.mesh.internal")
