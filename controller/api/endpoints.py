"""Routes for operators: endpoint health per address, and the agents x endpoints topology.

GET /v1/endpoints[?policy=NAME][&label=K=V...]   (viewer, editor, admin)
    200 {"revision": R, "down": [address, ...], "rule": {min_agents, fail_loss,
         recover_loss, stale_s},
         "items": [{"address", "policies": [name, ...], "status", "down": bool,
                    "admin_state": "up" | "drained" | "partly-drained",
                    "drains": [{address, policy, revision, drained_at, drained_by,
                                until, forced}],
                    "down_since": time | null, "down_revision": r | null,
                    "voters", "failing", "latency_ms": median | null,
                    "loss": mean | null,
                    "agents": [{"agent_id", "node_name", "state", "latency_ms", "loss",
                                "consecutive_failures", "samples", "reported_at",
                                "age_s", "stale", "failing"}]}]}
    by address: every endpoint of every policy (or of policy NAME: 404 if none), every
    reported address and every down address; with ``label``, only the endpoints of the
    policies whose labels include every pair (none match: an empty list). ``status``:
    ``down`` (the quorum marked it down for every agent), ``failing`` (some agents see
    it failing, not a quorum), ``healthy`` (fresh reports, none failing), ``unknown``
    (no fresh report). ``voters``, ``failing``, ``latency_ms`` and ``loss`` count fresh
    reports only (at most ``stale_s`` old, state not ``unknown``). ``admin_state`` is
    the operators' word (controller.api.drains): ``drained`` in every policy listed (or
    in policy NAME), ``partly-drained`` in some of them, else ``up``.
GET /v1/topology   (viewer, editor, admin)
    200 {"revision": R, "at": time, "stale_s",
         "agents": [{"agent_id", "node_name", "labels"}],
         "endpoints": [{"address", "policies", "down"}],
         "links": [{"agent_id", "address", "state", "latency_ms", "loss", "age_s",
                    "stale"}]}
    the data for a map: one link per (agent, address) the agent last reported.
"""

from __future__ import annotations

import ipaddress
import statistics
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from controller.api.deps import blocking, policy_store, require
from controller.api.errors import ApiError
from controller.api.selectors import LabelQuery, label_selector
from controller.auth import Permission, Principal
from controller.db.models import EndpointHealthRow
from controller.db.session import iso
from controller.hub import Hub
from controller.services.drains import drain_json
from controller.services.health_view import HealthView

router = APIRouter(tags=["endpoints"])

Operator = Annotated[Principal, Depends(require(Permission.READ_AUDIT))]  # viewer and up


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


@router.get("/v1/endpoints")
async def list_endpoints(
    request: Request,
    _who: Operator,
    policy: Annotated[str | None, Query(min_length=1, max_length=63)] = None,
    label: LabelQuery = None,
) -> JSONResponse:
    wanted = label_selector(label)
    view = await _hub(request).health_view()
    if policy is not None and policy not in view.policies:
        raise ApiError(404, "not_found", f"policy {policy!r} does not exist")
    names: set[str] | None = None if policy is None else {policy}
    if wanted:
        listed = await blocking(policy_store(request).list_policies, wanted)
        labelled = {str(doc["metadata"]["name"]) for doc in listed.items}
        names = labelled if names is None else names & labelled
    return JSONResponse(endpoints_json(view, names))


@router.get("/v1/topology")
async def topology(request: Request, _who: Operator) -> JSONResponse:
    view = await _hub(request).health_view()
    return JSONResponse(topology_json(view))


def _policies_by_address(view: HealthView) -> dict[str, list[str]]:
    by_address: dict[str, list[str]] = {}
    for name in sorted(view.policies):
        for address in view.policies[name]:
            names = by_address.setdefault(address, [])
            if name not in names:
                names.append(name)
    return by_address


def endpoints_json(view: HealthView, policies: set[str] | None = None) -> dict[str, Any]:
    """Every address (``policies``: only those of these policies), with its health."""
    by_address = _policies_by_address(view)
    reports: dict[str, list[EndpointHealthRow]] = {}
    for row in view.rows:
        reports.setdefault(row.address, []).append(row)
    if policies is not None:
        addresses = {a for name in policies for a in view.policies.get(name, [])}
    else:
        addresses = set(by_address) | set(reports) | set(view.down)
    items = []
    for address in sorted(addresses, key=_address_key):
        detail = [view.report_json(r) for r in sorted(reports.get(address, []), key=_agent)]
        fresh = [d for d in detail if not d["stale"] and d["state"] != "unknown"]
        latencies = [d["latency_ms"] for d in fresh if d["latency_ms"] is not None]
        failing = sum(1 for d in fresh if d["failing"])
        down = view.down.get(address)
        listed = by_address.get(address, [])
        scope = set(listed) if policies is None else set(listed) & policies
        drained = view.drains_of(address, scope)
        drained_in = {d.policy_name for d in drained}
        if down is not None:
            status = "down"
        elif failing:
            status = "failing"
        elif fresh:
            status = "healthy"
        else:
            status = "unknown"
        items.append(
            {
                "address": address,
                "policies": listed,
                "status": status,
                # gdnsd's admin_state: an operator's drain beats what health says
                "admin_state": "drained"
                if drained and ("" in drained_in or scope <= drained_in)
                else ("partly-drained" if drained else "up"),
                "drains": [drain_json(d) for d in drained],
                "down": down is not None,
                "down_since": iso(down.since) if down is not None else None,
                "down_revision": down.revision if down is not None else None,
                "voters": len(fresh),
                "failing": failing,
                "latency_ms": statistics.median(latencies) if latencies else None,
                "loss": statistics.fmean(d["loss"] for d in fresh) if fresh else None,
                "agents": detail,
            }
        )
    rule = view.rule
    return {
        "revision": view.revision,
        "down": sorted(view.down, key=_address_key),
        "rule": {
            "min_agents": rule.min_agents,
            "fail_loss": rule.fail_loss,
            "recover_loss": rule.recover_loss,
            "stale_s": rule.stale_s,
        },
        "items": items,
    }


def topology_json(view: HealthView) -> dict[str, Any]:
    by_address = _policies_by_address(view)
    reported = {row.agent_id for row in view.rows}
    agent_ids = sorted(set(view.agents) | reported)
    addresses = sorted(
        set(by_address) | {r.address for r in view.rows} | set(view.down), key=_address_key
    )
    return {
        "revision": view.revision,
        "at": iso(view.now),
        "stale_s": view.rule.stale_s,
        "agents": [
            {
                "agent_id": agent_id,
                "node_name": view.agents.get(agent_id, (None, {}))[0],
                "labels": view.agents.get(agent_id, (None, {}))[1],
            }
            for agent_id in agent_ids
        ],
        "endpoints": [
            {"address": a, "policies": by_address.get(a, []), "down": a in view.down}
            for a in addresses
        ],
        "links": [
            {
                "agent_id": row.agent_id,
                "address": row.address,
                "state": row.state,
                "latency_ms": row.latency_ms,
                "loss": row.loss,
                "age_s": round(view.age_s(row), 3),
                "stale": view.age_s(row) > view.rule.stale_s,
            }
            for row in sorted(view.rows, key=lambda r: (r.agent_id, _address_key(r.address)))
        ],
    }


def _agent(row: EndpointHealthRow) -> str:
    return row.agent_id


def _address_key(address: str) -> tuple[int, int, str]:
    """IPv4 before IPv6, each in numeric order."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return (7, 0, address)
    return (parsed.version, int(parsed), address)
