"""Rollouts, pure: the schema, the cohorts, the compiled split and the engine's decisions."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import dns.message
import pytest

from dnsmesh.dnswire import parse_query
from dnsmesh.errors import PolicyError
from dnsmesh.policy import Cohort, Policy, parse_policy
from dnsmesh.rollout import (
    STABLE,
    Current,
    Reading,
    RolloutState,
    canary_addresses,
    cohort_of,
    decide,
    measure,
    side_key,
    start,
)
from dnsmesh.snapshot import CompiledPolicy


def a_query(name: str) -> bytes:
    return dns.message.make_query(name, "A", use_edns=False).to_wire()


NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def doc(spec_extra: dict[str, Any], strategy: str = "weighted") -> dict[str, Any]:
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": {"name": "web"},
        "spec": {
            "domain": "web.mesh.internal",
            "strategy": strategy,
            "endpoints": [
                {"address": "127.0.20.1", "weight": 1, "group": "v1"},
                {"address": "127.0.20.2", "weight": 1, "group": "v1"},
                {"address": "127.0.20.3", "weight": 1, "group": "v2"},
            ],
            **spec_extra,
        },
    }


CANARY = {"canary": {"group": "v2", "steps": [10, 25, 50, 100], "interval": "5s"}}


def fields_of(document: dict[str, Any]) -> set[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(document)
    return {e.path for e in caught.value.errors}


# -- the schema -------------------------------------------------------------------------------


def test_canary_takes_seconds_latency_reports_and_cohort() -> None:
    policy = parse_policy(
        doc({"canary": {**CANARY["canary"], "max_latency_ms": 250, "min_reports": 3}})
    )
    canary = policy.spec.canary
    assert canary is not None
    assert canary.interval == 5.0 and canary.max_latency_ms == 250 and canary.reports_needed == 3
    assert policy.spec.cohort is Cohort.RANDOM
    assert parse_policy(doc(CANARY, strategy="sticky")).spec.cohort is Cohort.CLIENT
    # unset fields stay unset in the stored document
    assert "cohort" not in parse_policy(doc(CANARY)).to_document()["spec"]["canary"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"split": {"shares": {"v1": 50, "v2": 40}}}, "spec.split.shares"),
        ({"split": {"shares": {"v1": 50, "v3": 50}}}, "spec.split.shares.v3"),
        ({"split": {"shares": {"v1": 100}}}, "spec.endpoints[2].group"),
        ({"split": {"shares": {"v1": 50, "v2": 50}}, **CANARY}, "spec.split"),
        ({"canary": {**CANARY["canary"], "interval": "0s"}}, "spec.canary.interval"),
        ({"canary": {**CANARY["canary"], "cohort": "sometimes"}}, "spec.canary.cohort"),
        ({"canary": {**CANARY["canary"], "min_reports": 0}}, "spec.canary.min_reports"),
    ],
)
def test_bad_rollouts_are_refused_naming_the_field(extra: dict[str, Any], field: str) -> None:
    assert field in fields_of(doc(extra))


def test_split_accepts_shares_summing_to_100() -> None:
    policy = parse_policy(doc({"split": {"shares": {"v1": 70, "v2": 30}, "cohort": "client"}}))
    assert policy.spec.split is not None and policy.spec.cohort is Cohort.CLIENT


# -- cohorts ----------------------------------------------------------------------------------

CLIENTS = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(4000)]


def cohorts(share: int) -> list[int]:
    keys = [side_key("web", "v2"), side_key("web", STABLE)]
    return [cohort_of(client, keys, [share, 100 - share]) for client in CLIENTS]


def test_raising_the_share_only_moves_clients_into_the_canary() -> None:
    at_10, at_25, at_0 = cohorts(10), cohorts(25), cohorts(0)
    on_canary_10 = {c for c, side in zip(CLIENTS, at_10, strict=True) if side == 0}
    on_canary_25 = {c for c, side in zip(CLIENTS, at_25, strict=True) if side == 0}
    assert on_canary_10 <= on_canary_25
    assert not any(side == 0 for side in at_0)
    # near the shares: 4,000 clients, binomial sd ~19 and ~27
    assert abs(len(on_canary_10) - 400) < 100
    assert abs(len(on_canary_25) - 1000) < 140


def test_cohorts_differ_between_policies() -> None:
    a = [cohort_of(c, [side_key("a", "v2"), side_key("a", STABLE)], [50, 50]) for c in CLIENTS]
    b = [cohort_of(c, [side_key("b", "v2"), side_key("b", STABLE)], [50, 50]) for c in CLIENTS]
    assert a != b


# -- the compiled split -----------------------------------------------------------------------


def answers(compiled: CompiledPolicy, clients: list[str], rng: random.Random) -> Counter[str]:
    query = parse_query(a_query("web.mesh.internal"))
    counted: Counter[str] = Counter()
    for client in clients:
        response = compiled.respond(query, client, rng)
        counted[".".join(str(b) for b in response[-4:])] += 1
    return counted


def group_of(policy: Policy, address: str) -> str | None:
    return next(e.group for e in policy.spec.endpoints if str(e.address) == address)


@pytest.mark.parametrize("share", [0, 25, 100])
def test_a_canary_gets_its_share_of_the_answers(share: int) -> None:
    policy = parse_policy(doc(CANARY))
    counted = answers(
        CompiledPolicy(policy, 1, None, share), ["127.0.0.1"] * 4000, random.Random(1)
    )
    canary = sum(n for address, n in counted.items() if group_of(policy, address) == "v2")
    assert abs(canary - 40 * share) < 150


def test_client_cohorts_keep_their_group_as_the_share_grows() -> None:
    policy = parse_policy(doc(CANARY, strategy="sticky"))
    clients = CLIENTS[:1000]

    def canary_clients(share: int) -> set[str]:
        compiled = CompiledPolicy(policy, 1, None, share)
        query = parse_query(a_query("web.mesh.internal"))
        rng = random.Random(2)
        out = set()
        for client in clients:
            last = compiled.respond(query, client, rng)[-4:]
            if ".".join(str(b) for b in last) == "127.0.20.3":
                out.add(client)
        return out

    assert canary_clients(10) <= canary_clients(25)
    assert not canary_clients(0)


def test_a_side_with_nothing_healthy_gives_its_share_to_the_other() -> None:
    policy = parse_policy(doc(CANARY))
    compiled = CompiledPolicy(policy, 1, {"127.0.20.3": 0}, 50)
    counted = answers(compiled, ["127.0.0.1"] * 200, random.Random(3))
    assert set(counted) == {"127.0.20.1", "127.0.20.2"}
    compiled = CompiledPolicy(policy, 1, {"127.0.20.1": 0, "127.0.20.2": 0}, 0)
    assert set(answers(compiled, ["127.0.0.1"] * 50, random.Random(3))) == {"127.0.20.3"}


def test_a_canary_without_a_share_answers_by_its_weights() -> None:
    policy = parse_policy(doc(CANARY))
    counted = answers(CompiledPolicy(policy, 1), ["127.0.0.1"] * 3000, random.Random(4))
    assert abs(counted["127.0.20.3"] - 1000) < 150


def test_a_split_gives_each_group_its_share_and_counts_answers() -> None:
    policy = parse_policy(doc({"split": {"shares": {"v1": 80, "v2": 20}}}))
    compiled = CompiledPolicy(policy, 1)
    counted = answers(compiled, ["127.0.0.1"] * 4000, random.Random(5))
    assert abs(counted["127.0.20.3"] - 800) < 120
    taken = compiled.take_answered()
    assert sum(taken.values()) == 4000 and taken["_default", "127.0.20.3"] == counted["127.0.20.3"]


# -- the engine -------------------------------------------------------------------------------


def canary_of(extra: dict[str, Any] | None = None) -> Any:
    policy = parse_policy(
        doc({"canary": {**CANARY["canary"], "max_latency_ms": 200, **(extra or {})}})
    )
    return policy, policy.spec.canary


def reading(agent: str, loss: float = 0.0, latency: float = 5.0, age: float = 1.0) -> Reading:
    return Reading(agent, "127.0.20.3", loss, latency, "healthy", age)


def test_steps_up_after_the_interval_with_enough_reports() -> None:
    policy, canary = canary_of()
    current = start(canary, NOW)
    assert (current.share, current.state) == (10, RolloutState.PROGRESSING)
    figures = measure(
        canary, canary_addresses(policy.spec), [reading("a"), reading("b")], frozenset(), 30
    )
    assert decide(canary, current, figures, NOW + timedelta(seconds=4)) is None  # too early
    decision = decide(canary, current, figures, NOW + timedelta(seconds=5))
    assert decision is not None and (decision.step, decision.share) == (1, 25)
    assert decision.state is RolloutState.PROGRESSING


def test_waits_without_enough_fresh_reports() -> None:
    policy, canary = canary_of()
    current = start(canary, NOW)
    stale = [reading("a"), reading("b", age=60)]
    figures = measure(canary, canary_addresses(policy.spec), stale, frozenset(), 30)
    assert figures.reporters == 1
    assert decide(canary, current, figures, NOW + timedelta(seconds=10)) is None


@pytest.mark.parametrize(
    ("readings", "down", "why"),
    [
        ([reading("a", loss=0.5), reading("b")], frozenset(), "loss"),
        ([reading("a", latency=900), reading("b")], frozenset(), "latency"),
        ([reading("a"), reading("b")], frozenset({"127.0.20.3"}), "down by quorum"),
        ([Reading("a", "127.0.20.3", 0.0, None, "ejected", 1)], frozenset(), "ejected"),
    ],
)
def test_a_breach_rolls_back_at_once(
    readings: list[Reading], down: frozenset[str], why: str
) -> None:
    policy, canary = canary_of()
    current = Current(2, 50, RolloutState.PAUSED, None)  # paused still rolls back
    figures = measure(canary, canary_addresses(policy.spec), readings, down, 30)
    decision = decide(canary, current, figures, NOW)
    assert decision is not None and decision.share == 0
    assert decision.state is RolloutState.ROLLED_BACK and why in decision.reason


def test_the_last_step_completes_and_finished_rollouts_are_left_alone() -> None:
    policy, canary = canary_of()
    figures = measure(
        canary, canary_addresses(policy.spec), [reading("a"), reading("b")], frozenset(), 30
    )
    current = Current(2, 50, RolloutState.PROGRESSING, NOW)
    decision = decide(canary, current, figures, NOW)
    assert (
        decision is not None and decision.share == 100 and decision.state is RolloutState.COMPLETE
    )
    for state in (RolloutState.COMPLETE, RolloutState.ABORTED, RolloutState.PROMOTED):
        assert decide(canary, Current(3, 100, state, None), figures, NOW) is None


@pytest.mark.parametrize("state", [RolloutState.COMPLETE, RolloutState.PROMOTED])
def test_a_breach_at_100_still_rolls_back(state: RolloutState) -> None:
    """At 100 % the canary group carries everything: a breach there rolls back as at a step."""
    policy, canary = canary_of()
    broken = [reading("a", loss=0.5), reading("b")]
    figures = measure(canary, canary_addresses(policy.spec), broken, frozenset(), 30)
    decision = decide(canary, Current(2, 100, state, None), figures, NOW)
    assert decision is not None and (decision.share, decision.state) == (
        0,
        RolloutState.ROLLED_BACK,
    )
    assert "loss" in decision.reason


@pytest.mark.parametrize("state", [RolloutState.ROLLED_BACK, RolloutState.ABORTED])
def test_a_breach_at_0_changes_nothing(state: RolloutState) -> None:
    policy, canary = canary_of()
    broken = [reading("a", loss=0.5), reading("b")]
    figures = measure(canary, canary_addresses(policy.spec), broken, frozenset(), 30)
    assert decide(canary, Current(1, 0, state, None), figures, NOW) is None
