"""The pure rules of issue 12's safety part: rise/fall, safety rules, drains, on_all_down."""

from __future__ import annotations

import random
from typing import Any

import dns.message
import pytest

from dnsmesh import protocol, quorum, safety
from dnsmesh.dnswire import RCODE_SERVFAIL, parse_query
from dnsmesh.drains import Drained, DrainSet
from dnsmesh.errors import PolicyError
from dnsmesh.health import EndpointHealth, OutlierRule, decide_weights
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.reweigh import reweigh
from dnsmesh.snapshot import ServfailPolicy, compile_snapshot

A, B, C, D = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"


def policy(
    addresses: list[str],
    *,
    name: str = "web",
    weights: list[int] | None = None,
    groups: list[str | None] | None = None,
    health: dict[str, Any] | None = None,
    safety_rule: dict[str, Any] | None = None,
) -> Policy:
    weights = weights or [1] * len(addresses)
    groups = groups or [None] * len(addresses)
    endpoints = []
    for address, weight, group in zip(addresses, weights, groups, strict=True):
        endpoint: dict[str, Any] = {"address": address, "weight": weight}
        if group:
            endpoint["group"] = group
        endpoints.append(endpoint)
    spec: dict[str, Any] = {"domain": f"{name}.mesh.test", "endpoints": endpoints}
    spec["health"] = {"outlier": {"max_ejection_percent": 100}, **(health or {})}
    if safety_rule is not None:
        spec["safety"] = safety_rule
    return parse_policy(
        {"apiVersion": "dnsmesh/v1", "kind": "Policy", "metadata": {"name": name}, "spec": spec}
    )


def ejected() -> EndpointHealth:
    return EndpointHealth(samples=5, consecutive_failures=5, ejected_until=99.0, ejected_at=1.0)


# -- rise and fall ------------------------------------------------------------------------


def test_fall_is_the_new_name_of_consecutive_failures_and_both_are_refused() -> None:
    assert policy([A], health={"fall": 2}).spec.health is not None
    old = policy([A], health={"outlier": {"consecutive_failures": 4}}).spec.health
    new = policy([A], health={"fall": 4}).spec.health
    assert old is not None and new is not None
    assert old.failures_to_eject == new.failures_to_eject == 4
    assert policy([A]).spec.health.failures_to_eject == 5  # type: ignore[union-attr]
    with pytest.raises(PolicyError) as refused:
        policy([A], health={"fall": 2, "outlier": {"consecutive_failures": 2}})
    assert [e.path for e in refused.value.errors] == ["spec.health.outlier.consecutive_failures"]
    # an old document reads back unchanged: nothing is renamed in what was stored
    document = policy([A], health={"outlier": {"consecutive_failures": 4}}).to_document()
    assert document["spec"]["health"]["outlier"]["consecutive_failures"] == 4
    assert "fall" not in document["spec"]["health"]


@pytest.mark.parametrize("bad", [{"rise": 0}, {"fall": 0}, {"rise": 1001}])
def test_rise_and_fall_are_bounded(bad: dict[str, int]) -> None:
    with pytest.raises(PolicyError) as refused:
        policy([A], health=bad)
    assert [e.path for e in refused.value.errors] == [f"spec.health.{next(iter(bad))}"]


def test_fall_failures_in_a_row_eject_and_rise_successes_in_a_row_return() -> None:
    rule = OutlierRule(consecutive_failures=3, base_ejection=1.0, rise=3)
    h = EndpointHealth()
    for now, ok in enumerate([False, False, True, False, False]):  # a success resets
        h = h.observe(ok, 0.01, float(now), rule)
    assert not h.ejected
    h = h.observe(False, None, 5.0, rule)
    assert h.ejected  # the third failure in a row
    # after the ejection time: successes count, a failure in between starts again
    for at, ok in [(7.0, True), (8.0, True), (9.0, False), (10.0, True), (11.0, True)]:
        h = h.observe(ok, 0.01, at, rule)
        assert h.ejected, at
    h = h.observe(True, 0.01, 12.0, rule)
    assert not h.ejected  # the third success in a row


def test_rise_one_is_the_behaviour_before_rise() -> None:
    rule = OutlierRule(consecutive_failures=1, base_ejection=1.0)
    h = EndpointHealth().observe(False, None, 0.0, rule)
    assert h.ejected
    assert h.observe(True, 0.01, 0.5, rule).ejected  # still serving its ejection time
    assert not h.observe(True, 0.01, 1.5, rule).ejected


# -- safety rules -------------------------------------------------------------------------


def test_safety_defaults_keep_one_endpoint() -> None:
    p = policy([A, B])
    assert safety.check(p, {A}) is None
    violation = safety.check(p, {A, B})
    assert violation is not None and violation.rule == "min_endpoints"
    assert "min_endpoints is 1" in violation.message


def test_min_weight_percent_counts_configured_weight() -> None:
    p = policy([A, B, C], weights=[60, 30, 10], safety_rule={"min_weight_percent": 40})
    assert safety.check(p, {B, C}) is None  # 60 % left
    violation = safety.check(p, {A})  # 40 % left: still fine
    assert violation is None
    violation = safety.check(p, {A, C})
    assert violation is not None and violation.rule == "min_weight_percent"
    assert "30%" in violation.message


def test_standby_endpoints_of_weight_zero_do_not_count() -> None:
    p = policy([A, B], weights=[1, 0])
    violation = safety.check(p, {A})
    assert violation is not None and violation.rule == "min_endpoints"


def test_admit_takes_candidates_in_order_while_the_rules_hold() -> None:
    p = policy([A, B, C, D], weights=[10, 10, 70, 10], safety_rule={"min_weight_percent": 50})
    assert safety.admit(p, set(), [C, A, B, D]) == (A, B, D)  # C alone would leave 30 %
    assert safety.admit(p, set(), [A, B, D], limit=2) == (A, B)
    q = policy([A, B, C], safety_rule={"min_endpoints": 2})
    assert safety.admit(q, {A}, [B, C]) == ()


def test_an_edit_is_refused_for_a_breach_it_makes_not_for_one_it_finds() -> None:
    rule = {"min_endpoints": 3}
    stored = policy([A, B, C, D], safety_rule=rule)
    # new or stored-and-safe: the edit's own breach is refused
    assert safety.check_edit(None, stored, {A, B}) == safety.check(stored, {A, B})
    assert safety.check_edit(policy([A, B, C, D]), stored, {A, B}) is not None
    assert safety.check_edit(None, stored, {A}) is None
    # already broken by a forced drain: an edit keeping as much in service goes through,
    # one that takes more out is refused
    same = policy([A, B, C, D], safety_rule=rule, weights=[1, 1, 1, 1])
    assert safety.check_edit(stored, same, {A, B}) is None
    fewer = policy([A, B, C, D], safety_rule=rule, weights=[1, 1, 1, 0])
    broken = safety.check_edit(stored, fewer, {A, B})
    assert broken is not None and broken.rule == "min_endpoints"
    lighter = policy([A, B, C, D], safety_rule={"min_weight_percent": 80}, weights=[4, 4, 2, 2])
    heavier = policy([A, B, C, D], safety_rule={"min_weight_percent": 80}, weights=[4, 4, 1, 3])
    assert safety.check_edit(lighter, heavier, {A}) is None  # 8/12 -> 8/12: no worse
    less = policy([A, B, C, D], safety_rule={"min_weight_percent": 80}, weights=[6, 4, 1, 1])
    assert safety.check_edit(lighter, less, {A}) is not None  # 8/12 -> 6/12 kept: worse


def test_a_safety_floor_above_the_endpoints_is_refused_at_its_field() -> None:
    with pytest.raises(PolicyError) as refused:
        policy([A, B], weights=[1, 0], safety_rule={"min_endpoints": 2})
    assert [e.path for e in refused.value.errors] == ["spec.safety.min_endpoints"]
    with pytest.raises(PolicyError) as refused:
        policy([A], safety_rule={"min_weight_percent": 101})
    assert [e.path for e in refused.value.errors] == ["spec.safety.min_weight_percent"]


# -- the per-policy decision: drains, ejections under safety, on_all_down ----------------


def test_drained_endpoints_get_weight_zero_without_any_health() -> None:
    p = policy([A, B, C])
    decision = decide_weights([p], {}, drains=DrainSet([Drained(B)]))
    assert decision.weights == {"web": {A: 1, B: 0, C: 1}}
    other = decide_weights([p], {}, drains=DrainSet([Drained(B, "other")]))
    assert other.weights == {}  # drained in another policy only


def test_ejections_stop_at_the_safety_floor() -> None:
    p = policy([A, B, C, D], safety_rule={"min_endpoints": 3})
    decision = decide_weights([p], {A: ejected(), B: ejected()})
    assert decision.ejected == {"web": (A,)}
    assert decision.weights["web"][B] == 1  # kept in by the rule, as max_ejection_percent does


def test_a_drain_counts_against_the_floor_that_ejections_respect() -> None:
    p = policy([A, B, C], safety_rule={"min_endpoints": 2})
    decision = decide_weights([p], {A: ejected()}, drains=DrainSet([Drained(C)]))
    assert decision.ejected == {}
    assert decision.weights == {"web": {A: 1, B: 1, C: 0}}


def test_the_quorum_down_set_respects_the_floor_too() -> None:
    p = policy([A, B, C], safety_rule={"min_endpoints": 2})
    decision = decide_weights([p], {}, down=frozenset({A, B}))
    assert decision.ejected == {"web": (A,)}


def test_on_all_down_fail_open_is_the_default_and_keeps_drains_out() -> None:
    p = policy([A, B, C])
    decision = decide_weights([p], {A: ejected(), B: ejected()}, drains=DrainSet([Drained(C)]))
    assert decision.all_down == {"web": "fail-open"}
    assert decision.fail_open == ("web",)
    assert decision.weights == {"web": {A: 1, B: 1, C: 0}}
    plain = decide_weights([p], {A: ejected(), B: ejected(), C: ejected()})
    assert plain.weights == {} and plain.fail_open == ("web",)


def test_on_all_down_nodata_and_servfail() -> None:
    health = {A: ejected(), B: ejected()}
    nodata = decide_weights([policy([A, B], health={"on_all_down": "nodata"})], health)
    assert nodata.all_down == {"web": "nodata"}
    assert nodata.weights == {"web": {A: 0, B: 0}}
    servfail = decide_weights([policy([A, B], health={"on_all_down": "servfail"})], health)
    assert servfail.servfail == frozenset({"web"}) and servfail.weights == {}


def test_on_all_down_fallback_group_answers_that_group_even_standbys() -> None:
    p = policy(
        [A, B, C],
        weights=[1, 1, 0],
        groups=["main", "main", "dr"],
        health={"on_all_down": {"fallback_group": "dr"}},
    )
    healthy = decide_weights([p], {A: ejected()})
    assert healthy.all_down == {} and healthy.weights == {"web": {A: 0, B: 1}}
    down = decide_weights([p], {A: ejected(), B: ejected()})
    assert down.all_down == {"web": "fallback"}
    assert down.weights == {"web": {A: 0, B: 0, C: 1}}


def test_a_fallback_group_must_exist() -> None:
    with pytest.raises(PolicyError) as refused:
        policy([A], health={"on_all_down": {"fallback_group": "nope"}})
    assert [e.path for e in refused.value.errors] == ["spec.health.on_all_down.fallback_group"]
    with pytest.raises(PolicyError) as refused:
        policy([A], health={"on_all_down": "maybe"})
    assert [e.path for e in refused.value.errors] == ["spec.health.on_all_down"]


def test_on_all_down_round_trips() -> None:
    for value in ("servfail", "nodata", "fail-open", {"fallback_group": "g"}):
        p = policy([A], groups=["g"], health={"on_all_down": value})
        again = parse_policy(p.to_document())
        assert again == p
        assert again.to_document()["spec"]["health"]["on_all_down"] == value


def test_servfail_is_a_policy_swapped_in_and_out_by_reweigh() -> None:
    p = policy([A, B], health={"on_all_down": "servfail"})
    base = compile_snapshot([p], 3)
    failing = reweigh(base, {}, {}, frozenset({"web"}))
    compiled = failing.policies()[0]
    assert isinstance(compiled, ServfailPolicy)
    query = parse_query(dns.message.make_query("web.mesh.test", "A").to_wire())
    answer = dns.message.from_wire(compiled.respond(query, "127.0.0.1", random.Random(1)))
    assert answer.rcode() == RCODE_SERVFAIL
    assert reweigh(failing, {}, {}) is failing  # nothing to change: the same snapshot
    assert reweigh(base, {}, {}) is base


# -- drains on the wire -------------------------------------------------------------------


def test_drains_travel_in_snapshots_deltas_and_the_state_file() -> None:
    p = policy([A, B])
    drains = DrainSet([Drained(A), Drained("fd00::0001", "web")])
    snapshot = protocol.build_snapshot(1, [p.to_document()], (), "m", drains)
    state = protocol.apply_update(protocol.AppliedState.empty(), snapshot)
    assert state.drains == DrainSet([Drained(A), Drained("fd00::1", "web")])
    assert state.drains.of("web") == {A, "fd00::1"} and state.drains.of("x") == {A}
    unchanged = protocol.apply_update(state, protocol.build_delta(1, 2, [], None, "m"))
    assert unchanged.drains == state.drains
    cleared = protocol.apply_update(state, protocol.build_delta(1, 2, [], None, "m", DrainSet()))
    assert not cleared.drains
    assert protocol.decode_state(protocol.encode_state(state)).drains == state.drains


# -- the quorum: anti-flap streaks and safety ------------------------------------------------


def _verdicts(down: set[str], addresses: list[str]) -> dict[str, quorum.Verdict]:
    return {a: quorum.Verdict(a, 3, 3 if a in down else 0, a in down) for a in addresses}


def test_the_quorum_flips_only_after_explicit_fall_and_rise_evaluations() -> None:
    p = policy([A, B, C], health={"fall": 3, "rise": 2})
    streaks: dict[str, int] = {}
    stored: frozenset[str] = frozenset()
    for _ in range(2):
        settled = quorum.settle(_verdicts({A}, [A, B, C]), stored, streaks, [p], DrainSet())
        assert settled.down == frozenset()
        streaks = settled.streaks
    settled = quorum.settle(_verdicts({A}, [A, B, C]), stored, streaks, [p], DrainSet())
    assert settled.down == {A}  # the third evaluation in a row
    stored, streaks = settled.down, settled.streaks
    up = quorum.settle(_verdicts(set(), [A, B, C]), stored, streaks, [p], DrainSet())
    assert up.down == {A}  # one evaluation saying up is not enough with rise 2
    back = quorum.settle(_verdicts({A}, [A, B, C]), stored, up.streaks, [p], DrainSet())
    assert back.streaks == {}  # it said down again: the count starts over
    # no explicit fall/rise: the first evaluation flips, as before
    plain = policy([A, B, C])
    assert quorum.settle(_verdicts({A}, [A, B, C]), frozenset(), {}, [plain], DrainSet()).down == {
        A
    }


def test_the_quorum_down_set_keeps_the_safety_floor_counting_drains() -> None:
    p = policy([A, B, C], safety_rule={"min_endpoints": 2})
    settled = quorum.settle(_verdicts({A, B}, [A, B, C]), frozenset(), {}, [p], DrainSet())
    assert settled.down == {A} and settled.held == {B}
    drained = quorum.settle(
        _verdicts({A}, [A, B, C]), frozenset(), {}, [p], DrainSet([Drained(C, "web")])
    )
    assert drained.down == frozenset() and drained.held == {A}
    # one already down stays down first; an address in no policy is not held
    kept = quorum.settle(_verdicts({A, B, D}, [A, B, C, D]), frozenset({B}), {}, [p], DrainSet())
    assert kept.down == {B, D} and kept.held == {A}
