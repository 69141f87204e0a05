"""The agent's plain counters: bounded label sets, latency buckets, answer counts kept across
snapshot swaps, and the --admin-listen address check."""

from __future__ import annotations

import random
from typing import Any

import dns.message
import pytest

from agent.answer_counts import AnswerCounts
from agent.config import HostPort, parse_admin_listen
from agent.tally import (
    NO_RESPONSE,
    OTHER_QTYPE,
    QTYPE_INDEX,
    QTYPE_LABELS,
    RCODE_LABELS,
    SourceTally,
    bucket_bounds,
    cumulative_buckets,
    rcode_of,
)
from dnsmesh.dnswire import name_to_wire, parse_query
from dnsmesh.errors import ConfigError
from dnsmesh.policy import parse_policy
from dnsmesh.reweigh import reweigh
from dnsmesh.snapshot import DEFAULT_SLICE, Snapshot, compile_snapshot
from tests.support.policies import policy_doc

RNG = random.Random(1)


def test_every_qtype_maps_into_the_bounded_set() -> None:
    assert len(QTYPE_INDEX) == 65536
    assert QTYPE_LABELS[QTYPE_INDEX[1]] == "A" and QTYPE_LABELS[QTYPE_INDEX[28]] == "AAAA"
    assert QTYPE_LABELS[QTYPE_INDEX[257]] == "CAA"
    assert {QTYPE_INDEX[q] for q in (0, 99, 4242, 65535)} == {OTHER_QTYPE}
    assert max(QTYPE_INDEX) < len(QTYPE_LABELS)


def test_rcodes_come_from_the_header_nibble() -> None:
    header = bytes([0x12, 0x34, 0x81, 0x83]) + bytes(8)  # NXDOMAIN, with RA set
    assert RCODE_LABELS[rcode_of(header)] == "NXDOMAIN"
    assert RCODE_LABELS[rcode_of(None)] == "none" and rcode_of(None) == NO_RESPONSE


def test_latency_buckets_are_powers_of_two_nanoseconds() -> None:
    tally = SourceTally()
    tally.add(0, 0, 0)  # not timed: counted, no latency
    for elapsed in (500, 3_000, 900_000):  # 0.5 us, 3 us, 0.9 ms
        tally.kinds[0][0] += 1
        tally.latency[elapsed.bit_length()] += 1
        tally.latency_ns += elapsed
    assert tally.total == 4 and tally.latency_ns == 903_500
    bounds = bucket_bounds()
    counts = cumulative_buckets(tally.latency)
    assert len(counts) == len(bounds) + 1 and counts[-1] == 3
    assert bounds[0] == pytest.approx(1.024e-6)  # the first bound: about a microsecond
    below = dict(zip(bounds, counts, strict=False))
    assert below[2**10 / 1e9] == 1  # 0.5 us
    assert below[2**12 / 1e9] == 2  # and 3 us
    assert below[2**20 / 1e9] == 3  # and 0.9 ms, below 1.05 ms


def _compile(*docs: dict[str, Any]) -> Snapshot:
    return compile_snapshot([parse_policy(doc) for doc in docs])


def _answer(snapshot: Snapshot, name: str) -> None:
    policy = snapshot.lookup(name_to_wire(name))
    assert policy is not None
    query = parse_query(dns.message.make_query(name, "A").to_wire())
    policy.respond(query, "127.0.0.1", RNG)


def test_answer_counts_survive_recompiles_and_end_with_their_policy() -> None:
    web = policy_doc("web", [{"address": "10.0.0.1"}, {"address": "10.0.0.2"}])
    base = _compile(web)
    counts = AnswerCounts()
    for _ in range(10):
        _answer(base, "web.mesh.internal")
    # Health re-weighs: a recompiled policy is served, the base's counts move over.
    weighed = reweigh(base, {"web": {"10.0.0.2": 0}})
    counts.retire(base, weighed)
    for _ in range(5):
        _answer(weighed, "web.mesh.internal")
    totals = counts.totals(weighed)
    assert sum(totals.values()) == 15
    assert totals[("web", DEFAULT_SLICE, "10.0.0.1")] >= 5  # 10.0.0.2 is at weight 0 now
    # The weights lifted: the base compiled policy is served again, its old counts not
    # counted twice.
    counts.retire(weighed, base)
    _answer(base, "web.mesh.internal")
    assert sum(counts.totals(base).values()) == 16
    assert sum(counts.totals(base).values()) == 16  # reading twice counts nothing new
    # The policy goes: its series go with it.
    other = _compile(policy_doc("api", [{"address": "10.0.1.1"}]))
    counts.retire(base, other)
    assert counts.totals(other) == {}


def test_admin_listen_is_loopback_unless_public_is_said() -> None:
    assert parse_admin_listen("127.0.0.1:9153", public=False) == HostPort("127.0.0.1", 9153)
    assert parse_admin_listen("[::1]:0", public=False) == HostPort("::1", 0)
    assert parse_admin_listen("off", public=False) is None
    with pytest.raises(ConfigError, match="--admin-listen-public"):
        parse_admin_listen("0.0.0.0:9153", public=False)
    assert parse_admin_listen("0.0.0.0:9153", public=True) == HostPort("0.0.0.0", 9153)
    with pytest.raises(ConfigError, match="--admin-listen"):
        parse_admin_listen("localhost:9153", public=False)
