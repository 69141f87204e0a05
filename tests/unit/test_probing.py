"""Coordinated probing's assignment (dnsmesh.probing): budget, spread, stability."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from agent.probes.scope import ProbeScope
from controller.services.probe_assignment import same
from controller.services.report_history import HistorySampler
from dnsmesh import probing, protocol
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.probing import Assignment, ProbingAgent, assign, budget_error, pick


def policy(
    name: str, addresses: list[str], *, per_endpoint: int | None = None, probe: bool = True
) -> Policy:
    health: dict[str, object] = {}
    if probe:
        health["probe"] = {"type": "tcp", "port": 80, "interval": "1s", "timeout": "1s"}
    if per_endpoint is not None:
        health["probes_per_endpoint"] = per_endpoint
    return parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": name},
            "spec": {
                "domain": f"{name}.mesh.internal",
                "endpoints": [{"address": a, "weight": 1} for a in addresses],
                "health": health,
            },
        }
    )


ADDRESSES = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)]
FLEET = [ProbingAgent(f"agent-{i:03}", f"zone-{i % 3}") for i in range(30)]


def test_each_address_gets_its_budget_of_agents_spread_across_zones() -> None:
    result = assign([policy("web", ADDRESSES)], FLEET, 3)
    assert sorted(result) == sorted(ADDRESSES)
    zones = {a.agent_id: a.zone for a in FLEET}
    for agents in result.values():
        assert len(agents) == 3
        assert {zones[a] for a in agents} == {"zone-0", "zone-1", "zone-2"}


def test_the_load_is_spread_over_the_agents() -> None:
    result = assign([policy("web", ADDRESSES)], FLEET, 3)
    load = Counter(a for agents in result.values() for a in agents)
    assert len(load) > 20  # 300 slots over 30 agents: rendezvous spreads them
    assert max(load.values()) <= 25


def test_agents_without_the_label_count_as_one_zone() -> None:
    agents = [ProbingAgent("a"), ProbingAgent("b"), ProbingAgent("c", "east")]
    for address in ADDRESSES[:20]:
        picked = pick(address, agents, 2)
        assert "c" in picked  # two zones, two probers: one from each


def test_a_joining_agent_moves_only_its_own_assignments() -> None:
    policies = [policy("web", ADDRESSES)]
    before = assign(policies, FLEET, 3)
    after = assign(policies, [*FLEET, ProbingAgent("agent-new", "zone-1")], 3)
    for address in probing.moved(before, after):
        assert "agent-new" in after[address]
        assert len(set(before[address]) - set(after[address])) == 1
    assert 0 < len(probing.moved(before, after)) < 30


def test_a_leaving_agent_frees_only_its_own_assignments() -> None:
    policies = [policy("web", ADDRESSES)]
    before = assign(policies, FLEET, 3)
    gone = "agent-007"
    after = assign(policies, [a for a in FLEET if a.agent_id != gone], 3)
    moved = probing.moved(before, after)
    assert moved == sorted(a for a, agents in before.items() if gone in agents)
    for address in moved:
        assert set(before[address]) - set(after[address]) == {gone}


def test_a_budget_at_least_the_agents_assigns_nothing_so_all_probe() -> None:
    agents = FLEET[:3]
    assert assign([policy("web", ADDRESSES)], agents, 3) == {}
    assert assign([policy("web", ADDRESSES)], agents, 5) == {}
    assert all(len(v) == 2 for v in assign([policy("web", ADDRESSES)], agents, 2).values())


def test_zero_and_the_per_policy_override() -> None:
    a, b = ADDRESSES[:2]
    result = assign(
        [policy("one", [a], per_endpoint=1), policy("all", [b], per_endpoint=0)], FLEET, 3
    )
    assert list(result) == [a] and len(result[a]) == 1
    # An address in two policies: the larger budget; 0 (every agent) wins over any.
    both = assign([policy("x", [a], per_endpoint=1), policy("y", [a], per_endpoint=4)], FLEET, 3)
    assert len(both[a]) == 4
    assert (
        assign([policy("x", [a], per_endpoint=1), policy("y", [a], per_endpoint=0)], FLEET, 3) == {}
    )
    assert assign([policy("web", ADDRESSES)], FLEET, 0) == {}


def test_unprobed_policies_and_shadowing_agents_are_left_out() -> None:
    assert assign([policy("web", ADDRESSES, probe=False)], FLEET, 1) == {}
    agents = [ProbingAgent("a", shadowed=frozenset({"web"})), ProbingAgent("b"), ProbingAgent("c")]
    result = assign([policy("web", ADDRESSES[:10])], agents, 1)
    assert all(agents_ != ("a",) for agents_ in result.values())


def test_the_quorum_floor_raises_a_small_budget() -> None:
    result = assign([policy("web", ADDRESSES[:5], per_endpoint=1)], FLEET, 3, floor=2)
    assert all(len(v) == 2 for v in result.values())
    assert budget_error(2, 1) is not None
    assert budget_error(2, 3) is None and budget_error(5, 0) is None


def test_the_assignment_travels_in_snapshots_deltas_and_the_state_file() -> None:
    assignment = Assignment(
        {"10.0.0.1": ("a", "b")}, {"10.0.0.1": {"east": 4.0, "west": 9.0}}, "rack"
    )
    snapshot = protocol.build_snapshot(3, [], probers=assignment)
    state = protocol.decode_state(
        protocol.encode_state(protocol.apply_update(protocol.AppliedState.empty(), snapshot))
    )
    assert state.probers == assignment
    delta = protocol.build_delta(3, 4, [], probers=Assignment())
    assert protocol.apply_update(state, delta).probers == Assignment()
    unchanged = protocol.build_delta(3, 4, [])
    assert protocol.apply_update(state, unchanged).probers == assignment


def test_an_agent_probes_its_own_and_borrows_its_zones_latency() -> None:
    assignment = Assignment(
        {"10.0.0.1": ("a",), "10.0.0.2": ("b",)},
        {"10.0.0.2": {"east": 4.0, "west": 10.0, "north": 20.0}},
    )
    scope = ProbeScope(lambda: assignment, {"zone": "east"}, "a")
    assert scope.probes("10.0.0.1") and not scope.probes("10.0.0.2")
    assert scope.probes("10.0.0.9")  # nobody assigned: everybody probes
    borrowed = scope.borrowed(["10.0.0.1", "10.0.0.2", "10.0.0.9"])
    assert list(borrowed) == ["10.0.0.2"]
    assert borrowed["10.0.0.2"].latency == pytest.approx(0.004)
    elsewhere = ProbeScope(lambda: assignment, {"zone": "south"}, "a").borrowed(["10.0.0.2"])
    assert elsewhere["10.0.0.2"].latency == pytest.approx(0.010)  # the zones' median
    assert ProbeScope(lambda: assignment).probes("10.0.0.2")  # no id yet: everything


def test_small_latency_moves_are_no_news() -> None:
    stored = Assignment({"x": ("a",)}, {"x": {"east": 10.0}})
    assert same(stored, Assignment({"x": ("a",)}, {"x": {"east": 12.0}}))
    assert not same(stored, Assignment({"x": ("a",)}, {"x": {"east": 14.0}}))
    assert not same(stored, Assignment({"x": ("b",)}, {"x": {"east": 10.0}}))


def test_history_keeps_a_row_per_window_or_change_with_the_probes_summed() -> None:
    sampler = HistorySampler(30)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def row(seconds: float, state: str = "healthy") -> dict[str, object]:
        return {
            "agent_id": "a",
            "address": "10.0.0.1",
            "state": state,
            "samples": 5,
            "reported_at": start + timedelta(seconds=seconds),
        }

    kept = [sampler.keep(row(t)) for t in range(0, 60, 5)]  # a report every 5 s for 60 s
    rows = [r for r in kept if r is not None]
    assert len(rows) == 2
    assert rows[1]["samples"] == 5 + 5 * 5  # the five reports it skipped, then its own
    changed = sampler.keep(row(61, "ejected"))
    assert changed is not None and changed["state"] == "ejected"


def test_the_controller_refuses_a_budget_its_quorum_cannot_use() -> None:
    import argparse

    from controller.server import health_settings
    from dnsmesh.errors import ConfigError

    def args(**changed: object) -> argparse.Namespace:
        values: dict[str, object] = {
            "quorum_min_agents": 2,
            "quorum_fail_loss": 0.5,
            "quorum_recover_loss": 0.2,
            "report_stale_after": 30.0,
            "report_retention": 3600.0,
            "report_history_window": 30.0,
            "probes_per_endpoint": 3,
            "probe_spread_label": "zone",
            "probe_reassign_delay": 2.0,
        }
        values.update(changed)
        return argparse.Namespace(**values)

    settings = health_settings(args())
    assert settings.probing.per_endpoint == 3 and settings.probing.min_agents == 2
    with pytest.raises(ConfigError, match="--quorum-min-agents 2 is more than"):
        health_settings(args(probes_per_endpoint=1))
    assert health_settings(args(probes_per_endpoint=0)).probing.per_endpoint == 0
    with pytest.raises(ConfigError, match="--probes-per-endpoint"):
        health_settings(args(probes_per_endpoint=-1))
    with pytest.raises(ConfigError, match="--report-history-window"):
        health_settings(args(report_history_window=-1))


def test_coordination_is_off_only_when_no_address_has_a_budget() -> None:
    unprobed = policy("plain", ADDRESSES[:2], probe=False)
    probed = policy("probed", ADDRESSES[:2])
    assert not probing.coordinated([unprobed], 3), "no probes: nothing to assign"
    assert not probing.coordinated([probed], 0), "--probes-per-endpoint 0: every agent probes"
    assert probing.coordinated([probed], 3)
    assert probing.coordinated([policy("asks", ADDRESSES[:1], per_endpoint=2)], 0)
    assert not probing.coordinated([policy("all", ADDRESSES[:1], per_endpoint=0)], 3)
