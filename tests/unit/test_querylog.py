"""The query log's pure core: admission, client prefixes, the decision and the line format."""

from __future__ import annotations

import json
import random
from typing import Any

import dns.message
import pytest

from dnsmesh.dnswire import Query, parse_query
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.querylog import (
    ClientMask,
    Decisions,
    LineAdmission,
    LineFormatter,
    Record,
    rcode_text,
    type_text,
)
from dnsmesh.reweigh import reweigh
from dnsmesh.snapshot import CompiledPolicy, compile_snapshot
from tests.support.policies import policy_doc


def make_policy(endpoints: list[dict[str, Any]], **spec: Any) -> Policy:
    return parse_policy(policy_doc("web", endpoints, **spec))


def ask(name: str = "web.mesh.internal", rdtype: str = "A", rdclass: str = "IN") -> Query:
    return parse_query(dns.message.make_query(name, rdtype, rdclass).to_wire())


def answered(
    compiled: CompiledPolicy, query: Query, client: str = "127.0.0.1", seed: int = 1
) -> tuple[bytes, list[str]]:
    """The response and the addresses dnspython reads in its answer section."""
    wire = compiled.respond(query, client, random.Random(seed))
    message = dns.message.from_wire(wire)
    return wire, [rdata.address for rrset in message.answer for rdata in rrset]


def decision(compiled: CompiledPolicy, client: str, query: Query, wire: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(Decisions().text(compiled, client, query, wire))
    return parsed


def answer_addresses(wire: bytes, question_size: int) -> list[str]:
    return Decisions().picked(wire, question_size)


# --- admission -------------------------------------------------------------------------------


def test_every_line_is_admitted_by_default_within_the_rate() -> None:
    admission = LineAdmission()
    assert all(admission.admit(10.0 + i / 1000) for i in range(1000))
    assert admission.limited == 0


def test_the_rate_admits_a_second_worth_then_counts_what_it_leaves_out() -> None:
    admission = LineAdmission(max_rate=10)
    burst = [admission.admit(5.0) for _ in range(25)]
    assert burst.count(True) == 10
    assert admission.limited == 15
    # Half a second later, half a second's worth more.
    assert [admission.admit(5.5) for _ in range(10)].count(True) == 5
    assert admission.limited == 20


def test_a_flood_gets_max_rate_lines_a_second() -> None:
    admission = LineAdmission(max_rate=100)
    queries = [i / 10_000 for i in range(100_000)]  # 10 s at 10 000 queries a second
    admitted = sum(admission.admit(now) for now in queries)
    assert 1000 <= admitted <= 1100  # 100 a second, plus the first second's bucket
    assert admitted + admission.limited == len(queries)


def test_rate_zero_means_no_bound() -> None:
    admission = LineAdmission(max_rate=0)
    assert all(admission.admit(1.0) for _ in range(50_000))


def test_sampling_keeps_about_that_fraction_and_counts_none_as_left_out() -> None:
    admission = LineAdmission(sample=0.1, max_rate=0, rng=random.Random(7))
    admitted = sum(admission.admit(1.0) for _ in range(20_000))
    assert 1700 <= admitted <= 2300  # 2000 expected, sigma ~42
    assert admission.limited == 0
    assert not any(LineAdmission(sample=0.0).admit(1.0) for _ in range(100))


@pytest.mark.parametrize(("sample", "rate"), [(-0.1, 1), (1.5, 1), (0.5, -1)])
def test_bad_admission_settings_are_refused(sample: float, rate: float) -> None:
    with pytest.raises(ValueError):
        LineAdmission(sample, rate)


# --- client prefixes -----------------------------------------------------------------------


def test_clients_are_cut_to_their_prefix() -> None:
    mask = ClientMask(24, 56)
    assert mask("192.0.2.77") == "192.0.2.0"
    assert mask("2001:db8:aa:bbcc:1:2:3:4") == "2001:db8:aa:bb00::"
    assert mask("fe80::1%eth0") == "fe80::"
    assert mask("not-an-address") == "not-an-address"


def test_full_prefixes_keep_clients_whole() -> None:
    mask = ClientMask()
    assert mask("192.0.2.77") == "192.0.2.77"
    assert mask("2001:db8::1") == "2001:db8::1"


def test_bad_prefixes_are_refused() -> None:
    with pytest.raises(ValueError):
        ClientMask(33, 64)
    with pytest.raises(ValueError):
        ClientMask(24, 129)


# --- the decision --------------------------------------------------------------------------


def test_picked_is_what_the_answer_section_holds() -> None:
    policy = make_policy([{"address": f"10.0.0.{i}", "weight": i} for i in range(1, 6)], answers=3)
    compiled = compile_snapshot([policy], 4).policies()[0]
    query = ask()
    for seed in range(20):
        wire, sent = answered(compiled, query, seed=seed)
        assert len(sent) == 3
        assert answer_addresses(wire, len(query.question)) == sent
        assert decision(compiled, "127.0.0.1", query, wire)["picked"] == sent


def test_picked_reads_aaaa_records_and_stops_at_a_cut() -> None:
    policy = make_policy([{"address": "2001:db8::1"}, {"address": "2001:db8::2"}], answers=2)
    compiled = compile_snapshot([policy]).policies()[0]
    query = ask(rdtype="AAAA")
    wire, sent = answered(compiled, query)
    assert answer_addresses(wire, len(query.question)) == sent
    assert answer_addresses(wire[:-10], len(query.question)) == sent[:1]


def test_candidates_carry_configured_and_effective_weights_and_state() -> None:
    policy = make_policy(
        [
            {"address": "10.0.0.1", "weight": 5},
            {"address": "10.0.0.2", "weight": 5},
            {"address": "10.0.0.3", "weight": 0},
            {"address": "2001:db8::1", "weight": 1},
        ]
    )
    base = compile_snapshot([policy], 7)
    # Health ejected 10.0.0.2: the served snapshot is the base re-weighed.
    served = reweigh(base, {"web": {"10.0.0.1": 5, "10.0.0.2": 0, "10.0.0.3": 0}})
    compiled = served.policies()[0]
    query = ask()
    wire, sent = answered(compiled, query)
    assert sent == ["10.0.0.1"]
    assert decision(compiled, "127.0.0.1", query, wire) == {
        "policy": "web",
        "slice": None,
        "revision": 7,
        "candidates": [
            {"address": "10.0.0.1", "weight": 5, "effective_weight": 5, "state": "active"},
            {"address": "10.0.0.2", "weight": 5, "effective_weight": 0, "state": "ejected"},
            {"address": "10.0.0.3", "weight": 0, "effective_weight": 0, "state": "drained"},
        ],
        "picked": ["10.0.0.1"],
    }
    six = ask(rdtype="AAAA")
    wire, sent = answered(compiled, six)
    assert decision(compiled, "127.0.0.1", six, wire)["candidates"] == [
        {"address": "2001:db8::1", "weight": 1, "effective_weight": 1, "state": "active"}
    ]


def test_failover_backups_are_standby() -> None:
    policy = make_policy(
        [{"address": "10.0.0.1", "priority": 0}, {"address": "10.0.0.2", "priority": 1}],
        strategy="failover",
    )
    compiled = compile_snapshot([policy]).policies()[0]
    query = ask()
    wire, _ = answered(compiled, query)
    states = [c["state"] for c in decision(compiled, "127.0.0.1", query, wire)["candidates"]]
    assert states == ["active", "standby"]


def test_a_slice_names_itself_and_lists_only_its_groups() -> None:
    policy = make_policy(
        [
            {"address": "10.0.0.1", "group": "blue"},
            {"address": "10.0.0.2", "group": "green"},
        ],
        slices=[
            {"id": "office", "match": {"client_cidrs": ["192.0.2.0/24"]}, "groups": ["green"]},
            {"id": "banned", "match": {"client_cidrs": ["198.51.100.0/24"]}, "action": "refuse"},
        ],
    )
    compiled = compile_snapshot([policy]).policies()[0]
    query = ask()
    wire, sent = answered(compiled, query, "192.0.2.9")
    office = decision(compiled, "192.0.2.9", query, wire)
    assert (office["slice"], office["picked"], sent) == ("office", ["10.0.0.2"], ["10.0.0.2"])
    assert [c["address"] for c in office["candidates"]] == ["10.0.0.2"]
    wire, _ = answered(compiled, query, "198.51.100.1")
    banned = decision(compiled, "198.51.100.1", query, wire)
    assert (banned["slice"], banned["candidates"], banned["picked"]) == ("banned", [], [])
    wire, _ = answered(compiled, query, "127.0.0.1")
    assert decision(compiled, "127.0.0.1", query, wire)["slice"] is None


def test_another_class_is_refused_before_any_view() -> None:
    compiled = compile_snapshot([make_policy([{"address": "10.0.0.1"}])]).policies()[0]
    query = ask(rdclass="CH")
    wire, _ = answered(compiled, query)
    assert rcode_text(wire) == "REFUSED"
    assert decision(compiled, "127.0.0.1", query, wire)["candidates"] == []


# --- lines ---------------------------------------------------------------------------------


def record(
    *,
    query: Query | None = None,
    source: str = "cache",
    response: bytes | None = b"\x00\x01\x81\x83" + bytes(8),
    policy: CompiledPolicy | None = None,
    limited: int = 0,
    overflow: int = 0,
    client: str = "192.0.2.77",
    reason: str = "",
) -> Record:
    return (100.0, 100.0025, client, query, source, response, policy, reason, limited, overflow)


def test_a_line_has_every_key_in_order() -> None:
    line = LineFormatter().line(record(query=ask("Example.COM", "HTTPS")), 1_700_000_000.0)
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = json.loads(line)
    assert list(parsed) == [
        "time",
        "client",
        "name",
        "type",
        "rcode",
        "source",
        "latency_ms",
    ]
    assert parsed == {
        "time": "2023-11-14T22:15:00.000Z",
        "client": "192.0.2.77",
        "name": "example.com",
        "type": "HTTPS",
        "rcode": "NXDOMAIN",
        "source": "cache",
        "latency_ms": 2.5,
    }


def test_a_query_that_got_nothing_has_null_fields() -> None:
    parsed = json.loads(
        LineFormatter(ClientMask(24)).line(record(source="refused", response=None, reason="x"), 0.0)
    )
    assert parsed["client"] == "192.0.2.0"
    assert (parsed["name"], parsed["type"], parsed["rcode"]) == (None, None, None)
    assert parsed["reason"] == "x"


def test_a_policy_line_carries_the_decision() -> None:
    compiled = compile_snapshot([make_policy([{"address": "10.0.0.1"}])], 3).policies()[0]
    query = ask()
    wire, _ = answered(compiled, query)
    parsed = json.loads(
        LineFormatter().line(
            record(query=query, source="policy", response=wire, policy=compiled), 0.0
        )
    )
    assert parsed["decision"]["revision"] == 3
    assert parsed["decision"]["picked"] == ["10.0.0.1"]


def test_left_out_counts_are_reported_once_on_the_next_line_or_a_summary() -> None:
    formatter = LineFormatter()
    first = json.loads(formatter.line(record(limited=0, overflow=0), 0.0))
    assert "limited" not in first and "overflow" not in first
    second = json.loads(formatter.line(record(limited=40, overflow=2), 0.0))
    assert (second["limited"], second["overflow"]) == (40, 2)
    assert formatter.summary(40, 2, 0.0) is None  # nothing new since
    summary = formatter.summary(55, 2, 0.0)
    assert summary is not None
    assert json.loads(summary) == {
        "time": "1970-01-01T00:00:00.000Z",
        "summary": True,
        "limited": 15,
    }
    # A record made before that summary carries older totals: nothing is counted twice.
    late = json.loads(formatter.line(record(limited=50, overflow=2), 0.0))
    assert "limited" not in late


def test_type_and_rcode_names() -> None:
    assert [type_text(t) for t in (1, 28, 65, 65280)] == ["A", "AAAA", "HTTPS", "TYPE65280"]
    assert rcode_text(b"\x00\x00\x81\x82") == "SERVFAIL"


def test_a_reweighed_policy_of_the_same_revision_gets_its_own_decision() -> None:
    base = compile_snapshot([make_policy([{"address": "10.0.0.1"}, {"address": "10.0.0.2"}])], 5)
    reweighed = reweigh(base, {"web": {"10.0.0.1": 1, "10.0.0.2": 0}})
    decisions = Decisions()  # one cache across both, as the writer keeps it
    query = ask()
    states = []
    for snapshot in (base, reweighed, base):
        compiled = snapshot.policies()[0]
        wire, _ = answered(compiled, query)
        decided = json.loads(decisions.text(compiled, "127.0.0.1", query, wire))
        assert decided["revision"] == 5
        states.append([c["state"] for c in decided["candidates"]])
    assert states == [["active", "active"], ["active", "ejected"], ["active", "active"]]
