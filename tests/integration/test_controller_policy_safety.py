"""A policy write against the drains in force: refused 409 naming the safety rule it would
break (as a drain that would break it is), unless ``force=true``; both backends."""

from __future__ import annotations

from typing import Any

from tests.integration.controller_support import Api
from tests.support.policies import policy_doc

A, B, C, D = "127.0.40.1", "127.0.40.2", "127.0.40.3", "127.0.40.4"


def pay(weights: dict[str, int] | None = None, **spec: Any) -> dict[str, Any]:
    weights = weights or {A: 1, B: 1, C: 1}
    endpoints = [{"address": a, "weight": w} for a, w in weights.items()]
    return policy_doc("pay", endpoints, domain="pay.safety.test", **spec)


def revision(api: Api) -> int:
    value: int = api.get("/v1/policies").json()["revision"]
    return value


def refused_rule(response: Any) -> str:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert "with the drains in force" in error["message"] and "force=true" in error["message"]
    assert [f["path"] for f in error["fields"]] == [f"spec.safety.{error['code'][7:]}"]
    code: str = error["code"]
    return code


def test_a_put_that_breaks_a_rule_with_the_drains_is_refused_unless_forced(api: Api) -> None:
    assert api.put("/v1/policies/pay", json=pay()).status_code == 201
    assert api.post(f"/v1/endpoints/{A}/drain", json={"policy": "pay"}).status_code == 201
    before = revision(api)

    # 2 of 3 in service with A drained: min_endpoints 3 breaks, 2 holds
    stricter = pay(safety={"min_endpoints": 3})
    assert refused_rule(api.put("/v1/policies/pay", json=stricter)) == "safety_min_endpoints"
    assert revision(api) == before and "safety" not in api.get("/v1/policies/pay").json()["spec"]
    assert api.put("/v1/policies/pay", json=pay(safety={"min_endpoints": 2})).status_code == 200

    # taking B out by its weight, with A drained, leaves 1 < 2
    no_b = pay({A: 1, B: 0, C: 1}, safety={"min_endpoints": 2})
    assert refused_rule(api.put("/v1/policies/pay", json=no_b)) == "safety_min_endpoints"
    dry = api.put("/v1/policies/pay?dry_run=true", json=no_b)
    assert dry.status_code == 409  # a dry run answers as the write would

    # min_weight_percent: A drained holds 6 of 10
    heavy = pay({A: 4, B: 3, C: 3}, safety={"min_weight_percent": 70})
    assert refused_rule(api.put("/v1/policies/pay", json=heavy)) == "safety_min_weight_percent"
    assert api.put("/v1/policies/pay", json={**heavy}, params={"force": "true"}).status_code == 200
    audit = api.get("/v1/audit?limit=1").json()["items"][0]
    assert audit["operation"] == "policy.update" and audit["after"]["spec"]["safety"]

    # undrained, the same write that was refused goes through
    assert api.delete(f"/v1/endpoints/{A}/drain?policy=pay").status_code == 200
    assert api.put("/v1/policies/pay", json=no_b).status_code == 200


def test_a_breach_a_forced_drain_made_does_not_block_edits_that_take_no_more_out(
    api: Api,
) -> None:
    four = {A: 1, B: 1, C: 1, D: 1}
    api.put("/v1/policies/pay", json=pay(four, safety={"min_endpoints": 3}))
    assert api.post(f"/v1/endpoints/{A}/drain", json={"policy": "pay"}).status_code == 201
    forced = api.post(f"/v1/endpoints/{B}/drain?force=true", json={"policy": "pay"})
    assert forced.status_code == 201 and forced.json()["forced_past"]  # 2 of 4 < 3
    ttl = pay(four, safety={"min_endpoints": 3}, ttl=7)
    assert api.put("/v1/policies/pay", json=ttl).status_code == 200
    fewer = pay({**four, D: 0}, safety={"min_endpoints": 3}, ttl=7)  # 1 of 3 in service
    assert refused_rule(api.put("/v1/policies/pay", json=fewer)) == "safety_min_endpoints"


def test_a_new_policy_and_an_applied_set_are_checked_too(api: Api) -> None:
    other = policy_doc("other", [{"address": A, "weight": 1}], domain="other.safety.test")
    assert api.post("/v1/policies", json=other).status_code == 201
    assert api.post(f"/v1/endpoints/{A}/drain?force=true", json={}).status_code == 201
    before = revision(api)

    fresh = pay(safety={"min_endpoints": 3})
    assert refused_rule(api.post("/v1/policies", json=fresh)) == "safety_min_endpoints"
    applied = api.post("/v1/apply", json=[fresh])
    assert applied.status_code == 409, applied.text
    body = applied.json()
    assert body["applied"] is False and body["error"]["code"] == "apply_refused"
    assert body["items"][0]["error"]["code"] == "safety_min_endpoints"
    assert body["error"]["fields"][0]["path"] == "[0].spec.safety.min_endpoints"
    assert revision(api) == before and api.get("/v1/policies/pay").status_code == 404

    forced = api.post("/v1/apply?force=true", json=[fresh])
    assert forced.status_code == 200 and forced.json()["applied"] is True
