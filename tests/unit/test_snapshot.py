"""Snapshot: policy lookup and whole wire responses, parsed back with dnspython."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dnsmesh import snapshot as snapshot_module
from dnsmesh.dnswire import Query, name_to_wire, parse_query
from dnsmesh.errors import PolicyError
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.snapshot import CompiledPolicy, Snapshot, compile_snapshot

N = 20_000
TOLERANCE = 0.02  # 2 points at n = 20 000 is over 5 sigma (see test_selection)


def policy(name: str, domain: str, endpoints: list[dict[str, Any]], **spec: Any) -> Policy:
    return parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": name},
            "spec": {"domain": domain, "endpoints": endpoints, **spec},
        }
    )


def ep(address: str, weight: int = 1, **extra: Any) -> dict[str, Any]:
    return {"address": address, "weight": weight, **extra}


def query(
    name: str,
    rdtype: str = "A",
    *,
    edns: bool = False,
    dnssec: bool = False,
    rdclass: str = "IN",
) -> Query:
    if edns or dnssec:
        message = dns.message.make_query(name, rdtype, rdclass, use_edns=0, want_dnssec=dnssec)
    else:
        message = dns.message.make_query(name, rdtype, rdclass, use_edns=False)
    message.id = 4321
    return parse_query(message.to_wire())


def ask(
    snap: Snapshot,
    name: str,
    rdtype: str = "A",
    client: str = "127.0.0.1",
    rng: random.Random | None = None,
    **kw: Any,
) -> dns.message.Message:
    q = query(name, rdtype, **kw)
    compiled = snap.lookup(q.qname)
    assert compiled is not None, name
    wire = compiled.respond(q, client, rng or random.Random(0))
    return dns.message.from_wire(wire)


def addresses(message: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in message.answer for rdata in rrset]


# --- lookup ---------------------------------------------------------------------------------


@pytest.fixture
def lookup_snapshot() -> Snapshot:
    return compile_snapshot(
        [
            policy("exact", "api.svc.example", [ep("10.0.0.1")]),
            policy("wild", "*.svc.example", [ep("10.0.0.2")]),
            policy("deeper", "*.b.svc.example", [ep("10.0.0.3")]),
            policy("plain", "checkout.mesh.internal", [ep("10.0.0.4")]),
        ],
        revision=9,
    )


def _name(snap: Snapshot, text: str) -> str | None:
    found = snap.lookup(query(text).qname)
    return found.name if found else None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("api.svc.example", "exact"),  # exact beats the wildcard
        ("API.Svc.EXAMPLE", "exact"),  # case-insensitive
        ("x.api.svc.example", "wild"),  # below an exact name: the wildcard
        ("other.svc.example", "wild"),
        ("a.b.c.d.svc.example", "wild"),  # any depth below the suffix
        ("x.b.svc.example", "deeper"),  # longer wildcard beats shorter
        ("y.x.B.svc.example", "deeper"),
        ("b.svc.example", "wild"),  # '*.b.svc.example' does not match 'b.svc.example'
        ("svc.example", None),  # '*.suffix' does not match the suffix itself
        ("example", None),
        ("checkout.mesh.internal", "plain"),
        ("checkout.mesh.internal.evil", None),
        ("xcheckout.mesh.internal", None),
        (".", None),
    ],
)
def test_lookup(lookup_snapshot: Snapshot, text: str, expected: str | None) -> None:
    assert _name(lookup_snapshot, text) == expected


def test_lookup_tolerates_junk_keys(lookup_snapshot: Snapshot) -> None:
    assert lookup_snapshot.lookup(b"") is None
    assert lookup_snapshot.lookup(b"\x05ab") is None
    assert lookup_snapshot.lookup(b"\x03svc\x07example") is None


def test_snapshot_size_and_revision(lookup_snapshot: Snapshot) -> None:
    assert len(lookup_snapshot) == 4
    assert lookup_snapshot.revision == 9
    assert sorted(p.name for p in lookup_snapshot.policies()) == [
        "deeper",
        "exact",
        "plain",
        "wild",
    ]
    assert len(compile_snapshot([])) == 0


def test_repeated_domain_is_refused() -> None:
    with pytest.raises(PolicyError):
        compile_snapshot(
            [policy("a", "x.example", [ep("10.0.0.1")]), policy("b", "x.example", [ep("10.0.0.2")])]
        )


# --- answers --------------------------------------------------------------------------------


def test_a_answer_header_ttl_and_question() -> None:
    snap = compile_snapshot([policy("p", "api.example", [ep("10.0.0.1")], ttl=7)])
    message = ask(snap, "Api.EXAMPLE")
    assert message.id == 4321
    assert message.rcode() == dns.rcode.NOERROR
    assert message.flags & dns.flags.QR and message.flags & dns.flags.AA
    assert message.flags & dns.flags.RD and message.flags & dns.flags.RA
    assert str(message.question[0].name) == "Api.EXAMPLE."
    assert str(message.answer[0].name) == "Api.EXAMPLE."
    assert message.answer[0].ttl == 7
    assert addresses(message) == ["10.0.0.1"]
    assert message.edns == -1


def test_opt_only_when_the_query_had_one() -> None:
    snap = compile_snapshot([policy("p", "api.example", [ep("10.0.0.1")])])
    message = ask(snap, "api.example", dnssec=True)
    assert message.edns == 0 and message.payload == 1232
    assert message.ednsflags & dns.flags.DO
    message = ask(snap, "api.example", edns=True)
    assert message.edns == 0 and not message.ednsflags & dns.flags.DO


def test_response_matches_query_for_dnspython() -> None:
    snap = compile_snapshot([policy("p", "api.example", [ep("10.0.0.1")])])
    request = dns.message.make_query("aPi.example", "A", use_edns=0)
    wire = request.to_wire()
    parsed = parse_query(wire)
    compiled = snap.lookup(parsed.qname)
    assert compiled is not None
    response = dns.message.from_wire(compiled.respond(parsed, "::1", random.Random(1)))
    assert request.is_response(response)


MIXED = [
    ep("10.0.0.1", 3),
    ep("10.0.0.2", 1),
    ep("2001:db8::1", 1),
    ep("2001:db8::2", 0),
]


def test_aaaa_answers_from_v6_endpoints_only() -> None:
    snap = compile_snapshot([policy("p", "api.example", MIXED, answers=4)])
    message = ask(snap, "api.example", "AAAA")
    assert message.answer[0].rdtype == dns.rdatatype.AAAA
    assert addresses(message) == ["2001:db8::1"]  # the weight-0 one never
    message = ask(snap, "api.example", "A")
    assert sorted(addresses(message)) == ["10.0.0.1", "10.0.0.2"]


def _assert_nodata(message: dns.message.Message, owner: str, ttl: int) -> None:
    assert message.rcode() == dns.rcode.NOERROR
    assert message.flags & dns.flags.AA
    assert not message.answer
    (soa,) = message.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name == dns.name.from_text(owner)  # DNS names compare case-insensitively
    assert soa.ttl == ttl and soa[0].minimum == ttl


def test_family_without_endpoints_is_nodata_with_soa() -> None:
    snap = compile_snapshot([policy("p", "v4.example", [ep("10.0.0.1")], ttl=12)], revision=5)
    message = ask(snap, "V4.example", "AAAA")
    _assert_nodata(message, "v4.example.", 12)
    assert message.authority[0][0].serial == 5


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB", "MX", "TXT", "ANY", "NS", "CNAME"])
def test_other_types_are_nodata_never_nxdomain(rdtype: str) -> None:
    snap = compile_snapshot([policy("p", "api.example", MIXED, ttl=3)])
    _assert_nodata(ask(snap, "api.example", rdtype), "api.example.", 3)


def _soa_answer(message: dns.message.Message) -> dns.rrset.RRset:
    assert message.rcode() == dns.rcode.NOERROR and message.flags & dns.flags.AA
    assert not message.authority
    (soa,) = message.answer
    assert soa.rdtype == dns.rdatatype.SOA
    return soa


def test_an_soa_query_at_the_apex_gets_the_soa_of_its_nodata_answers() -> None:
    # A resolver that sees the SOA in a NODATA answer may ask for it: the apex must then
    # hold that same record, not answer NODATA about the SOA it just named.
    snap = compile_snapshot([policy("p", "api.example", MIXED, ttl=3)], revision=9)
    nodata = ask(snap, "api.example", "MX").authority[0]
    soa = _soa_answer(ask(snap, "API.example", "SOA", edns=True))
    assert soa.name == nodata.name == dns.name.from_text("api.example.")
    assert soa[0] == nodata[0] and soa[0].serial == 9 and soa.ttl == 3


def test_a_wildcard_answers_as_its_own_apex_at_each_name_below_it() -> None:
    # The suffix above a wildcard is not the agent's (it forwards "svc.example" itself), so
    # the SOA is owned by the name that was asked for, which the agent does serve.
    snap = compile_snapshot([policy("p", "*.svc.example", [ep("10.0.0.1")], ttl=4)])
    _assert_nodata(ask(snap, "a.b.svc.example", "MX", edns=True), "a.b.svc.example.", 4)
    soa = _soa_answer(ask(snap, "a.b.svc.example", "SOA"))
    assert soa.name == dns.name.from_text("a.b.svc.example.")
    assert soa[0].mname == soa.name
    assert addresses(ask(snap, "a.b.svc.example")) == ["10.0.0.1"]
    assert snap.lookup(b"\x03svc\x07example\x00") is None


@pytest.mark.parametrize("rdclass", ["CH", "HS", "ANY"])
def test_other_classes_are_refused(rdclass: str) -> None:
    snap = compile_snapshot([policy("p", "api.example", [ep("10.0.0.1")])])
    message = ask(snap, "api.example", "A", rdclass=rdclass)
    assert message.rcode() == dns.rcode.REFUSED
    assert not message.answer


def test_answers_is_the_number_of_distinct_records() -> None:
    endpoints = [ep(f"10.0.0.{i}", i) for i in range(1, 6)] + [ep("10.0.0.99", 0)]
    snap = compile_snapshot([policy("p", "api.example", endpoints, answers=3)])
    rng = random.Random(3)
    for _ in range(300):
        found = addresses(ask(snap, "api.example", rng=rng))
        assert len(found) == 3 and len(set(found)) == 3
        assert "10.0.0.99" not in found


def test_weighted_split_over_responses() -> None:
    snap = compile_snapshot(
        [policy("p", "api.example", [ep("10.0.0.1", 90), ep("10.0.0.2", 10), ep("10.0.0.3", 0)])]
    )
    q = query("api.example")
    compiled = snap.lookup(q.qname)
    assert compiled is not None
    rng = random.Random(2024)
    counts = Counter(compiled.respond(q, "127.0.0.1", rng)[-4:] for _ in range(N))
    assert set(counts) == {bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])}
    assert abs(counts[bytes([10, 0, 0, 1])] / N - 0.9) <= TOLERANCE


def test_latency_weighted_behaves_as_weighted_for_now() -> None:
    snap = compile_snapshot(
        [
            policy(
                "p",
                "api.example",
                [ep("10.0.0.1", 25), ep("10.0.0.2", 75)],
                strategy="latency-weighted",
            )
        ]
    )
    q = query("api.example")
    compiled = snap.lookup(q.qname)
    assert compiled is not None
    rng = random.Random(11)
    counts = Counter(compiled.respond(q, "127.0.0.1", rng)[-1] for _ in range(N))
    assert abs(counts[2] / N - 0.75) <= TOLERANCE


def test_failover_answers_from_the_lowest_live_priority_group() -> None:
    endpoints = [
        ep("10.0.0.1", 0, priority=0),  # the best group has no weight left
        ep("10.0.0.2", 1, priority=1),
        ep("10.0.0.3", 3, priority=1),
        ep("10.0.0.4", 100, priority=2),
        ep("2001:db8::9", 1, priority=7),  # v6 has its own lowest group
    ]
    snap = compile_snapshot([policy("p", "api.example", endpoints, strategy="failover")])
    rng = random.Random(4)
    counts = Counter(addresses(ask(snap, "api.example", rng=rng))[0] for _ in range(4000))
    assert set(counts) == {"10.0.0.2", "10.0.0.3"}
    assert abs(counts["10.0.0.3"] / 4000 - 0.75) <= 0.04  # sd 0.7 points at n = 4000
    assert addresses(ask(snap, "api.example", "AAAA")) == ["2001:db8::9"]
    many = compile_snapshot([policy("p", "api.example", endpoints, strategy="failover", answers=3)])
    assert sorted(addresses(ask(many, "api.example"))) == ["10.0.0.2", "10.0.0.3"]


def test_sticky_client_keeps_its_endpoint_and_clients_spread() -> None:
    endpoints = [ep("10.0.0.1", 1), ep("10.0.0.2", 1), ep("10.0.0.3", 2)]
    snap = compile_snapshot([policy("p", "api.example", endpoints, strategy="sticky")])
    q = query("api.example")
    compiled = snap.lookup(q.qname)
    assert compiled is not None
    rng = random.Random(0)
    seen: Counter[bytes] = Counter()
    for i in range(4000):
        client = f"192.168.{i >> 8}.{i & 255}"
        first = compiled.respond(q, client, rng)[-4:]
        for _ in range(3):
            assert compiled.respond(q, client, rng)[-4:] == first
        seen[first] += 1
    assert abs(seen[bytes([10, 0, 0, 3])] / 4000 - 0.5) <= 0.04
    # a fresh compile of the same set gives every client the same answer
    again = compile_snapshot([policy("p", "api.example", endpoints, strategy="sticky")])
    recompiled = again.lookup(q.qname)
    assert recompiled is not None
    for i in range(200):
        client = f"192.168.{i >> 8}.{i & 255}"
        assert recompiled.respond(q, client, rng) == compiled.respond(q, client, rng)


def test_sticky_removal_moves_only_that_endpoints_clients() -> None:
    endpoints = [ep("10.0.0.1", 1), ep("10.0.0.2", 1), ep("10.0.0.3", 1)]
    before = compile_snapshot([policy("p", "api.example", endpoints, strategy="sticky")])
    after = compile_snapshot([policy("p", "api.example", endpoints[:2], strategy="sticky")])
    q = query("api.example")
    old_policy, new_policy = before.lookup(q.qname), after.lookup(q.qname)
    assert old_policy is not None and new_policy is not None
    rng = random.Random(0)
    for i in range(1000):
        client = f"10.9.{i >> 8}.{i & 255}"
        old = old_policy.respond(q, client, rng)[-4:]
        if old != bytes([10, 0, 0, 3]):
            assert new_policy.respond(q, client, rng)[-4:] == old


# --- slices ---------------------------------------------------------------------------------

SLICED = [
    ep("10.0.1.10", 90, group="v1"),
    ep("10.0.2.10", 10, group="v2"),
    ep("2001:db8::1", 1, group="v1"),
]
SLICES = [
    {"id": "beta", "match": {"client_cidrs": ["10.8.0.0/16", "2001:db8:8::/48"]}, "groups": ["v2"]},
    {
        "id": "blocked",
        "match": {"client_cidrs": ["10.9.0.0/16", "10.8.9.0/24"]},
        "action": "refuse",
    },
]


@pytest.fixture
def sliced() -> Snapshot:
    return compile_snapshot([policy("p", "checkout.example", SLICED, slices=SLICES)])


def test_slice_restricts_groups(sliced: Snapshot) -> None:
    rng = random.Random(1)
    for _ in range(200):
        assert addresses(ask(sliced, "checkout.example", client="10.8.1.1", rng=rng)) == [
            "10.0.2.10"
        ]
    assert addresses(ask(sliced, "checkout.example", client="2001:db8:8::5")) == ["10.0.2.10"]
    # the beta slice has no v6 endpoint: NODATA, not the default's v6
    message = ask(sliced, "checkout.example", "AAAA", client="10.8.1.1")
    _assert_nodata(message, "checkout.example.", 30)


def test_first_matching_slice_wins(sliced: Snapshot) -> None:
    # 10.8.9.0/24 is in the refusing slice too, but beta (10.8.0.0/16) comes first
    assert addresses(ask(sliced, "checkout.example", client="10.8.9.1")) == ["10.0.2.10"]


def test_refusing_slice(sliced: Snapshot) -> None:
    message = ask(sliced, "checkout.example", client="10.9.0.1", edns=True)
    assert message.rcode() == dns.rcode.REFUSED
    assert not message.answer
    (option,) = message.options
    assert isinstance(option, dns.edns.EDEOption)
    assert option.code == dns.edns.EDECode.PROHIBITED
    plain = ask(sliced, "checkout.example", client="10.9.0.1")
    assert plain.rcode() == dns.rcode.REFUSED and plain.edns == -1


@pytest.mark.parametrize("client", ["127.0.0.1", "::1", "10.7.0.1", "not-an-address", ""])
def test_no_matching_slice_gets_the_default(sliced: Snapshot, client: str) -> None:
    rng = random.Random(6)
    seen = {
        addresses(ask(sliced, "checkout.example", client=client, rng=rng))[0] for _ in range(200)
    }
    assert seen == {"10.0.1.10", "10.0.2.10"}


def test_v4_mapped_client_matches_v4_slice(sliced: Snapshot) -> None:
    message = ask(sliced, "checkout.example", client="::ffff:10.9.1.2")
    assert message.rcode() == dns.rcode.REFUSED


def test_client_memo_is_bounded(sliced: Snapshot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_module, "MEMO_LIMIT", 16)
    compiled = sliced.lookup(name_to_wire("checkout.example"))
    assert isinstance(compiled, CompiledPolicy)
    q = query("checkout.example")
    rng = random.Random(0)
    for i in range(100):
        compiled.respond(q, f"10.8.0.{i}", rng)
        assert len(compiled._memo) <= 16
    # still right after the memo was cleared
    assert dns.message.from_wire(compiled.respond(q, "10.9.0.1", rng)).rcode() == 5


def test_sticky_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_module, "MEMO_LIMIT", 8)
    endpoints = [ep("10.0.0.1"), ep("10.0.0.2")]
    snap = compile_snapshot([policy("p", "api.example", endpoints, strategy="sticky")])
    compiled = snap.lookup(name_to_wire("api.example"))
    assert compiled is not None
    q = query("api.example")
    answers = {}
    for i in range(50):
        answers[i] = compiled.respond(q, f"10.1.0.{i}", random.Random(0))
    for i in range(50):  # recomputed after eviction, and the same
        assert compiled.respond(q, f"10.1.0.{i}", random.Random(1)) == answers[i]


def test_weighted_split_with_large_weights() -> None:
    # a total above the slot-table limit takes the bisect path
    weights = [700_000, 300_000]
    assert sum(weights) > snapshot_module.SLOT_TABLE_LIMIT
    snap = compile_snapshot(
        [policy("p", "api.example", [ep("10.0.0.1", weights[0]), ep("10.0.0.2", weights[1])])]
    )
    q = query("api.example")
    compiled = snap.lookup(q.qname)
    assert compiled is not None
    rng = random.Random(77)
    counts = Counter(compiled.respond(q, "127.0.0.1", rng)[-1] for _ in range(N))
    assert abs(counts[1] / N - 0.7) <= TOLERANCE
    assert set(counts) == {1, 2}


def test_answers_many_split_of_the_first_record() -> None:
    endpoints = [ep("10.0.0.1", 60), ep("10.0.0.2", 30), ep("10.0.0.3", 10), ep("10.0.0.4", 0)]
    snap = compile_snapshot([policy("p", "api.example", endpoints, answers=2)])
    q = query("api.example")
    compiled = snap.lookup(q.qname)
    assert compiled is not None
    rng = random.Random(12)
    firsts: Counter[int] = Counter()
    start = 12 + len(q.question)  # answers follow; each A RR is 16 octets, address last
    for _ in range(N):
        wire = compiled.respond(q, "127.0.0.1", rng)
        found = [wire[start + 15], wire[start + 31]]
        assert len(wire) == start + 32 and found[0] != found[1] and 4 not in found
        firsts[found[0]] += 1
    assert abs(firsts[1] / N - 0.6) <= TOLERANCE
    assert abs(firsts[3] / N - 0.1) <= TOLERANCE


def test_wildcard_suffix_must_start_on_a_label_boundary() -> None:
    snap = compile_snapshot(
        [
            policy("svc", "*.svc.example", [ep("10.0.0.1")]),
            policy("top", "*.example", [ep("10.0.0.2")]),
        ]
    )
    # one label "a\003svc" under "example": its bytes end like "svc.example" does
    trap = query("a\\003svc.example")
    assert trap.qname.endswith(name_to_wire("svc.example"))
    found = snap.lookup(trap.qname)
    assert found is not None and found.name == "top"
    assert _name(snap, "a.svc.example") == "svc"


def test_weight_overrides_from_health() -> None:
    endpoints = [ep("10.0.0.1", 50), ep("10.0.0.2", 50), ep("2001:db8::1", 1)]
    policies = [policy("p", "api.example", endpoints)]
    ejected = compile_snapshot(policies, weights={"p": {"10.0.0.1": 0, "2001:db8::1": 0}})
    rng = random.Random(3)
    seen = {addresses(ask(ejected, "api.example", rng=rng))[0] for _ in range(200)}
    assert seen == {"10.0.0.2"}
    _assert_nodata(ask(ejected, "api.example", "AAAA"), "api.example.", 30)
    skewed = compile_snapshot(policies, weights={"p": {"10.0.0.1": 90, "10.0.0.2": 10}})
    q = query("api.example")
    compiled = skewed.lookup(q.qname)
    assert compiled is not None
    counts = Counter(compiled.respond(q, "127.0.0.1", rng)[-1] for _ in range(N))
    assert abs(counts[1] / N - 0.9) <= TOLERANCE
    # other policies and the policy object itself are untouched
    assert compiled.policy.spec.endpoints[0].weight == 50
    with pytest.raises(ValueError):
        compile_snapshot(policies, weights={"p": {"10.0.0.1": -1}})
