"""Slices: the match kinds (client_cidrs, node_labels, debug_label), per-slice routing
(strategy, ttl, answers, weights), spec.unmatched; the schema's refusals and the compile."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import pytest

from cli.explain import explain_table
from dnsmesh.dnswire import name_to_wire
from dnsmesh.errors import PolicyError
from dnsmesh.explain import compile_with_state, explain
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.reweigh import reweigh
from dnsmesh.share import ShareRule, policy_share
from dnsmesh.snapshot import DEFAULT_SLICE, CompileContext, Snapshot, compile_snapshot
from tests.unit.test_snapshot import addresses, ask, ep, query

DOMAIN = "checkout.mesh.internal"
ENDPOINTS = [
    ep("10.0.1.10", 90, group="v1"),
    ep("10.0.2.10", 10, group="v2"),
    ep("10.0.3.10", 1, group="v2"),
]


def document(slices: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": {"name": "checkout"},
        "spec": {"domain": DOMAIN, "endpoints": ENDPOINTS, "slices": slices, **spec},
    }


def sliced(slices: list[dict[str, Any]], **spec: Any) -> Policy:
    return parse_policy(document(slices, **spec))


def refused_paths(slices: list[dict[str, Any]], **spec: Any) -> dict[str, str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(document(slices, **spec))
    paths: dict[str, str] = {}
    for error in caught.value.errors:
        paths[error.path] = "; ".join(filter(None, [paths.get(error.path), error.message]))
    return paths


# --- the schema ---------------------------------------------------------------------------


def test_a_match_needs_a_criterion() -> None:
    paths = refused_paths([{"id": "empty", "match": {}}])
    assert list(paths) == ["spec.slices[0].match"]
    assert "client_cidrs, node_labels, debug_label and ecs_cidrs" in paths["spec.slices[0].match"]


@pytest.mark.parametrize(
    ("match", "path"),
    [
        ({"node_labels": {}}, "spec.slices[0].match.node_labels"),
        ({"node_labels": {"zone": "a\x00"}}, "spec.slices[0].match.node_labels.zone"),
        ({"client_cidrs": []}, "spec.slices[0].match.client_cidrs"),
        ({"debug_label": "Beta"}, "spec.slices[0].match.debug_label"),
        ({"debug_label": "a.b"}, "spec.slices[0].match.debug_label"),
        ({"debug_label": ""}, "spec.slices[0].match.debug_label"),
        ({"color": "blue"}, "spec.slices[0].match.color"),
    ],
)
def test_bad_match_fields_are_named(match: dict[str, Any], path: str) -> None:
    assert path in refused_paths([{"id": "s", "match": match}])


def test_unknown_weight_address_is_named() -> None:
    paths = refused_paths(
        [
            {
                "id": "s",
                "match": {"debug_label": "beta"},
                "weights": {"10.0.9.9": 1, "not-an-ip": 2, "10.0.1.10": 3},
            }
        ]
    )
    assert list(paths) == ["spec.slices[0].weights"]
    assert "10.0.9.9" in paths["spec.slices[0].weights"]


def test_weights_spelled_twice_are_refused() -> None:
    v6 = [ep("2001:db8::1"), ep("10.0.1.10")]
    with pytest.raises(PolicyError) as caught:
        parse_policy(
            {
                **document([]),
                "spec": {
                    "domain": DOMAIN,
                    "endpoints": v6,
                    "slices": [
                        {
                            "id": "s",
                            "match": {"debug_label": "x"},
                            "weights": {"2001:db8::1": 1, "2001:DB8:0::1": 2},
                        }
                    ],
                },
            }
        )
    assert [e.path for e in caught.value.errors] == ["spec.slices[0].weights"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("ttl", -1), ("ttl", 86401), ("answers", 0), ("answers", 33), ("strategy", "fastest")],
)
def test_slice_routing_bounds(field: str, value: object) -> None:
    paths = refused_paths([{"id": "s", "match": {"debug_label": "b"}, field: value}])
    assert list(paths) == [f"spec.slices[0].{field}"]


def test_negative_slice_weight_is_refused() -> None:
    paths = refused_paths(
        [{"id": "s", "match": {"debug_label": "b"}, "weights": {"10.0.1.10": -1}}]
    )
    assert list(paths) == ["spec.slices[0].weights.10.0.1.10"]


def test_refuse_slice_takes_no_routing() -> None:
    paths = refused_paths(
        [{"id": "s", "match": {"debug_label": "b"}, "action": "refuse", "ttl": 5, "answers": 2}]
    )
    assert set(paths) == {"spec.slices[0].ttl", "spec.slices[0].answers"}


def test_wildcard_policy_takes_no_debug_label() -> None:
    paths = refused_paths([{"id": "s", "match": {"debug_label": "b"}}], domain="*.svc.internal")
    assert list(paths) == ["spec.slices[0].match.debug_label"]


def test_debug_name_must_fit() -> None:
    long_domain = ".".join(["a" * 60] * 4)  # 243 characters
    paths = refused_paths([{"id": "s", "match": {"debug_label": "b" * 20}}], domain=long_domain)
    assert list(paths) == ["spec.slices[0].match.debug_label"]


def test_unmatched_values() -> None:
    assert "spec.unmatched" in refused_paths([], unmatched="drop")
    written = sliced([], unmatched="refuse")
    assert written.to_document()["spec"]["unmatched"] == "refuse"
    # unset stays unset: a stored document reads back as written
    assert "unmatched" not in sliced([]).to_document()["spec"]


def test_new_fields_round_trip() -> None:
    slices = [
        {
            "id": "eu",
            "match": {"client_cidrs": ["10.8.0.0/16"], "node_labels": {"zone": "a"}},
            "strategy": "sticky",
            "ttl": 5,
            "answers": 2,
            "weights": {"10.0.2.10": 7},
        },
        {"id": "beta", "match": {"debug_label": "beta"}},
    ]
    doc = sliced(slices, unmatched="refuse").to_document()
    assert parse_policy(doc).to_document() == doc
    assert doc["spec"]["slices"][0]["weights"] == {"10.0.2.10": 7}


# --- the compile and the match ------------------------------------------------------------


def compiled(
    slices: list[dict[str, Any]], labels: dict[str, str] | None = None, **spec: Any
) -> Snapshot:
    return compile_snapshot([sliced(slices, **spec)], context=CompileContext(labels or {}))


def test_node_label_slices_are_decided_at_compile_time() -> None:
    slices = [
        {"id": "zone-a", "match": {"node_labels": {"zone": "a"}}, "groups": ["v2"]},
        {"id": "zone-b", "match": {"node_labels": {"zone": "b", "tier": "x"}}, "groups": ["v1"]},
    ]
    on_a = compiled(slices, {"zone": "a", "rack": "7"})
    on_b_partly = compiled(slices, {"zone": "b"})
    on_b = compiled(slices, {"zone": "b", "tier": "x"})
    rng = random.Random(2)
    # every client of a node in zone a gets the zone-a slice (v2 only)
    seen_a = {addresses(ask(on_a, DOMAIN, client="192.0.2.7", rng=rng))[0] for _ in range(300)}
    assert seen_a == {"10.0.2.10", "10.0.3.10"}
    assert {addresses(ask(on_b, DOMAIN, rng=rng))[0] for _ in range(50)} == {"10.0.1.10"}
    # one label of two does not hold: the slice is dropped, the default answers
    policy_b = on_b_partly.lookup(name_to_wire(DOMAIN))
    assert policy_b is not None and policy_b.view_for("127.0.0.1").slice is None
    assert not policy_b._slices  # dropped, not tested per query


def test_all_criteria_must_hold() -> None:
    slices = [
        {
            "id": "eu-a",
            "match": {"client_cidrs": ["10.8.0.0/16"], "node_labels": {"zone": "a"}},
            "groups": ["v2"],
        }
    ]
    on_a = compiled(slices, {"zone": "a"}).lookup(name_to_wire(DOMAIN))
    on_b = compiled(slices, {"zone": "b"}).lookup(name_to_wire(DOMAIN))
    assert on_a is not None and on_b is not None
    assert on_a.view_for("10.8.0.1").slice == "eu-a"
    assert on_a.view_for("10.9.0.1").slice is None
    assert on_b.view_for("10.8.0.1").slice is None


DEBUG_SLICES = [
    {"id": "near", "match": {"client_cidrs": ["10.8.0.0/16"]}, "groups": ["v1"]},
    {"id": "beta", "match": {"debug_label": "beta"}, "groups": ["v2"], "ttl": 3},
]


def test_debug_label_answers_as_its_slice_with_the_name_asked() -> None:
    snap = compiled(DEBUG_SLICES)
    message = ask(snap, f"Beta.{DOMAIN}", client="10.8.0.1")  # 0x20 case kept
    assert message.rcode() == dns.rcode.NOERROR
    (rrset,) = message.answer
    assert rrset.name.to_text() == f"Beta.{DOMAIN}."
    assert rrset.ttl == 3
    assert {r.address for r in rrset} <= {"10.0.2.10", "10.0.3.10"}
    # the plain name never matches a debug slice: 10.8/16 gets near, others the default
    assert addresses(ask(snap, DOMAIN, client="10.8.0.1")) == ["10.0.1.10"]
    plain = snap.lookup(name_to_wire(DOMAIN))
    assert plain is not None and plain.view_for("10.9.0.1").slice is None
    # no other label is a debug name
    assert snap.lookup(name_to_wire(f"gamma.{DOMAIN}")) is None


def test_debug_label_with_other_criteria() -> None:
    slices = [
        {"id": "beta", "match": {"debug_label": "beta", "client_cidrs": ["10.8.0.0/16"]}},
    ]
    snap = compiled(slices, unmatched="refuse")
    assert ask(snap, f"beta.{DOMAIN}", client="10.8.0.1").rcode() == dns.rcode.NOERROR
    # the label holds, the network does not: unmatched
    assert ask(snap, f"beta.{DOMAIN}", client="10.9.0.1").rcode() == dns.rcode.REFUSED


def test_a_policy_of_the_debug_name_keeps_it() -> None:
    other = parse_policy(
        {
            **document([]),
            "metadata": {"name": "other"},
            "spec": {"domain": f"beta.{DOMAIN}", "endpoints": [ep("10.0.9.9")]},
        }
    )
    snap = compile_snapshot([sliced(DEBUG_SLICES), other])
    assert addresses(ask(snap, f"beta.{DOMAIN}")) == ["10.0.9.9"]


def test_unmatched_refuse_gives_refused_with_ede() -> None:
    snap = compiled(DEBUG_SLICES, unmatched="refuse")
    message = ask(snap, DOMAIN, client="10.9.0.1", edns=True)
    assert message.rcode() == dns.rcode.REFUSED
    (option,) = message.options
    assert isinstance(option, dns.edns.EDEOption)
    assert option.code == dns.edns.EDECode.PROHIBITED
    assert addresses(ask(snap, DOMAIN, client="10.8.0.1")) == ["10.0.1.10"]


def test_unmatched_refuse_without_any_slice_for_this_node() -> None:
    slices = [{"id": "zone-a", "match": {"node_labels": {"zone": "a"}}}]
    snap = compiled(slices, {"zone": "b"}, unmatched="refuse")
    assert ask(snap, DOMAIN).rcode() == dns.rcode.REFUSED


def test_slice_strategy_ttl_answers_and_weights() -> None:
    slices = [
        {
            "id": "two",
            "match": {"client_cidrs": ["10.8.0.0/16"]},
            "ttl": 7,
            "answers": 2,
            "weights": {"10.0.1.10": 1, "10.0.3.10": 0},
        },
        {
            "id": "even",
            "match": {"client_cidrs": ["10.9.0.0/16"]},
            "weights": {"10.0.1.10": 1, "10.0.2.10": 1, "10.0.3.10": 2},
        },
        {"id": "stuck", "match": {"client_cidrs": ["10.10.0.0/16"]}, "strategy": "sticky"},
    ]
    snap = compiled(slices, ttl=60)
    message = ask(snap, DOMAIN, client="10.8.0.1")
    (rrset,) = message.answer
    assert rrset.ttl == 7
    # 10.0.3.10 is at weight 0 here: the two others, both
    assert sorted(r.address for r in rrset) == ["10.0.1.10", "10.0.2.10"]
    rng = random.Random(5)
    n = 8000
    counts = Counter(addresses(ask(snap, DOMAIN, client="10.9.0.1", rng=rng))[0] for _ in range(n))
    assert abs(counts["10.0.3.10"] / n - 0.5) < 0.03
    assert abs(counts["10.0.1.10"] / n - 0.25) < 0.03
    # sticky: one client keeps one answer; the default view keeps the policy's ttl
    stuck = {addresses(ask(snap, DOMAIN, client="10.10.0.1", rng=rng))[0] for _ in range(50)}
    assert len(stuck) == 1
    (default,) = ask(snap, DOMAIN, client="127.0.0.1").answer
    assert default.ttl == 60


def test_slice_weights_follow_health() -> None:
    slices = [
        {"id": "s", "match": {"client_cidrs": ["10.8.0.0/16"]}, "weights": {"10.0.1.10": 5}},
    ]
    base = compiled(slices)
    # health ejects 10.0.1.10: its slice weight goes to 0 too
    ejected = reweigh(base, {"checkout": {"10.0.1.10": 0}})
    rng = random.Random(3)
    seen = {addresses(ask(ejected, DOMAIN, client="10.8.0.1", rng=rng))[0] for _ in range(200)}
    assert seen == {"10.0.2.10", "10.0.3.10"}


def test_reweigh_keeps_context_and_debug_names() -> None:
    slices = [
        {"id": "zone-a", "match": {"node_labels": {"zone": "a"}}, "groups": ["v1"]},
        {"id": "beta", "match": {"debug_label": "beta"}, "groups": ["v2"]},
    ]
    base = compiled(slices, {"zone": "a"})
    again = reweigh(base, {"checkout": {"10.0.2.10": 0}})
    assert addresses(ask(again, DOMAIN, client="192.0.2.1")) == ["10.0.1.10"]
    assert addresses(ask(again, f"beta.{DOMAIN}")) == ["10.0.3.10"]
    failing = reweigh(base, {}, servfail=frozenset({"checkout"}))
    assert ask(failing, f"beta.{DOMAIN}").rcode() == dns.rcode.SERVFAIL


def test_debug_answers_count_for_their_slice() -> None:
    snap = compiled(DEBUG_SLICES)
    q = query(f"beta.{DOMAIN}")
    debug = snap.lookup(q.qname)
    assert debug is not None
    for _ in range(10):
        debug.respond(q, "127.0.0.1", random.Random(0))
    parent = snap.lookup(name_to_wire(DOMAIN))
    assert parent is not None and snap.policies() == [parent]
    counts = parent.take_answered()
    assert sum(n for (slice_id, _), n in counts.items() if slice_id == "beta") == 10
    assert all(slice_id != DEFAULT_SLICE for slice_id, _ in counts)


def test_no_slices_keeps_the_plain_path() -> None:
    snap = compile_snapshot([sliced([])])
    plain = snap.lookup(name_to_wire(DOMAIN))
    assert plain is not None and not plain._sliced and not snap.debug


# --- explain and the served share ----------------------------------------------------------


def test_explain_shows_the_slice_with_its_strategy_and_weights() -> None:
    slices = [
        {
            "id": "eu",
            "match": {"client_cidrs": ["10.8.0.0/16"], "node_labels": {"zone": "a"}},
            "strategy": "failover",
            "ttl": 9,
            "weights": {"10.0.2.10": 4},
        },
        {"id": "beta", "match": {"debug_label": "beta"}, "answers": 2},
    ]
    policy = sliced(slices, unmatched="refuse")
    on_a, _ = compile_with_state(policy, 3, context=CompileContext({"zone": "a"}))
    body = explain(on_a, "10.8.0.1", source="test").to_json()
    assert (body["slice"], body["strategy"], body["ttl"]) == ("eu", "failover", 9)
    assert body["weights"] == {"10.0.2.10": 4}
    weights = {c["address"]: c["weight"] for c in body["candidates"]}
    assert weights == {"10.0.1.10": 90, "10.0.2.10": 4, "10.0.3.10": 1}
    elsewhere, _ = compile_with_state(policy, 3)
    refused = explain(elsewhere, "10.8.0.1", source="test").to_json()
    assert refused["action"] == "refuse" and refused["slice"] == DEFAULT_SLICE
    assert any("spec.unmatched" in note for note in refused["notes"])
    debug, _ = compile_with_state(policy, 3, debug_label="beta")
    asked = explain(debug, "10.9.0.1", source="test").to_json()
    assert (asked["slice"], asked["answers"], asked["debug_label"]) == ("beta", 2, "beta")


def test_served_share_uses_the_slice_weights() -> None:
    slices = [
        {
            "id": "even",
            "match": {"client_cidrs": ["10.9.0.0/16"]},
            "weights": {"10.0.1.10": 1, "10.0.2.10": 1, "10.0.3.10": 2},
        }
    ]
    counts = {("even", "10.0.1.10"): 25, ("even", "10.0.2.10"): 25, ("even", "10.0.3.10"): 50}
    share = policy_share(sliced(slices), frozenset(), counts, ShareRule())
    intended = {e.address: e.intended for e in share.slices["even"].endpoints}
    assert intended == pytest.approx({"10.0.1.10": 0.25, "10.0.2.10": 0.25, "10.0.3.10": 0.5})


def test_debug_names_are_exact_only() -> None:
    snap = compiled(DEBUG_SLICES)
    assert set(snap.debug) == {name_to_wire(f"beta.{DOMAIN}")}


def test_the_explain_table_names_the_slice_rules() -> None:
    slices = [
        {"id": "beta", "match": {"debug_label": "beta"}, "ttl": 4, "weights": {"10.0.2.10": 3}},
    ]
    debug, _ = compile_with_state(sliced(slices), 1, debug_label="beta")
    table = explain_table(explain(debug, "10.9.0.1", source="test").to_json())
    assert "slice beta, answer, strategy weighted, 1 answer(s), ttl 4" in table
    assert f"asked as beta.{DOMAIN} (debug label)" in table
    assert "slice weights 10.0.2.10=3" in table
