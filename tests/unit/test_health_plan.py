"""agent.probes.plan: one probe per address, merged from every policy that hands it out."""

from __future__ import annotations

from typing import Any

from agent.probes.plan import FALLBACK_PORT, build_plan
from dnsmesh.health import OutlierRule
from dnsmesh.policy import Policy, ProbeType, parse_policy


def policy(name: str, addresses: list[str], health: dict[str, Any] | None) -> Policy:
    spec: dict[str, Any] = {
        "domain": f"{name}.mesh.test",
        "endpoints": [{"address": a} for a in addresses],
    }
    if health is not None:
        spec["health"] = health
    return parse_policy(
        {"apiVersion": "dnsmesh/v1", "kind": "Policy", "metadata": {"name": name}, "spec": spec}
    )


def test_shared_address_is_probed_once_with_the_shortest_interval() -> None:
    a = policy(
        "a",
        ["10.0.0.1", "10.0.0.2"],
        {
            "probe": {"type": "tcp", "port": 443, "interval": "5s"},
            "outlier": {"consecutive_failures": 5, "base_ejection": "30s"},
        },
    )
    b = policy(
        "b",
        ["10.0.0.2"],
        {
            "probe": {"type": "http", "port": 8080, "path": "/healthz", "interval": "1s"},
            "outlier": {"consecutive_failures": 2, "base_ejection": "60s"},
        },
    )
    plan = build_plan([a, b])
    assert sorted(plan) == ["10.0.0.1", "10.0.0.2"]
    shared = plan["10.0.0.2"]
    assert (shared.type, shared.port, shared.path, shared.interval) == (
        ProbeType.HTTP,
        8080,
        "/healthz",
        1.0,
    )
    assert shared.rule == OutlierRule(consecutive_failures=2, base_ejection=30.0)
    assert plan["10.0.0.1"].type is ProbeType.TCP
    assert plan["10.0.0.1"].rule == OutlierRule(5, 30.0)


def test_policies_without_a_probe_are_not_probed() -> None:
    assert build_plan([policy("a", ["10.0.0.1"], None)]) == {}
    assert build_plan([policy("a", ["10.0.0.1"], {"outlier": {}})]) == {}


def test_icmp_falls_back_to_another_policys_port_or_80() -> None:
    icmp = {"probe": {"type": "icmp", "interval": "1s"}}
    alone = build_plan([policy("a", ["10.0.0.1"], icmp)])
    assert alone["10.0.0.1"].tcp_port == FALLBACK_PORT
    tcp = {"probe": {"type": "tcp", "port": 5432, "interval": "9s"}}
    shared = build_plan([policy("a", ["10.0.0.1"], icmp), policy("b", ["10.0.0.1"], tcp)])
    assert shared["10.0.0.1"].type is ProbeType.ICMP
    assert shared["10.0.0.1"].tcp_port == 5432


def test_period_is_the_longer_of_interval_and_timeout() -> None:
    p = policy("a", ["10.0.0.1"], {"probe": {"type": "icmp", "interval": 0.2, "timeout": 1}})
    assert build_plan([p])["10.0.0.1"].period == 1.0
