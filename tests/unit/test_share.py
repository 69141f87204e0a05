"""Served share against intended weight, without sockets (dnsmesh/share.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dnsmesh.policy import Policy, parse_policy
from dnsmesh.selection import WeightedTable
from dnsmesh.share import (
    DEFAULT_SLICE,
    ShareRule,
    counter_deltas,
    policy_share,
    total_variation,
    view_shares,
)
from tests.support.policies import policy_doc

RULE = ShareRule(drift_threshold=0.1, min_answers=200)
A, B, C = "127.0.10.1", "127.0.10.2", "127.0.10.3"


def _policy(endpoints: list[dict[str, Any]], **spec: Any) -> Policy:
    return parse_policy(policy_doc("web", endpoints, **spec))


def _shares(result: Any) -> dict[str, tuple[float, float, int]]:
    return {e.address: (e.intended, e.served, e.answers) for e in result.endpoints}


def test_counter_deltas_count_gains_and_restarts() -> None:
    assert counter_deltas({"a": 5, "b": 2}, {"a": 9, "b": 2, "c": 1}) == {"a": 4, "c": 1}
    # a counter that went back was dropped and counted again from 0: all it holds is new
    assert counter_deltas({"a": 9}, {"a": 3}) == {"a": 3}
    assert counter_deltas({"gone": 4}, {}) == {}


def test_an_80_20_policy_served_as_weighted_has_no_drift() -> None:
    policy = _policy([{"address": A, "weight": 80}, {"address": B, "weight": 20}])
    result = policy_share(
        policy, frozenset(), {(DEFAULT_SLICE, A): 800, (DEFAULT_SLICE, B): 200}, RULE
    )
    assert _shares(result.policy) == {A: (0.8, 0.8, 800), B: (0.2, 0.2, 200)}
    assert result.policy.answers == 1000
    assert result.policy.drift == pytest.approx(0.0)
    assert not result.policy.flagged
    assert result.slices == {}  # a policy without slices has no per-slice part


def test_drift_is_the_total_variation_and_flags_past_the_threshold() -> None:
    policy = _policy([{"address": A, "weight": 1}, {"address": B, "weight": 1}])
    skewed = {(DEFAULT_SLICE, A): 900, (DEFAULT_SLICE, B): 100}
    result = policy_share(policy, frozenset(), skewed, RULE).policy
    assert result.drift == pytest.approx(0.4)
    assert result.flagged
    few = {(DEFAULT_SLICE, A): 90, (DEFAULT_SLICE, B): 10}  # too few answers to judge
    assert not policy_share(policy, frozenset(), few, RULE).policy.flagged
    assert total_variation({"x": 1.0}, {"y": 1.0}) == 1.0


def test_the_down_set_is_intended_and_local_ejections_are_drift() -> None:
    policy = _policy([{"address": A, "weight": 50}, {"address": B, "weight": 50}])
    counts = {(DEFAULT_SLICE, A): 1000}
    told_down = policy_share(policy, frozenset({B}), counts, RULE).policy
    assert _shares(told_down)[B][0] == 0.0
    assert not told_down.flagged
    ejected_here = policy_share(policy, frozenset(), counts, RULE).policy
    assert ejected_here.drift == pytest.approx(0.5)
    assert ejected_here.flagged
    # every endpoint down: the agents fail open on the configured weights, and so does this
    both = policy_share(policy, frozenset({A, B}), counts, RULE).policy
    assert _shares(both)[A][0] == pytest.approx(0.5)


def test_slices_mix_by_the_answers_each_served() -> None:
    policy = _policy(
        [
            {"address": A, "weight": 90, "group": "v1"},
            {"address": B, "weight": 10, "group": "v2"},
        ],
        slices=[
            {"id": "beta", "match": {"client_cidrs": ["10.8.0.0/16"]}, "groups": ["v2"]},
            {"id": "blocked", "match": {"client_cidrs": ["10.9.0.0/16"]}, "action": "refuse"},
        ],
    )
    counts = {(DEFAULT_SLICE, A): 450, (DEFAULT_SLICE, B): 50, ("beta", B): 500}
    result = policy_share(policy, frozenset(), counts, RULE)
    assert _shares(result.policy)[A][0] == pytest.approx(0.45)  # 0.5 x 0.9 + 0.5 x 0
    assert result.policy.drift == pytest.approx(0.0)
    assert set(result.slices) == {DEFAULT_SLICE, "beta"}  # a refusing slice serves nothing
    assert _shares(result.slices["beta"])[B] == (1.0, 1.0, 500)


def test_families_are_views_of_their_own() -> None:
    policy = _policy([{"address": A, "weight": 3}, {"address": "::1", "weight": 1}])
    counts = {(DEFAULT_SLICE, A): 300, (DEFAULT_SLICE, "::1"): 100}  # A and AAAA answers
    result = policy_share(policy, frozenset(), counts, RULE).policy
    assert result.drift == pytest.approx(0.0)


def test_failover_intends_the_primaries_only() -> None:
    endpoints = [
        {"address": A, "weight": 1, "priority": 0},
        {"address": B, "weight": 1, "priority": 1},
    ]
    policy = _policy(endpoints, strategy="failover")
    result = policy_share(policy, frozenset(), {(DEFAULT_SLICE, A): 300}, RULE).policy
    assert _shares(result)[A][0] == 1.0
    assert result.drift == 0.0
    # the primary down mesh-wide: the backup is what the agents were told to serve
    moved = policy_share(policy, frozenset({A}), {(DEFAULT_SLICE, B): 300}, RULE).policy
    assert moved.drift == 0.0


def test_several_answers_match_successive_weighted_draws() -> None:
    policy = _policy([{"address": a, "weight": w} for a, w in ((A, 6), (B, 3), (C, 1))])
    endpoints = list(policy.spec.endpoints)
    intended = view_shares(endpoints, {}, policy.spec.strategy, 2)
    assert sum(intended.values()) == pytest.approx(1.0)
    table = WeightedTable.build([6, 3, 1])
    rng = random.Random(7)
    drawn = [0, 0, 0]
    for _ in range(20_000):
        for index in table.pick_distinct(2, rng):
            drawn[index] += 1
    for index, address in enumerate((A, B, C)):
        assert drawn[index] / 40_000 == pytest.approx(intended[address], abs=0.01)
    # as many answers as endpoints: each answer names them all
    assert view_shares(endpoints, {}, policy.spec.strategy, 3) == pytest.approx(
        {A: 1 / 3, B: 1 / 3, C: 1 / 3}
    )


def test_counts_of_what_the_policy_no_longer_declares_are_left_out() -> None:
    policy = _policy([{"address": A}])
    counts = {(DEFAULT_SLICE, A): 10, ("old-slice", A): 5, (DEFAULT_SLICE, B): 7}
    assert policy_share(policy, frozenset(), counts, RULE).policy.answers == 10


def test_an_idle_policy_shows_its_intent() -> None:
    policy = _policy([{"address": A, "weight": 3}, {"address": B, "weight": 1}])
    result = policy_share(policy, frozenset(), {}, RULE).policy
    assert _shares(result) == {A: (0.75, 0.0, 0), B: (0.25, 0.0, 0)}
    assert not result.flagged


def test_the_rule_checks_its_bounds() -> None:
    with pytest.raises(ValueError, match="threshold"):
        ShareRule(drift_threshold=1.5)
    with pytest.raises(ValueError, match="answers"):
        ShareRule(min_answers=0)


def test_a_drained_endpoint_is_intended_no_share() -> None:
    # The agents are told the drain: answers only from A and B are what was intended.
    policy = _policy([{"address": a, "weight": 1} for a in (A, B, C)])
    counts = {(DEFAULT_SLICE, A): 500, (DEFAULT_SLICE, B): 500}
    result = policy_share(policy, frozenset(), counts, RULE, drained=frozenset({C})).policy
    assert _shares(result) == {A: (0.5, 0.5, 500), B: (0.5, 0.5, 500), C: (0.0, 0.0, 0)}
    assert result.drift == pytest.approx(0.0)
    undrained = policy_share(policy, frozenset(), counts, RULE).policy
    assert undrained.drift == pytest.approx(1 / 3)  # without the drain C's third is missing
