"""Explain as this agent answers: its served snapshot, drains, down set, ejections and ramps.

The admin listener's ``GET /explain?name=&client=`` (agent/metrics/admin.py). The answer is
made by the pure dnsmesh.explain from the compiled policy the queries read right now (the
health weights and slow start ramps already in it), so it is what this agent does, where
the controller's ``/v1/explain`` is what an agent would do with what the controller knows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from agent.probes.monitor import HealthMonitor
from agent.served import ServedSnapshot
from dnsmesh import explain as ex
from dnsmesh.dnswire import name_to_wire
from dnsmesh.policy import normalize_domain

SOURCE = "agent"


class BadQuestion(ValueError):
    """A missing or invalid name or client (400)."""


class UnknownName(LookupError):
    """No policy is called or answers that name (404)."""


def explain_here(
    served: ServedSnapshot, health: HealthMonitor, name: str | None, client: str | None
) -> dict[str, Any]:
    """What ``client`` gets from the policy called or answering ``name``, as served now."""
    if not name:
        raise BadQuestion("name is required: a policy name or a DNS name it answers")
    if not client:
        raise BadQuestion("client is required: the IPv4 or IPv6 address that asks")
    try:
        client = str(ipaddress.ip_address(client.strip()))
    except ValueError:
        raise BadQuestion(f"client {client!r} is not an IPv4 or IPv6 address") from None
    snapshot = served.snapshot
    compiled = next((c for c in snapshot.policies() if c.name == name), None)
    if compiled is None:
        try:
            wire = name_to_wire(normalize_domain(name))
        except ValueError as exc:
            raise BadQuestion(f"name {name!r} is neither a policy nor a DNS name: {exc}") from None
        compiled = snapshot.lookup(wire)
        if compiled is None:
            raise UnknownName(f"no policy is called or answers {name!r}")
    policy = compiled.policy.name
    explanation = ex.explain(
        compiled,
        client,
        source=SOURCE,
        drained=served.drains.of(policy),
        down=served.down,
        ejected=frozenset(a for a, h in health.health.items() if h.ejected),
        all_down=health.decision.all_down.get(policy),
        ramp=health.ramp_fractions.get(policy),
    )
    canary = compiled.policy.spec.canary
    if canary is not None:
        # The share this agent gives the canary group (the controller's rollout table has
        # the step and state).
        share = compiled.canary_share
        explanation = replace(explanation, rollout={"group": canary.group, "share": share})
    return explanation.to_json()
