"""The controller's API takes ECS matches and per-slice resource limits, and refuses bad
limits with a 422 that names the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.controller_support import Api, policy_doc


def test_an_ecs_slice_with_limits_round_trips(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc("checkout"))
    office = {
        "id": "office",
        "match": {"ecs_cidrs": ["10.20.0.0/16"]},
        "groups": ["v1"],
        "resource_limits": {"qps": 2.5, "burst": 10},
    }
    created = api.post("/v1/policies/checkout/slices", role="editor", json=office)
    assert created.status_code == 201
    # Unset criteria stay out of the stored document: it reads back as it was written.
    assert created.json() == {**office, "action": "answer"}
    got = api.get("/v1/policies/checkout/slices/office").json()
    assert got["resource_limits"] == {"qps": 2.5, "burst": 10}


@pytest.mark.parametrize(
    ("limits", "path"),
    [
        ({"qps": 0, "burst": 5}, "spec.slices[1].resource_limits.qps"),
        ({"qps": 5, "burst": 0}, "spec.slices[1].resource_limits.burst"),
        ({"burst": 5}, "spec.slices[1].resource_limits.qps"),
    ],
)
def test_bad_limits_are_422_naming_the_field(api: Api, limits: dict[str, Any], path: str) -> None:
    api.post("/v1/policies", json=policy_doc("checkout"))
    bad = {"id": "gamma", "match": {"client_cidrs": ["10.7.0.0/16"]}, "resource_limits": limits}
    response = api.post("/v1/policies/checkout/slices", json=bad)
    assert response.status_code == 422
    assert [f["path"] for f in response.json()["error"]["fields"]] == [path]
    assert [s["id"] for s in api.get("/v1/policies/checkout/slices").json()["items"]] == ["beta"]
