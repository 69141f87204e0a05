"""Demand-driven slices, pure: the schema, the demand, the decisions and the compiled slice."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import dns.message
import pytest

from dnsmesh import explain as ex
from dnsmesh import protocol
from dnsmesh.dnswire import parse_query
from dnsmesh.errors import PolicyError
from dnsmesh.policy import Policy, Scale, parse_policy, scalable_endpoints
from dnsmesh.reweigh import reweigh
from dnsmesh.scaling import Demand, ScaleRule, decide, demand_of, scaled_members
from dnsmesh.snapshot import CompiledPolicy, compile_snapshot

EDGE = "127.0.0.0/8"


def doc(scale: dict[str, Any] | None, groups: list[str] | None = None) -> dict[str, Any]:
    slice_: dict[str, Any] = {"id": "edge", "match": {"client_cidrs": [EDGE]}}
    if groups is not None:
        slice_["groups"] = groups
    if scale is not None:
        slice_["scale"] = scale
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": {"name": "web"},
        "spec": {
            "domain": "web.mesh.internal",
            "endpoints": [
                # written out of order: the stable order is priority, then address
                {"address": "127.0.30.4", "group": "pool", "priority": 0},
                {"address": "127.0.30.2", "group": "pool", "priority": 1},
                {"address": "127.0.30.3", "group": "pool", "priority": 0},
                {"address": "127.0.30.1", "group": "pool", "priority": 0},
                {"address": "127.0.30.9", "group": "pool", "weight": 0},
                {"address": "127.0.31.1", "group": "other"},
            ],
            "slices": [slice_],
        },
    }


SCALE = {"min": 1, "max": 4, "target_qps_per_endpoint": 100}
RULE = ScaleRule(window_s=30, hold_s=60, headroom=0.8, step_up=1, step_down=1)


def fields_of(document: dict[str, Any]) -> set[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(document)
    return {e.path for e in caught.value.errors}


# -- the schema -------------------------------------------------------------------------------


def test_a_slice_takes_a_scale() -> None:
    policy = parse_policy(doc(SCALE, ["pool"]))
    scale = policy.spec.slices[0].scale
    assert scale == Scale(min=1, max=4, target_qps_per_endpoint=100)
    assert policy.to_document()["spec"]["slices"][0]["scale"]["max"] == 4


@pytest.mark.parametrize(
    ("scale", "field"),
    [
        ({**SCALE, "max": 5}, "spec.slices[0].scale.max"),  # 4 pool endpoints answer
        ({**SCALE, "min": 3, "max": 2}, "spec.slices[0].scale.min"),
        ({**SCALE, "min": 0}, "spec.slices[0].scale.min"),
        ({**SCALE, "target_qps_per_endpoint": 0}, "spec.slices[0].scale.target_qps_per_endpoint"),
        ({"min": 1, "target_qps_per_endpoint": 10}, "spec.slices[0].scale.max"),
        ({**SCALE, "cooldown": 3}, "spec.slices[0].scale.cooldown"),
    ],
)
def test_a_bad_scale_is_refused_naming_the_field(scale: dict[str, Any], field: str) -> None:
    assert field in fields_of(doc(scale, ["pool"]))


def test_a_slice_without_groups_scales_over_every_endpoint() -> None:
    assert parse_policy(doc({**SCALE, "max": 5})).spec.slices[0].scale is not None
    assert "spec.slices[0].scale.max" in fields_of(doc({**SCALE, "max": 6}))


def test_a_refusing_slice_takes_no_scale() -> None:
    document = doc(SCALE)
    document["spec"]["slices"][0]["action"] = "refuse"
    assert "spec.slices[0].scale" in fields_of(document)


def test_the_stable_order_is_priority_then_address_without_weight_zero() -> None:
    policy = parse_policy(doc(SCALE, ["pool"]))
    order = [str(e.address) for e in scalable_endpoints(policy.spec.endpoints, ["pool"])]
    assert order == ["127.0.30.1", "127.0.30.3", "127.0.30.4", "127.0.30.2"]
    slice_ = policy.spec.slices[0]
    assert scaled_members(policy.spec.endpoints, slice_, 2) == {"127.0.30.1", "127.0.30.3"}
    assert scaled_members(policy.spec.endpoints, slice_, None) == {"127.0.30.1"}  # min
    assert scaled_members(policy.spec.endpoints, slice_, 99) == set(order)  # within max


# -- demand -----------------------------------------------------------------------------------


def test_demand_spans_the_partly_filled_bucket() -> None:
    # 10 s buckets, now 5 s into the bucket at 1000: the window is 970..1005, 35 s.
    buckets = {970: 1000.0, 980: 1000.0, 990: 1000.0, 1000: 500.0}
    demand = demand_of(buckets, 1005.0, 10, RULE)
    assert demand.qps == pytest.approx(3500 / 35)
    assert demand.peak_qps == pytest.approx(100.0)


def test_the_peak_is_the_busiest_window_within_the_hold() -> None:
    # a burst 40 s ago, quiet since: recent ~0, the peak remembers the burst
    buckets = {960: 9000.0}
    demand = demand_of(buckets, 1000.0, 10, RULE)
    assert demand.qps == 0.0
    assert demand.peak_qps == pytest.approx(300.0)
    # past the hold it is forgotten
    assert demand_of(buckets, 1100.0, 10, RULE).peak_qps == 0.0


# -- decisions --------------------------------------------------------------------------------

S = Scale(min=1, max=4, target_qps_per_endpoint=100)


def test_up_one_step_when_above_count_times_target() -> None:
    assert decide(S, 1, Demand(100.0, 100.0), 0.0, RULE) is None  # at the bar: enough
    up = decide(S, 1, Demand(350.0, 350.0), 0.0, RULE)
    assert up is not None and up.count == 2 and "350.0 qps" in up.reason
    bigger = decide(S, 1, Demand(350.0, 350.0), 0.0, ScaleRule(step_up=8))
    assert bigger is not None and bigger.count == 4  # what it needs, no more than max
    assert decide(S, 4, Demand(9999.0, 9999.0), 0.0, RULE) is None  # at max


def test_down_only_below_the_headroom_bar_for_the_hold() -> None:
    # count 3: down only when the peak is below 2 x 100 x 0.8 = 160
    assert decide(S, 3, Demand(170.0, 170.0), 999.0, RULE) is None  # hysteresis band
    assert decide(S, 3, Demand(10.0, 10.0), 59.0, RULE) is None  # the hold since the change
    assert decide(S, 3, Demand(10.0, 200.0), 999.0, RULE) is None  # a peak in the hold
    down = decide(S, 3, Demand(10.0, 10.0), 60.0, RULE)
    assert down is not None and down.count == 2 and "for 60 s" in down.reason
    fast = decide(S, 4, Demand(0.0, 0.0), 60.0, ScaleRule(hold_s=60, step_down=8))
    assert fast is not None and fast.count == 1  # min
    assert decide(S, 1, Demand(0.0, 0.0), 999.0, RULE) is None  # at min


def test_a_count_outside_new_bounds_is_brought_in_at_once() -> None:
    narrow = Scale(min=2, max=3, target_qps_per_endpoint=100)
    assert decide(narrow, 4, Demand(0.0, 0.0), 0.0, RULE) == decide(
        narrow, 4, Demand(9999.0, 9999.0), 0.0, RULE
    )
    raised = decide(narrow, 1, Demand(0.0, 0.0), 0.0, RULE)
    assert raised is not None and raised.count == 2


def test_no_flapping_around_a_steady_rate() -> None:
    """A rate that wobbles around one boundary moves the count once, then holds it."""
    rng = random.Random(7)
    count, since_change = 1, 0.0
    changes = 0
    for _ in range(500):
        qps = 150.0 + rng.uniform(-40, 40)  # 110..190: needs 2, never below 2's down bar
        decision = decide(S, count, Demand(qps, qps + 20), since_change, RULE)
        since_change += 1.0
        if decision is not None:
            count, since_change, changes = decision.count, 0.0, changes + 1
    assert count == 2 and changes == 1


# -- the compiled slice -----------------------------------------------------------------------


def served(compiled: CompiledPolicy, rounds: int = 400) -> Counter[str]:
    query = parse_query(dns.message.make_query("web.mesh.internal", "A").to_wire())
    rng = random.Random(3)
    counted: Counter[str] = Counter()
    for i in range(rounds):
        response = compiled.respond(query, f"127.1.{i // 200}.{i % 200 + 1}", rng)
        counted[".".join(str(b) for b in response[-4:])] += 1
    return counted


def web() -> Policy:
    return parse_policy(doc(SCALE, ["pool"]))


def test_a_scaled_slice_answers_from_its_first_n_and_from_min_until_told() -> None:
    assert set(served(CompiledPolicy(web()))) == {"127.0.30.1"}
    three = CompiledPolicy(web(), slice_counts={"edge": 3})
    assert set(served(three)) == {"127.0.30.1", "127.0.30.3", "127.0.30.4"}
    # the counts reach the policy through compile_snapshot by policy name
    snap = compile_snapshot([web()], 5, slice_counts={"web": {"edge": 2}})
    assert set(served(snap.policies()[0])) == {"127.0.30.1", "127.0.30.3"}


def test_health_still_applies_within_the_first_n_and_survives_reweighing() -> None:
    snap = compile_snapshot([web()], 5, slice_counts={"web": {"edge": 2}})
    ejected = reweigh(snap, {"web": {"127.0.30.1": 0}})
    # the ejected one is not replaced by the third: the count says which endpoints serve
    assert set(served(ejected.policies()[0])) == {"127.0.30.3"}


def test_slice_scale_travels_in_snapshots_deltas_and_the_state_file() -> None:
    document = web().to_document()
    snapshot = protocol.build_snapshot(3, [document], slice_scale={"web": {"edge": 2}})
    state = protocol.apply_update(protocol.AppliedState.empty(), snapshot)
    assert state.slice_scale == {"web": {"edge": 2}}
    unchanged = protocol.build_delta(3, 4, [("web", document)])
    assert protocol.apply_update(state, unchanged).slice_scale == {"web": {"edge": 2}}
    moved = protocol.build_delta(3, 4, [], slice_scale={"web": {"edge": 4}})
    after = protocol.apply_update(state, moved)
    assert after.slice_scale == {"web": {"edge": 4}}
    assert protocol.decode_state(protocol.encode_state(after)).slice_scale == after.slice_scale
    wire = protocol.decode_message(protocol.encode_message(moved))
    assert isinstance(wire, protocol.Delta) and wire.slice_scale is not None


def test_explain_shows_the_scaled_count_and_its_candidates() -> None:
    compiled, _ = ex.compile_with_state(web(), 5, slice_counts={"edge": 2})
    explained = ex.explain(compiled, "127.0.0.9", source="test")
    assert explained.slice == "edge"
    assert {c.address for c in explained.candidates} == {"127.0.30.1", "127.0.30.3"}  # policy order
    assert "slice edge scales with demand: 2 of its endpoints answer (min 1, max 4)" in (
        explained.notes
    )


def test_the_controller_takes_the_scale_flags_and_refuses_bad_ones() -> None:
    from cli.main import build_parser
    from controller.server import share_settings
    from dnsmesh.errors import ConfigError

    def settings(*flags: str) -> ScaleRule:
        args = build_parser().parse_args(["controller", "--database", "sqlite://", *flags])
        return share_settings(args).scale

    assert settings() == ScaleRule(window_s=60, hold_s=300, step_up=2)
    assert settings("--scale-window", "10", "--scale-hold", "0").window_s == 10
    for bad in (["--scale-window", "0"], ["--scale-hold", "-1"], ["--scale-step-up", "0"]):
        with pytest.raises(ConfigError, match="--scale-window/--scale-hold/--scale-step-up"):
            settings(*bad)
