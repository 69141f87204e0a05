"""The Grafana dashboard asks only for series the code exports, and the names follow
Prometheus conventions (dnsmesh_ prefix, _total counters, _seconds units)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.registry import CollectorRegistry

from agent.config import AgentConfig
from agent.server import AgentServer
from controller.metrics import ControllerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dnsmesh.json"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
_NAME = re.compile(r"\bdnsmesh_[a-z0-9_]+")


def exported(registry: CollectorRegistry) -> dict[str, str]:
    """Every series name a registry can export (labelled ones before any sample too) ->
    its family's type."""
    names: dict[str, str] = {}
    for family in registry.collect():
        for suffix in _SUFFIXES[family.type]:
            names[family.name + suffix] = family.type
    return names


def every_exported() -> dict[str, str]:
    config = dataclasses.replace(AgentConfig(), admin_listen=None)
    agent = AgentServer(config, sync_state=lambda: None)  # with the sync families
    return {**exported(agent.metrics), **exported(ControllerMetrics().registry)}


def expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def test_the_dashboard_uses_only_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for expr in expressions(dashboard) for name in _NAME.findall(expr)}
    assert len(used) >= 20  # it does show the mesh
    unknown = used - set(every_exported())
    assert not unknown, f"the dashboard asks for series nobody exports: {sorted(unknown)}"


def test_the_required_series_exist_with_their_labels() -> None:
    config = dataclasses.replace(AgentConfig(), admin_listen=None)
    agent = AgentServer(config, sync_state=lambda: None)
    families = {f.name: f for f in agent.metrics.collect()}
    families.update({f.name: f for f in ControllerMetrics().registry.collect()})
    assert families["dnsmesh_agent_queries"].type == "counter"
    assert families["dnsmesh_agent_query_duration_seconds"].type == "histogram"
    for name in (
        "dnsmesh_agent_answers",
        "dnsmesh_agent_upstream_up",
        "dnsmesh_agent_snapshot_revision",
        "dnsmesh_agent_endpoint_latency_seconds",
        "dnsmesh_controller_http_requests",
        "dnsmesh_controller_agents_connected",
        "dnsmesh_controller_push_ack_seconds",
        "dnsmesh_controller_revision",
    ):
        assert name in families, name
    sync = {s.labels["transport"] for s in families["dnsmesh_agent_sync_connected"].samples}
    assert sync == {"websocket", "poll"}


def test_names_follow_the_conventions() -> None:
    for name, kind in every_exported().items():
        assert name.startswith("dnsmesh_agent_") or name.startswith("dnsmesh_controller_")
        if kind == "counter":
            assert name.endswith("_total"), name
        if re.search(r"_(latency|duration|age)(_|$)", name):
            assert "_seconds" in name, name
