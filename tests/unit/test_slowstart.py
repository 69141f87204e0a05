"""Slow start without sockets: which endpoints ramp, the ramp's shape, the weights it gives."""

from __future__ import annotations

from typing import Any

import pytest

import dnsmesh.slowstart
from dnsmesh.errors import PolicyError
from dnsmesh.explain import explain
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.slowstart import (
    FLOOR,
    NOT_STARTED,
    SCALE,
    Ramps,
    Serving,
    fraction,
    ramped,
    track,
)
from dnsmesh.snapshot import CompiledPolicy
from tests.support.policies import policy_doc

A, B, C = "127.0.20.1", "127.0.20.2", "127.0.20.3"


def web(addresses: list[str], *, slow_start: Any = 10, weight: int = 1, **spec: Any) -> Policy:
    health: dict[str, Any] = {} if slow_start is None else {"health": {"slow_start": slow_start}}
    endpoints = [{"address": a, "weight": weight} for a in addresses]
    return parse_policy(policy_doc("web", endpoints, **health, **spec))


def started(*policies: Policy, at: float = 0.0) -> Ramps:
    """The ramps after the agent started with ``policies``."""
    return track(NOT_STARTED, policies, {}, frozenset(), at)


def test_the_ramp_is_linear_from_the_floor_to_full() -> None:
    assert fraction(0, 10) == FLOOR == 0.1
    assert fraction(5, 10) == pytest.approx(0.55)
    assert fraction(9.99, 10) == pytest.approx(0.999, abs=1e-3)
    assert fraction(10, 10) == 1.0
    assert fraction(3600, 10) == 1.0
    assert fraction(-1, 10) == FLOOR  # a clock read before the ramp began: its start
    assert fraction(0, 0) == 1.0  # off


def test_what_the_agent_starts_with_does_not_ramp() -> None:
    ramps = started(web([A, B]))
    assert not ramps.active
    assert ramps.in_service("web") == frozenset({A, B})


def test_an_endpoint_added_by_a_change_ramps_the_others_do_not() -> None:
    ramps = track(started(web([A, B])), [web([A, B, C])], {}, frozenset(), 100.0)
    assert ramps.active
    assert ramps.fractions("web", 100.0) == {C: FLOOR}
    assert ramps.fractions("web", 105.0) == {C: pytest.approx(0.55)}
    assert ramps.fractions("web", 110.0) == {}  # done: its whole weight


def test_a_policy_new_to_the_agent_does_not_ramp() -> None:
    other = parse_policy(policy_doc("other", [{"address": A}], health={"slow_start": 10}))
    ramps = track(started(web([B])), [web([B]), other], {}, frozenset(), 5.0)
    assert not ramps.active


def test_no_window_no_ramp() -> None:
    for off in (None, 0, "0s"):
        ramps = track(
            started(web([A], slow_start=off)), [web([A, B], slow_start=off)], {}, frozenset(), 1
        )
        assert not ramps.active


def test_an_endpoint_back_from_ejection_ramps_from_its_return() -> None:
    policy = web([A, B])
    ramps = started(policy)
    ejected = track(ramps, [policy], {"web": {A: 0, B: 1}}, frozenset(), 10.0)
    assert not ejected.active and ejected.in_service("web") == frozenset({B})
    back = track(ejected, [policy], {}, frozenset(), 40.0)
    assert back.fractions("web", 40.0) == {A: FLOOR}
    # Tracked again later (every refresh), the ramp keeps its start.
    later = track(back, [policy], {}, frozenset(), 45.0)
    assert later.fractions("web", 45.0) == {A: pytest.approx(0.55)}
    # Out again mid-ramp, and back: it starts again.
    out = track(later, [policy], {"web": {A: 0, B: 1}}, frozenset(), 46.0)
    assert not out.active
    again = track(out, [policy], {}, frozenset(), 50.0)
    assert again.fractions("web", 50.0) == {A: FLOOR}


def test_servfail_is_out_of_service_for_every_endpoint() -> None:
    policy = web([A, B])
    down = track(started(policy), [policy], {}, frozenset({"web"}), 1.0)
    assert down.in_service("web") == frozenset()
    back = track(down, [policy], {}, frozenset(), 2.0)
    assert back.fractions("web", 2.0) == {A: FLOOR, B: FLOOR}


def test_a_standby_of_weight_zero_is_not_in_service() -> None:
    zero = parse_policy(policy_doc("web", [{"address": A}, {"address": B, "weight": 0}]))
    assert started(zero).in_service("web") == frozenset({A})


def test_a_finished_ramp_is_dropped_and_an_edit_takes_the_new_window() -> None:
    ramps = track(started(web([A])), [web([A, B], slow_start=10)], {}, frozenset(), 0.0)
    shorter = track(ramps, [web([A, B], slow_start=4)], {}, frozenset(), 2.0)
    assert shorter.fractions("web", 2.0) == {B: pytest.approx(0.1 + 0.9 * 2 / 4)}
    done = track(shorter, [web([A, B], slow_start=4)], {}, frozenset(), 4.0)
    assert not done.active


def test_ramped_weights_scale_the_policy_and_ramp_the_newcomer() -> None:
    before, after = web([A, B], weight=3), web([A, B, C], weight=3)
    ramps = track(started(before), [after], {}, frozenset(), 0.0)
    weights, fractions = ramped(ramps, [after], {}, 5.0)
    assert weights == {"web": {A: 3 * SCALE, B: 3 * SCALE, C: round(3 * SCALE * 0.55)}}
    assert fractions == {"web": {C: pytest.approx(0.55)}}
    # Done: what health decided (here the configured weights, so nothing).
    assert ramped(ramps, [after], {}, 10.0) == ({}, {})


def test_ramped_keeps_what_health_decided_for_the_others() -> None:
    before, after = web([A, B]), web([A, B, C])
    ramps = track(started(before), [after], {"web": {A: 0, B: 1, C: 1}}, frozenset(), 0.0)
    weights, _ = ramped(ramps, [after], {"web": {A: 0, B: 1, C: 1}}, 0.0)
    assert weights == {"web": {A: 0, B: SCALE, C: round(SCALE * FLOOR)}}


def test_a_weight_of_one_still_ramps_and_never_reaches_zero() -> None:
    ramps = Ramps({"web": {A: (0.0, 3600.0)}}, Serving())
    weights, _ = ramped(ramps, [web([A, B])], {}, 0.0)
    assert weights["web"][A] == round(SCALE * FLOOR) >= 1


def test_the_share_explained_follows_the_ramp() -> None:
    """The ramped weights compiled give the newcomer w*f/(w*f + others) of the answers,
    and explain shows the fraction beside the candidate."""
    before, after = web([A, B]), web([A, B, C])
    ramps = track(started(before), [after], {}, frozenset(), 0.0)
    weights, fractions = ramped(ramps, [after], {}, 0.0)
    compiled = CompiledPolicy(after, 2, weights["web"])
    told = explain(compiled, "127.0.0.1", source="agent", ramp=fractions["web"])
    assert told.distribution["A"].shares[C] == pytest.approx(0.1 / 2.1)
    by_address = {c.address: c for c in told.candidates}
    assert by_address[C].slow_start == pytest.approx(FLOOR)
    assert by_address[A].slow_start is None


@pytest.mark.parametrize("bad", [-1, 3601, "2h", "soon"])
def test_slow_start_outside_0_to_3600_seconds_is_refused(bad: Any) -> None:
    with pytest.raises(PolicyError) as caught:
        web([A], slow_start=bad)
    assert "spec.health.slow_start" in str(caught.value)


def test_slow_start_round_trips_and_is_absent_when_unset() -> None:
    assert web([A], slow_start="90s").spec.health is not None
    assert web([A], slow_start="90s").to_document()["spec"]["health"]["slow_start"] == "90s"
    assert "health" not in web([A], slow_start=None).to_document()["spec"]


def test_a_step_reads_every_ramp_at_its_multiples_only() -> None:
    """With step 1 s the weights are the same anywhere within a second, so deciding again
    (every probe result) compiles nothing new; at the next multiple they move."""
    before, after = web([A, B]), web([A, B, C])
    ramps = track(started(before), [after], {}, frozenset(), 2.3)
    at_start, shares = ramped(ramps, [after], {}, 2.3, step=1.0)
    assert shares == {"web": {C: FLOOR}}  # read at 2.0, before it began: its start
    assert ramped(ramps, [after], {}, 2.99, step=1.0)[0] == at_start
    moved, shares = ramped(ramps, [after], {}, 3.0, step=1.0)
    assert shares == {"web": {C: pytest.approx(0.1 + 0.9 * 0.7 / 10)}}
    assert moved != at_start


def test_a_window_set_by_the_same_edit_that_adds_an_endpoint_ramps_it() -> None:
    """What a policy without slow start had in service is worked out only when an edit
    gives it a window, and then from the policy as it was."""
    ramps = track(started(web([A], slow_start=None)), [web([A, B])], {}, frozenset(), 1.0)
    assert ramps.fractions("web", 1.0) == {B: FLOOR}


def test_tracking_only_the_changed_names_keeps_the_others_as_tracked() -> None:
    """An incremental decision (one policy of many changed) tracks that one alone: the
    others keep what was in service and their ramps in progress; a finished one is dropped."""
    other = parse_policy(
        policy_doc("other", [{"address": A}, {"address": B}], health={"slow_start": 10})
    )
    ramps = track(started(web([A]), other), [web([A, B]), other], {}, frozenset(), 0.0)
    assert ramps.fractions("web", 0.0) == {B: FLOOR}
    edited = parse_policy(
        policy_doc(
            "other", [{"address": A}, {"address": B}, {"address": C}], health={"slow_start": 10}
        )
    )
    later = track(ramps, [edited], {}, frozenset(), 5.0, only=frozenset({"other"}))
    assert later.fractions("web", 5.0) == {B: pytest.approx(0.55)}  # kept, not re-tracked
    assert later.fractions("other", 5.0) == {C: FLOOR}
    assert later.in_service("web") == frozenset({A, B})
    done = track(later, [edited], {}, frozenset(), 12.0, only=frozenset({"other"}))
    assert "web" not in done.started  # its ramp finished at 10 s
    removed = track(done, [], {}, frozenset(), 13.0, only=frozenset({"other"}))
    assert removed.in_service("other") is None


def test_incremental_decisions_share_the_table_and_fold_it_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change of one policy among many copies a small layer, not the whole table, and
    leaves the decision before it as it was; the layer is folded into a new base when it
    grows past FOLD_AFTER names, with the removed names gone."""
    monkeypatch.setattr(dnsmesh.slowstart, "FOLD_AFTER", 3)
    names = [f"p{i}" for i in range(5)]
    first = {n: parse_policy(policy_doc(n, [{"address": A}])) for n in names}
    start = started(*first.values())
    assert start.serving is not None
    base = start.serving.base
    edited = {n: parse_policy(policy_doc(n, [{"address": B}])) for n in names}
    one = track(start, [edited["p0"]], {}, frozenset(), 1.0, only=frozenset({"p0"}))
    two = track(one, [edited["p1"]], {}, frozenset(), 2.0, only=frozenset({"p1"}))
    assert one.serving is not None and two.serving is not None
    assert one.serving.base is base and two.serving.base is base  # shared, not copied
    assert start.in_service("p0") == {A} and one.in_service("p0") == {B}
    assert one.in_service("p1") == {A} and two.in_service("p1") == {B}
    gone = track(two, [], {}, frozenset(), 3.0, only=frozenset({"p2"}))  # p2 removed
    assert gone.serving is not None and gone.serving.base is not base  # 3 names: folded
    assert gone.serving.layer == {} and "p2" not in gone.serving.base
    assert gone.in_service("p2") is None and two.in_service("p2") == {A}
    assert [gone.in_service(n) for n in ("p0", "p1", "p3")] == [{B}, {B}, {A}]
