"""dnsmesh.health: EWMA, outlier ejection, max_ejection_percent, fail-open, mesh down, latency."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from dnsmesh.health import (
    ALPHA,
    DEAD_BAND,
    SCALE,
    EndpointHealth,
    OutlierRule,
    decide_weights,
    factor_level,
    latency_factor,
    level_factor,
)
from dnsmesh.policy import Health, Outlier, Policy, parse_policy

RULE = OutlierRule(consecutive_failures=3, base_ejection=10.0)


def policy(
    name: str,
    addresses: list[str],
    *,
    strategy: str = "weighted",
    weights: list[int] | None = None,
    outlier: dict[str, Any] | None = None,
) -> Policy:
    weights = weights or [1] * len(addresses)
    return parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": name},
            "spec": {
                "domain": f"{name}.mesh.test",
                "strategy": strategy,
                "endpoints": [
                    {"address": a, "weight": w} for a, w in zip(addresses, weights, strict=True)
                ],
                "health": {
                    "probe": {"type": "tcp", "port": 80, "interval": "1s"},
                    "outlier": outlier or {"consecutive_failures": 3, "base_ejection": "10s"},
                },
            },
        }
    )


def run(h: EndpointHealth, results: list[bool], now: float, step: float = 1.0) -> EndpointHealth:
    for ok in results:
        h = h.observe(ok, 0.01 if ok else None, now, RULE)
        now += step
    return h


def ejected_health() -> EndpointHealth:
    return run(EndpointHealth(), [False] * 3, 0.0)


# -- EWMA and counters ----------------------------------------------------------------------


def test_first_sample_is_the_estimate_then_the_ewma_moves_by_alpha() -> None:
    h = EndpointHealth().observe(True, 0.100, 0.0, RULE)
    assert h.latency == pytest.approx(0.100)
    h = h.observe(True, 0.200, 1.0, RULE)
    assert h.latency == pytest.approx(0.100 + ALPHA * 0.100)
    assert h.loss == 0.0
    h = h.observe(False, None, 2.0, RULE)
    assert h.loss == pytest.approx(ALPHA)
    assert h.latency == pytest.approx(0.100 + ALPHA * 0.100)  # failures do not move latency


def test_consecutive_counters_reset_on_the_other_outcome() -> None:
    h = run(EndpointHealth(), [False, False, True, True], 0.0)
    assert (h.consecutive_failures, h.consecutive_successes, h.samples) == (0, 2, 4)
    h = h.observe(False, None, 5.0, RULE)
    assert (h.consecutive_failures, h.consecutive_successes) == (1, 0)


def test_state_is_unknown_before_any_probe() -> None:
    assert EndpointHealth().state == "unknown"
    assert run(EndpointHealth(), [True], 0.0).state == "healthy"
    assert ejected_health().state == "ejected"


# -- ejection -------------------------------------------------------------------------------


def test_ejected_exactly_at_consecutive_failures() -> None:
    h = run(EndpointHealth(), [False, False], 0.0)
    assert not h.ejected
    h = h.observe(False, None, 2.0, RULE)
    assert h.ejected
    assert h.ejected_until == pytest.approx(2.0 + 10.0)
    assert h.times_ejected == 1


def test_a_success_in_between_starts_the_count_again() -> None:
    h = run(EndpointHealth(), [False, False, True, False, False], 0.0)
    assert not h.ejected


def test_an_ejected_endpoint_returns_on_the_first_success_after_its_time() -> None:
    h = ejected_health()  # ejected at t=2 until t=12
    h = h.observe(True, 0.01, 11.9, RULE)
    assert h.ejected, "a success before the ejection time is over does not end it"
    h = h.observe(False, None, 12.5, RULE)
    assert h.ejected, "still failing after the time: stays out"
    h = h.observe(True, 0.01, 13.0, RULE)
    assert not h.ejected
    assert h.state == "healthy"


def test_ejection_time_is_base_times_times_ejected() -> None:
    h = ejected_health()
    h = h.observe(True, 0.01, 12.0, RULE)  # back at 12
    h = run(h, [False] * 3, 13.0)  # ejected again at t=15
    assert h.times_ejected == 2
    assert h.ejected_until == pytest.approx(15.0 + 2 * 10.0)


def test_staying_healthy_for_base_ejection_forgives_one_ejection() -> None:
    h = ejected_health().observe(True, 0.01, 12.0, RULE)
    assert h.times_ejected == 1
    h = h.observe(True, 0.01, 21.0, RULE)
    assert h.times_ejected == 1
    h = h.observe(True, 0.01, 22.0, RULE)
    assert h.times_ejected == 0


def test_outlier_rules_merge_to_the_most_sensitive() -> None:
    merged = OutlierRule.merge(
        [
            OutlierRule.of(Health(outlier=Outlier(consecutive_failures=5, base_ejection=30))),
            OutlierRule.of(Health(fall=2, rise=3, outlier=Outlier(base_ejection=60))),
            OutlierRule.of(Health(rise=2)),
        ]
    )
    assert merged == OutlierRule(consecutive_failures=2, base_ejection=30.0, rise=1)
    assert OutlierRule.merge([]) == OutlierRule()
    assert OutlierRule.of(Health(rise=4)) == OutlierRule(5, 30.0, 4)


# -- per policy: ejection bound, fail-open, mesh down ---------------------------------------

A, B, C, D = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"


def test_an_ejected_endpoint_gets_weight_zero() -> None:
    p = policy("web", [A, B], weights=[3, 1])
    decision = decide_weights([p], {A: ejected_health()})
    assert decision.weights == {"web": {A: 0, B: 1}}
    assert decision.ejected == {"web": (A,)}
    assert decision.fail_open == ()


def test_healthy_endpoints_keep_the_configured_weights() -> None:
    p = policy("web", [A, B])
    decision = decide_weights([p], {A: run(EndpointHealth(), [True], 0.0)})
    assert decision.weights == {}


def test_max_ejection_percent_bounds_the_ejected_and_keeps_the_first_ejected() -> None:
    p = policy("web", [A, B, C, D], outlier={"consecutive_failures": 3, "max_ejection_percent": 50})
    health = {
        A: run(EndpointHealth(), [False] * 3, 5.0),
        B: run(EndpointHealth(), [False] * 3, 0.0),
        C: run(EndpointHealth(), [False] * 3, 10.0),
    }
    decision = decide_weights([p], health)
    assert sorted(a for a, w in decision.weights["web"].items() if w == 0) == [A, B]
    assert decision.weights["web"][C] == 1, "the third ejection would pass 50 %"
    assert decision.fail_open == ()
    # More failures of the kept one, or of the ejected ones, do not rotate who is kept.
    for step in range(5):
        health = {a: h.observe(False, None, 20.0 + step, RULE) for a, h in health.items()}
        again = decide_weights([p], health)
        assert again.weights == decision.weights


def test_max_ejection_percent_zero_never_ejects() -> None:
    p = policy("web", [A, B], outlier={"max_ejection_percent": 0})
    assert decide_weights([p], {A: ejected_health()}).weights == {}


def test_all_unhealthy_fails_open_to_the_configured_weights() -> None:
    p = policy("web", [A, B], weights=[2, 1], outlier={"max_ejection_percent": 100})
    decision = decide_weights([p], {A: ejected_health(), B: ejected_health()})
    assert decision.weights == {}
    assert decision.fail_open == ("web",)


def test_mesh_down_counts_as_ejected_for_an_agent_that_never_probed() -> None:
    p = policy("web", [A, B, C])
    decision = decide_weights([p], {}, down=frozenset({B}))
    assert decision.weights == {"web": {A: 1, B: 0, C: 1}}


def test_mesh_down_is_bounded_and_fails_open_too() -> None:
    p = policy("web", [A, B, C, D])  # default max_ejection_percent 50
    decision = decide_weights([p], {}, down=frozenset({A, B, C}))
    assert sum(1 for w in decision.weights["web"].values() if w == 0) == 2
    everything = decide_weights([p], {}, down=frozenset({A, B, C, D}))
    assert everything.fail_open == ("web",)
    assert everything.weights == {}


def test_local_and_mesh_verdicts_together_eject_the_doubly_bad_first() -> None:
    p = policy("web", [A, B, C, D], outlier={"max_ejection_percent": 25})
    decision = decide_weights([p], {C: ejected_health()}, down=frozenset({B, C}))
    assert [a for a, w in decision.weights["web"].items() if w == 0] == [C]


# -- latency-weighted -------------------------------------------------------------------------


def measured(latency: float, loss_failures: int = 0, samples: int = 10) -> EndpointHealth:
    h = EndpointHealth()
    for i in range(samples):
        h = h.observe(True, latency, float(i), OutlierRule(1000, 1.0))
    for i in range(loss_failures):
        h = h.observe(False, None, float(samples + i), OutlierRule(1000, 1.0))
    return h


def test_no_measurement_means_the_configured_weight() -> None:
    p = policy("web", [A, B], strategy="latency-weighted", weights=[3, 1])
    assert decide_weights([p], {}).weights == {}
    one = decide_weights([p], {A: measured(0.001)}).weights["web"]
    assert one == {A: 3 * SCALE, B: 1 * SCALE}


def test_a_slow_endpoint_gets_far_less_than_a_fast_one() -> None:
    p = policy("web", [A, B], strategy="latency-weighted")
    weights = decide_weights([p], {A: measured(0.001), B: measured(0.200)}).weights["web"]
    assert weights[A] == SCALE
    assert weights[B] <= SCALE // 20


def test_close_endpoints_both_keep_full_weight() -> None:
    p = policy("web", [A, B], strategy="latency-weighted", weights=[1, 2])
    weights = decide_weights([p], {A: measured(0.010), B: measured(0.0115)}).weights["web"]
    assert weights == {A: SCALE, B: 2 * SCALE}


def test_latency_does_not_touch_a_weighted_policy() -> None:
    p = policy("web", [A, B])
    assert decide_weights([p], {A: measured(0.001), B: measured(0.5)}).weights == {}


def test_loss_scales_down_beyond_its_floor() -> None:
    assert latency_factor(0.01, 0.01, 0.04) == 1.0
    assert latency_factor(0.01, 0.01, 0.5) < 0.6
    assert latency_factor(0.01, 0.01, 1.0) == pytest.approx(0.01)  # the floor F_MIN


def test_factor_is_one_inside_the_dead_band_and_continuous_after() -> None:
    best = 0.010
    edge = (best + 0.005) * (1 + DEAD_BAND) - 0.005
    assert latency_factor(edge - 1e-6, best, 0.0) == 1.0
    assert latency_factor(edge + 1e-6, best, 0.0) == pytest.approx(1.0, abs=1e-3)
    assert latency_factor(edge * 2, best, 0.0) < 0.7


def test_level_has_hysteresis_around_a_boundary() -> None:
    # Between level 1 (0.8) and level 2 (0.64) the midpoint is at 0.8**1.5 ~ 0.716.
    assert factor_level(0.72) == 1
    assert factor_level(0.71) == 2
    assert factor_level(0.71, previous=1) == 1, "just past the midpoint: keep the level"
    assert factor_level(0.72, previous=2) == 2
    assert factor_level(0.60, previous=1) == 2, "well past: move"
    assert factor_level(0.95, previous=2) == 0
    assert level_factor(0) == 1.0


def test_two_close_noisy_endpoints_never_flap() -> None:
    """A stability check: 2,000 noisy probes of two endpoints 5 % apart change nothing."""
    rng = random.Random(7)
    p = policy("web", [A, B], strategy="latency-weighted")
    health = {A: EndpointHealth(), B: EndpointHealth()}
    rule = OutlierRule(1000, 1.0)
    levels = None
    seen = set()
    for i in range(1000):
        health[A] = health[A].observe(True, rng.gauss(0.010, 0.002), float(i), rule)
        health[B] = health[B].observe(True, rng.gauss(0.0105, 0.002), float(i), rule)
        decision = decide_weights([p], health, previous=levels)
        levels = decision.levels
        seen.add(tuple(sorted(decision.weights["web"].items())))
    assert seen == {((A, SCALE), (B, SCALE))}


def test_a_latency_step_settles_to_one_level_without_oscillating() -> None:
    """B goes from 10 ms to 40 ms: its weight falls within a few probes, then stays put."""
    rng = random.Random(11)
    p = policy("web", [A, B], strategy="latency-weighted")
    rule = OutlierRule(1000, 1.0)
    health = {A: EndpointHealth(), B: EndpointHealth()}
    levels = None
    history = []
    for i in range(300):
        b = 0.010 if i < 100 else 0.040
        health[A] = health[A].observe(True, rng.gauss(0.010, 0.001), float(i), rule)
        health[B] = health[B].observe(True, rng.gauss(b, 0.001), float(i), rule)
        decision = decide_weights([p], health, previous=levels)
        levels = decision.levels
        history.append(decision.weights["web"][B])
    assert set(history[:100]) == {SCALE}
    settled = history[130:]
    assert len(set(settled)) == 1
    assert settled[0] < SCALE * 0.6
    changes = sum(1 for x, y in itertools.pairwise(history) if x != y)
    assert changes <= 8, "the descent is monotonic and short"
