"""Re-weighting a compiled snapshot, without sockets: only what changed is compiled again."""

from __future__ import annotations

from typing import Any

from dnsmesh.policy import Policy, parse_policy
from dnsmesh.reweigh import reweigh
from dnsmesh.snapshot import compile_snapshot


def _policy(name: str, domain: str, addresses: list[str]) -> Policy:
    return parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": name},
            "spec": {"domain": domain, "endpoints": [{"address": a} for a in addresses]},
        }
    )


def test_reweigh_compiles_only_what_changed() -> None:
    web = _policy("web", "web.mesh.test", ["127.0.0.1", "127.0.0.2"])
    other = _policy("other", "other.mesh.test", ["10.0.0.9"])
    base = compile_snapshot([web, other], 3)
    assert reweigh(base, {}) is base
    cache: dict[str, Any] = {}
    first = reweigh(base, {"web": {"127.0.0.1": 0, "127.0.0.2": 1}}, cache)
    by_name = {c.name: c for c in first.policies()}
    assert by_name["other"] is {c.name: c for c in base.policies()}["other"]
    again = reweigh(base, {"web": {"127.0.0.1": 0, "127.0.0.2": 1}}, cache)
    assert {c.name: c for c in again.policies()}["web"] is by_name["web"]
    moved = reweigh(base, {"web": {"127.0.0.1": 1, "127.0.0.2": 0}}, cache)
    assert {c.name: c for c in moved.policies()}["web"] is not by_name["web"]
