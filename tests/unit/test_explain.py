"""Explain: the view, candidates and distribution read from the compiled policy, checked
against the answers that same compiled policy gives (pure: no sockets)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import dns.message
import pytest

from dnsmesh import explain as ex
from dnsmesh.dnswire import parse_query
from dnsmesh.health import EndpointHealth
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.snapshot import DEFAULT_SLICE, CompiledPolicy, _Picker, compile_snapshot

N = 20_000
TOLERANCE = 0.02  # over 5 sigma of a share at n = 20 000


def policy(endpoints: list[dict[str, Any]], name: str = "web", **spec: Any) -> Policy:
    return parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": name},
            "spec": {"domain": f"{name}.mesh.internal", "endpoints": endpoints, **spec},
        }
    )


def ep(address: str, weight: int = 1, **extra: Any) -> dict[str, Any]:
    return {"address": address, "weight": weight, **extra}


def served(compiled: CompiledPolicy, client: str, n: int = N, rdtype: str = "A") -> Counter[str]:
    """How often each address is in the answers ``compiled`` gives ``client``."""
    wire = dns.message.make_query(f"{compiled.domain}.", rdtype, use_edns=False).to_wire()
    query = parse_query(wire)
    rng = random.Random(7)
    seen: Counter[str] = Counter()
    for _ in range(n):
        message = dns.message.from_wire(compiled.respond(query, client, rng))
        seen.update(rdata.address for rrset in message.answer for rdata in rrset)
    return seen


def assert_matches(explained: ex.Odds, seen: Counter[str], n: int = N) -> None:
    assert set(seen) <= set(explained.shares)
    for address, share in explained.shares.items():
        assert abs(seen[address] / n - share) < TOLERANCE, (address, share, seen)


def test_weighted_shares_are_the_weights_and_match_the_answers() -> None:
    compiled = CompiledPolicy(policy([ep("10.0.0.1", 3), ep("10.0.0.2", 1)]), revision=4)
    result = ex.explain(compiled, "127.0.0.1", source="controller")
    odds = result.distribution["A"]
    assert odds.exact and odds.answer is None
    assert odds.shares == {"10.0.0.1": 0.75, "10.0.0.2": 0.25}
    assert_matches(odds, served(compiled, "127.0.0.1"))
    assert result.revision == 4 and result.slice == DEFAULT_SLICE and result.action == "answer"
    assert [c.state for c in result.candidates] == ["active", "active"]
    assert result.rollout is None  # the rollouts feature fills it


def test_large_weights_use_the_bisect_picker_and_stay_exact() -> None:
    compiled = CompiledPolicy(policy([ep("10.0.0.1", 9000), ep("10.0.0.2", 1000)]))
    odds = ex.explain(compiled, "127.0.0.1", source="controller").distribution["A"]
    assert odds.shares == pytest.approx({"10.0.0.1": 0.9, "10.0.0.2": 0.1})


def test_several_answers_give_exact_inclusion_odds() -> None:
    endpoints = [ep("10.0.0.1", 1), ep("10.0.0.2", 2), ep("10.0.0.3", 3), ep("10.0.0.4", 4)]
    compiled = CompiledPolicy(policy(endpoints, answers=2))
    odds = ex.explain(compiled, "127.0.0.1", source="controller").distribution["A"]
    assert odds.exact
    assert sum(odds.shares.values()) == pytest.approx(2.0)
    assert_matches(odds, served(compiled, "127.0.0.1"))


def test_many_endpoints_and_answers_are_estimated_from_the_table() -> None:
    endpoints = [ep(f"10.0.1.{i}", i) for i in range(1, ex.EXACT_LIMIT + 3)]
    compiled = CompiledPolicy(policy(endpoints, answers=3))
    odds = ex.explain(compiled, "127.0.0.1", source="controller").distribution["A"]
    assert not odds.exact
    assert sum(odds.shares.values()) == pytest.approx(3.0)
    assert_matches(odds, served(compiled, "127.0.0.1"))


def test_sticky_gives_the_one_answer_this_client_gets() -> None:
    endpoints = [ep(f"10.0.0.{i}") for i in range(1, 6)]
    compiled = CompiledPolicy(policy(endpoints, strategy="sticky"))
    for client in ("127.0.0.1", "127.0.0.9", "::1"):
        odds = ex.explain(compiled, client, source="controller").distribution["A"]
        seen = served(compiled, client, n=20)
        assert odds.answer is not None and list(seen) == list(odds.answer)
        assert odds.shares == {odds.answer[0]: 1.0}


def test_single_endpoint_is_the_answer() -> None:
    compiled = CompiledPolicy(policy([ep("10.0.0.1"), ep("fd00::1")]))
    result = ex.explain(compiled, "127.0.0.1", source="controller")
    assert result.distribution["A"].answer == ("10.0.0.1",)
    assert result.distribution["AAAA"].answer == ("fd00::1",)
    assert [c.family for c in result.candidates] == [4, 6]


def test_slice_by_client_address_and_refusing_slice() -> None:
    spec = {
        "slices": [
            {"id": "beta", "match": {"client_cidrs": ["127.0.0.8/29"]}, "groups": ["v2"]},
            {"id": "blocked", "match": {"client_cidrs": ["127.0.1.0/24"]}, "action": "refuse"},
        ]
    }
    compiled = CompiledPolicy(
        policy([ep("10.0.0.1", group="v1"), ep("10.0.0.2", group="v2")], **spec)
    )
    beta = ex.explain(compiled, "127.0.0.9", source="controller")
    assert beta.slice == "beta"
    assert [c.address for c in beta.candidates] == ["10.0.0.2"]
    assert beta.distribution["A"].answer == ("10.0.0.2",)
    default = ex.explain(compiled, "127.0.0.1", source="controller")
    assert default.slice == DEFAULT_SLICE
    assert default.distribution["A"].shares == {"10.0.0.1": 0.5, "10.0.0.2": 0.5}
    refused = ex.explain(compiled, "127.0.1.5", source="controller")
    assert refused.action == "refuse" and refused.distribution == {}
    assert refused.slice == "blocked"
    # Explaining writes nothing into the query path's per-client memo.
    assert compiled._memo == {}


def test_drained_down_and_ejected_are_named_and_left_out() -> None:
    endpoints = [ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3"), ep("10.0.0.4"), ep("10.0.0.5")]
    spec = {"health": {"outlier": {"max_ejection_percent": 100}}}
    p = policy([*endpoints, ep("10.0.0.6", 0)], **spec)
    ejected = EndpointHealth(ejected_until=1e9, samples=3)
    compiled, all_down = ex.compile_with_state(
        p,
        7,
        health={"10.0.0.3": ejected},
        down=frozenset({"10.0.0.2"}),
        drained=frozenset({"10.0.0.1"}),
    )
    assert all_down is None
    result = ex.explain(
        compiled,
        "127.0.0.1",
        source="controller",
        drained=frozenset({"10.0.0.1"}),
        down=frozenset({"10.0.0.2"}),
        ejected=frozenset({"10.0.0.3"}),
    )
    states = {c.address: c.state for c in result.candidates}
    assert states == {
        "10.0.0.1": "drained",
        "10.0.0.2": "down",
        "10.0.0.3": "ejected",
        "10.0.0.4": "active",
        "10.0.0.5": "active",
        "10.0.0.6": "zero-weight",
    }
    assert result.distribution["A"].shares == {"10.0.0.4": 0.5, "10.0.0.5": 0.5}


def test_unhealthy_kept_in_by_max_ejection_percent_says_so() -> None:
    p = policy([ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")])  # 50 %: one of three
    down = frozenset({"10.0.0.1", "10.0.0.2"})
    compiled, _ = ex.compile_with_state(p, 1, down=down)
    result = ex.explain(compiled, "127.0.0.1", source="controller", down=down)
    by_address = {c.address: c for c in result.candidates}
    assert by_address["10.0.0.1"].state == "down"
    assert by_address["10.0.0.2"].state == "active"
    assert by_address["10.0.0.2"].note is not None and "kept in" in by_address["10.0.0.2"].note


def test_all_down_servfail_and_nodata() -> None:
    down = frozenset({"10.0.0.1", "10.0.0.2"})
    for mode, action in (("servfail", "servfail"), ("nodata", "answer")):
        p = policy([ep("10.0.0.1"), ep("10.0.0.2")], health={"on_all_down": mode})
        compiled, all_down = ex.compile_with_state(p, 1, down=down)
        result = ex.explain(compiled, "127.0.0.1", source="controller", all_down=all_down)
        assert all_down == mode and result.action == action
        assert result.distribution == {}  # SERVFAIL, or NOERROR with no records


def test_failover_shows_the_standby_group() -> None:
    p = policy([ep("10.0.0.1", priority=0), ep("10.0.0.2", priority=1)], strategy="failover")
    result = ex.explain(CompiledPolicy(p), "127.0.0.1", source="controller")
    assert [c.state for c in result.candidates] == ["active", "standby"]
    assert result.distribution["A"].answer == ("10.0.0.1",)


def test_resolve_by_policy_name_and_by_dns_name() -> None:
    snapshot = compile_snapshot(
        [
            policy([ep("10.0.0.1")], name="web"),
            parse_policy(
                {
                    "apiVersion": "dnsmesh/v1",
                    "kind": "Policy",
                    "metadata": {"name": "wild"},
                    "spec": {"domain": "*.svc.internal", "endpoints": [ep("10.0.0.2")]},
                }
            ),
        ]
    )
    assert (found := ex.resolve(snapshot, "web")) is not None and found.name == "web"
    assert (found := ex.resolve(snapshot, "WEB.mesh.internal.")) is not None
    assert found.name == "web"
    assert (found := ex.resolve(snapshot, "a.b.svc.internal")) is not None
    assert found.name == "wild"
    assert ex.resolve(snapshot, "svc.internal") is None
    assert ex.resolve(snapshot, "no..such") is None


def test_what_if_sets_the_distributions_side_by_side() -> None:
    before = ex.explain(
        CompiledPolicy(policy([ep("10.0.0.1"), ep("10.0.0.2")])), "127.0.0.1", source="x"
    )
    after = ex.explain(
        CompiledPolicy(policy([ep("10.0.0.1", 3), ep("10.0.0.3", 1)])), "127.0.0.1", source="x"
    )
    body = ex.what_if(before, after)
    assert body["changes"]["A"] == [
        {"address": "10.0.0.1", "before": 0.5, "after": 0.75},
        {"address": "10.0.0.2", "before": 0.5, "after": 0.0},
        {"address": "10.0.0.3", "before": 0.0, "after": 0.25},
    ]
    new = ex.what_if(None, after)
    assert new["before"] is None and new["changes"]["A"][0]["before"] == 0.0


def test_an_unknown_picker_is_sampled_and_its_counters_restored() -> None:
    class Alternating(_Picker):
        def __init__(self) -> None:
            super().__init__(("10.0.0.1", "10.0.0.2"))
            self.turn = 0

        def choose(self, client: str, rng: random.Random) -> tuple[bytes, int]:
            self.turn ^= 1
            self.hits[self.turn] += 1
            return b"", 1

    picker = Alternating()
    picker.hits[0] = 5
    odds = ex.odds(picker, "127.0.0.1")
    assert not odds.exact
    assert odds.shares == {"10.0.0.1": 0.5, "10.0.0.2": 0.5}
    assert picker.hits == [5, 0]


def test_to_json_is_plain() -> None:
    compiled = CompiledPolicy(policy([ep("10.0.0.1", 3), ep("10.0.0.2", 1)]), revision=2)
    body = ex.explain(compiled, "127.0.0.1", source="agent").to_json()
    assert body["distribution"]["A"] == {
        "exact": True,
        "shares": {"10.0.0.1": 0.75, "10.0.0.2": 0.25},
    }
    assert body["candidates"][0] == {
        "address": "10.0.0.1",
        "family": 4,
        "group": None,
        "priority": 0,
        "weight": 3,
        "effective_weight": 3,
        "state": "active",
    }
    assert body["source"] == "agent" and body["rollout"] is None
