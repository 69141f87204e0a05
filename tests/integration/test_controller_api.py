"""The REST API on both backends: every route, every status, one error shape."""

from __future__ import annotations

from typing import Any

import pytest

from controller.services.policies import PolicyService
from tests.integration.controller_support import Api, policy_doc


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "fields"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


def revision_of(api: Api) -> int:
    revision: int = api.get("/v1/policies").json()["revision"]
    return revision


def test_list_starts_empty(api: Api) -> None:
    response = api.get("/v1/policies", role="viewer")
    assert response.status_code == 200
    assert response.json() == {"revision": 0, "items": []}


def test_create_then_get(api: Api) -> None:
    response = api.post("/v1/policies", role="editor", json=policy_doc("checkout"))
    assert response.status_code == 201
    body = response.json()
    assert body["metadata"]["revision"] == 1
    assert response.headers["etag"] == '"1"'
    assert response.headers["location"] == "/v1/policies/checkout"
    got = api.get("/v1/policies/checkout", role="agent")
    assert got.status_code == 200
    assert got.json() == body
    assert got.headers["etag"] == '"1"'
    listing = api.get("/v1/policies").json()
    assert listing == {"revision": 1, "items": [body]}


def test_create_existing_name_is_409(api: Api) -> None:
    assert api.post("/v1/policies", json=policy_doc("checkout")).status_code == 201
    again = api.post("/v1/policies", json=policy_doc("checkout", domain="other.mesh.internal"))
    assert_error(again, 409, "already_exists")
    assert revision_of(api) == 1


def test_invalid_body_names_every_field_and_stores_nothing(api: Api) -> None:
    doc = policy_doc("checkout")
    doc["spec"]["endpoints"][1]["weight"] = -1
    doc["spec"]["ttl"] = -5
    doc["spec"]["colour"] = "blue"
    error = assert_error(api.post("/v1/policies", json=doc), 422, "invalid_policy")
    paths = {f["path"] for f in error["fields"]}
    assert paths == {"spec.endpoints[1].weight", "spec.ttl", "spec.colour"}
    put = api.put("/v1/policies/checkout", json=doc)
    assert {f["path"] for f in assert_error(put, 422, "invalid_policy")["fields"]} == paths
    assert api.get("/v1/policies").json() == {"revision": 0, "items": []}
    assert api.get("/v1/audit").json()["items"][0]["operation"] == "token.create"


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"\xff\xfe", 400, "malformed_json"),
        (b"[1, 2]", 422, "invalid_policy"),
        (b'"a string"', 422, "invalid_policy"),
    ],
)
def test_bodies_that_are_not_policies(api: Api, content: bytes, status: int, code: str) -> None:
    for method, path in (("POST", "/v1/policies"), ("PUT", "/v1/policies/checkout")):
        response = api.request(
            method, path, content=content, headers={"Content-Type": "application/json"}
        )
        assert_error(response, status, code)
    assert revision_of(api) == 0


def test_domain_taken_by_another_policy_is_409(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc("checkout", domain="shop.mesh.internal"))
    clash = policy_doc("basket", domain="SHOP.mesh.internal.")  # the same domain, normalised
    error = assert_error(api.post("/v1/policies", json=clash), 409, "domain_conflict")
    assert error["fields"][0]["path"] == "spec.domain"
    assert "checkout" in error["fields"][0]["message"]
    assert_error(api.put("/v1/policies/basket", json=clash), 409, "domain_conflict")
    assert [p["metadata"]["name"] for p in api.get("/v1/policies").json()["items"]] == ["checkout"]


def test_get_missing_is_404(api: Api) -> None:
    assert_error(api.get("/v1/policies/nope"), 404, "not_found")
    assert_error(api.get("/v1/policies/nope/slices"), 404, "not_found")
    assert_error(api.get("/v1/policies/nope/slices/beta"), 404, "not_found")


def test_put_creates_replaces_and_skips_unchanged(api: Api) -> None:
    created = api.put("/v1/policies/checkout", role="editor", json=policy_doc("checkout"))
    assert created.status_code == 201
    assert created.headers["etag"] == '"1"'
    replaced = api.put("/v1/policies/checkout", json=policy_doc("checkout", weight=50))
    assert replaced.status_code == 200
    assert replaced.json()["metadata"]["revision"] == 2
    assert replaced.json()["spec"]["endpoints"][0]["weight"] == 50
    # Applying the same document again is not a change: no revision, no audit entry.
    same = policy_doc("checkout", weight=50)
    same["metadata"]["revision"] = 999  # ignored on input
    unchanged = api.put("/v1/policies/checkout", json=same)
    assert unchanged.status_code == 200
    assert unchanged.headers["etag"] == '"2"'
    assert revision_of(api) == 2
    operations = [e["operation"] for e in api.get("/v1/audit").json()["items"]]
    assert operations[:2] == ["policy.update", "policy.create"]


def test_put_name_must_match_path(api: Api) -> None:
    response = api.put("/v1/policies/other", json=policy_doc("checkout"))
    error = assert_error(response, 422, "invalid_policy")
    assert [f["path"] for f in error["fields"]] == ["metadata.name"]
    assert revision_of(api) == 0


def test_if_match_gives_optimistic_concurrency(api: Api) -> None:
    api.put("/v1/policies/checkout", json=policy_doc("checkout"))
    stale = api.put(
        "/v1/policies/checkout",
        json=policy_doc("checkout", weight=70),
        headers={"If-Match": '"1"'},
    )
    assert stale.status_code == 200 and stale.headers["etag"] == '"2"'
    lost = api.put(
        "/v1/policies/checkout",
        json=policy_doc("checkout", weight=60),
        headers={"If-Match": '"1"'},
    )
    assert_error(lost, 412, "precondition_failed")
    assert api.get("/v1/policies/checkout").json()["spec"]["endpoints"][0]["weight"] == 70
    weak = api.put(
        "/v1/policies/checkout",
        json=policy_doc("checkout", weight=60),
        headers={"If-Match": 'W/"2"'},
    )
    assert_error(weak, 412, "precondition_failed")  # If-Match compares strongly
    listed = api.put(
        "/v1/policies/checkout",
        json=policy_doc("checkout", weight=60),
        headers={"If-Match": '"7", "2"'},
    )
    assert listed.status_code == 200
    star_missing = api.put(
        "/v1/policies/basket", json=policy_doc("basket"), headers={"If-Match": "*"}
    )
    assert_error(star_missing, 412, "precondition_failed")
    assert_error(
        api.delete("/v1/policies/checkout", headers={"If-Match": '"1"'}), 412, "precondition_failed"
    )
    assert api.get("/v1/policies/checkout").status_code == 200
    deleted = api.delete("/v1/policies/checkout", headers={"If-Match": "*"})
    assert deleted.status_code == 200


def test_delete(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc("checkout"))
    response = api.delete("/v1/policies/checkout", role="editor")
    assert response.status_code == 200
    assert response.json() == {"deleted": "checkout", "revision": 2}
    assert_error(api.get("/v1/policies/checkout"), 404, "not_found")
    assert_error(api.delete("/v1/policies/checkout"), 404, "not_found")
    assert api.get("/v1/policies").json() == {"revision": 2, "items": []}


def test_label_filter(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc("a", labels={"team": "payments", "tier": "web"}))
    api.post("/v1/policies", json=policy_doc("b", labels={"team": "payments", "tier": "db"}))
    api.post("/v1/policies", json=policy_doc("c", labels={"team": "search"}))
    api.post("/v1/policies", json=policy_doc("d", labels={}))

    def names(query: str) -> list[str]:
        response = api.get(f"/v1/policies{query}", role="viewer")
        assert response.status_code == 200
        assert response.json()["revision"] == 4
        return [p["metadata"]["name"] for p in response.json()["items"]]

    assert names("") == ["a", "b", "c", "d"]
    assert names("?label=team=payments") == ["a", "b"]
    assert names("?label=team=payments&label=tier=db") == ["b"]
    assert names("?label=team=nobody") == []
    assert names("?label=owner=x") == []
    error = assert_error(api.get("/v1/policies?label=team"), 422, "invalid_request")
    assert error["fields"][0]["path"] == "label[0]"


def test_slices_crud(api: Api, controller_db: Any) -> None:
    api.post("/v1/policies", json=policy_doc("checkout"))
    listing = api.get("/v1/policies/checkout/slices", role="agent")
    assert listing.status_code == 200
    assert listing.json()["policy"] == "checkout"
    assert listing.json()["revision"] == 1
    assert [s["id"] for s in listing.json()["items"]] == ["beta"]

    gamma = {"id": "gamma", "match": {"client_cidrs": ["10.7.0.0/16"]}, "groups": ["v1"]}
    created = api.post("/v1/policies/checkout/slices", role="editor", json=gamma)
    assert created.status_code == 201
    assert created.json() == {**gamma, "action": "answer"}
    assert created.headers["etag"] == '"2"'
    assert created.headers["location"] == "/v1/policies/checkout/slices/gamma"
    assert_error(api.post("/v1/policies/checkout/slices", json=gamma), 409, "already_exists")

    got = api.get("/v1/policies/checkout/slices/gamma")
    assert got.status_code == 200 and got.json()["groups"] == ["v1"]
    assert got.headers["etag"] == '"2"'

    replaced = api.put(
        "/v1/policies/checkout/slices/beta",
        json={"match": {"client_cidrs": ["10.6.0.0/16"]}, "action": "refuse"},
    )
    assert replaced.status_code == 200
    assert replaced.json()["id"] == "beta" and replaced.json()["action"] == "refuse"
    same = api.put(
        "/v1/policies/checkout/slices/beta",
        json={"id": "beta", "match": {"client_cidrs": ["10.6.0.0/16"]}, "action": "refuse"},
    )
    assert same.status_code == 200 and same.headers["etag"] == '"3"'  # unchanged: no revision
    appended = api.put(
        "/v1/policies/checkout/slices/delta",
        json={"id": "delta", "match": {"client_cidrs": ["10.5.0.0/16"]}},
    )
    assert appended.status_code == 201
    order = [s["id"] for s in api.get("/v1/policies/checkout").json()["spec"]["slices"]]
    assert order == ["beta", "gamma", "delta"]  # replaced in place, new ones last

    deleted = api.delete("/v1/policies/checkout/slices/gamma")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": "gamma", "policy": "checkout", "revision": 5}
    assert_error(api.delete("/v1/policies/checkout/slices/gamma"), 404, "not_found")
    assert_error(api.get("/v1/policies/checkout/slices/gamma"), 404, "not_found")
    policy = api.get("/v1/policies/checkout")
    assert policy.json()["metadata"]["revision"] == 5
    assert [s["id"] for s in policy.json()["spec"]["slices"]] == ["beta", "delta"]

    # Each slice change is a policy change: in the change log with the whole document.
    changes = PolicyService(controller_db).changes_since(1)
    assert [(c.revision, c.policy, c.operation) for c in changes] == [
        (r, "checkout", "update") for r in (2, 3, 4, 5)
    ]
    assert changes[-1].document == policy.json()
    operations = [e["operation"] for e in api.get("/v1/audit?limit=4").json()["items"]]
    assert operations == ["slice.delete", "slice.update", "slice.update", "slice.create"]


def test_slice_changes_are_validated_as_the_whole_policy(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc("checkout"))
    unknown_group = {"id": "gamma", "match": {"client_cidrs": ["10.7.0.0/16"]}, "groups": ["v9"]}
    error = assert_error(
        api.post("/v1/policies/checkout/slices", json=unknown_group), 422, "invalid_policy"
    )
    assert any("v9" in f["message"] for f in error["fields"])
    bad_cidr = {"id": "gamma", "match": {"client_cidrs": ["10.7.0.1/16"]}}
    error = assert_error(
        api.post("/v1/policies/checkout/slices", json=bad_cidr), 422, "invalid_policy"
    )
    assert [f["path"] for f in error["fields"]] == ["spec.slices[1].match.client_cidrs[0]"]
    mismatch = api.put(
        "/v1/policies/checkout/slices/beta",
        json={"id": "other", "match": {"client_cidrs": ["10.7.0.0/16"]}},
    )
    assert [f["path"] for f in assert_error(mismatch, 422, "invalid_policy")["fields"]] == [
        "spec.slices[0].id"
    ]
    for body, path in (
        ({"id": "gamma", "match": {}}, "spec.slices[1].match"),
        (
            {"id": "gamma", "match": {"node_labels": {"zone": ""}, "bogus": 1}},
            "spec.slices[1].match.bogus",
        ),
        (
            {"id": "gamma", "match": {"debug_label": "g"}, "weights": {"10.0.0.9": 1}},
            "spec.slices[1].weights",
        ),
    ):
        error = assert_error(
            api.post("/v1/policies/checkout/slices", json=body), 422, "invalid_policy"
        )
        assert [f["path"] for f in error["fields"]] == [path]
    assert_error(api.post("/v1/policies/checkout/slices", content=b"nope"), 400, "malformed_json")
    assert_error(api.post("/v1/policies/checkout/slices", json=[1]), 422, "invalid_policy")
    assert_error(api.post("/v1/policies/nope/slices", json=unknown_group), 404, "not_found")
    assert_error(
        api.put(
            "/v1/policies/checkout/slices/beta",
            json={"match": {"client_cidrs": ["::/0"]}},
            headers={"If-Match": '"9"'},
        ),
        412,
        "precondition_failed",
    )
    assert revision_of(api) == 1


def test_audit_records_who_what_before_after(api: Api) -> None:
    api.post("/v1/policies", role="editor", json=policy_doc("checkout"))
    api.put("/v1/policies/checkout", role="admin", json=policy_doc("checkout", weight=5))
    api.delete("/v1/policies/checkout", role="editor")
    response = api.get("/v1/audit?limit=3", role="viewer")
    assert response.status_code == 200
    delete, update, create = response.json()["items"]
    assert (create["actor"], create["operation"], create["target"], create["revision"]) == (
        "editor-token",
        "policy.create",
        "checkout",
        1,
    )
    assert create["before"] is None
    assert create["after"]["spec"]["endpoints"][0]["weight"] == 90
    assert update["actor"] == "admin-token" and update["operation"] == "policy.update"
    assert update["before"] == create["after"]
    assert update["after"]["spec"]["endpoints"][0]["weight"] == 5
    assert delete["operation"] == "policy.delete" and delete["revision"] == 3
    assert delete["before"] == update["after"] and delete["after"] is None
    assert create["at"].endswith("Z") and create["at"] <= update["at"] <= delete["at"]
    assert create["id"] < update["id"] < delete["id"]


def test_audit_pages_newest_first(api: Api) -> None:
    for index in range(5):
        api.put("/v1/policies/checkout", json=policy_doc("checkout", weight=index + 1))
    # four tokens made by the fixture, then five policy changes: nine entries
    first = api.get("/v1/audit?limit=4").json()
    ids = [e["id"] for e in first["items"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 4
    assert first["next_before"] == ids[-1]
    second = api.get(f"/v1/audit?limit=4&before={first['next_before']}").json()
    third = api.get(f"/v1/audit?limit=4&before={second['next_before']}").json()
    all_ids = ids + [e["id"] for e in second["items"]] + [e["id"] for e in third["items"]]
    assert all_ids == sorted(all_ids, reverse=True) and len(set(all_ids)) == 9
    assert third["next_before"] is None
    assert_error(api.get("/v1/audit?limit=0"), 422, "invalid_request")
    assert_error(api.get("/v1/audit?before=x"), 422, "invalid_request")


def test_missing_and_bad_tokens_are_401(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer dnsm_notatoken"}, {"Authorization": "Basic x"}):
        response = api.client.get("/v1/policies", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = api.client.post("/v1/policies", json=policy_doc("checkout"))
    assert_error(response, 401, "unauthorized")
    assert revision_of(api) == 0


def test_roles(api: Api) -> None:
    for role in ("viewer", "agent"):
        assert_error(api.post("/v1/policies", role, json=policy_doc()), 403, "forbidden")
        assert_error(api.put("/v1/policies/checkout", role, json=policy_doc()), 403, "forbidden")
        assert api.get("/v1/policies", role).status_code == 200
    assert revision_of(api) == 0
    api.post("/v1/policies", "editor", json=policy_doc("checkout"))
    assert_error(api.delete("/v1/policies/checkout", "viewer"), 403, "forbidden")
    slice_doc = {"id": "x", "match": {"client_cidrs": ["10.0.0.0/8"]}}
    assert_error(
        api.post("/v1/policies/checkout/slices", "agent", json=slice_doc), 403, "forbidden"
    )
    assert api.get("/v1/policies/checkout/slices/beta", "agent").status_code == 200
    assert_error(api.get("/v1/audit", "agent"), 403, "forbidden")
    for role in ("editor", "viewer", "agent"):
        assert_error(api.get("/v1/tokens", role), 403, "forbidden")
        assert_error(
            api.post("/v1/tokens", role, json={"name": "x", "role": "admin"}), 403, "forbidden"
        )
        assert_error(api.delete("/v1/tokens/admin-token", role), 403, "forbidden")
    assert revision_of(api) == 1
    assert len(api.get("/v1/tokens").json()["items"]) == 4


def test_tokens_api(api: Api, controller_db: Any) -> None:
    created = api.post("/v1/tokens", json={"name": "ci", "role": "editor"})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {
        "name", "role", "prefix", "created_at", "created_by", "expires_at", "join",
        "join_node", "spent_at", "token",
    }  # fmt: skip
    assert body["expires_at"] is None  # no ttl: valid until revoked
    assert (body["join"], body["join_node"], body["spent_at"]) == (False, None, None)
    secret = body["token"]
    assert secret.startswith("dnsm_") and len(secret) >= 40
    assert body["prefix"] == secret[:12] and body["created_by"] == "admin-token"
    new = {"Authorization": f"Bearer {secret}"}
    assert api.client.post("/v1/policies", json=policy_doc(), headers=new).status_code == 201
    listing = api.get("/v1/tokens").json()["items"]
    assert [t["name"] for t in listing] == [
        "admin-token",
        "agent-token",
        "ci",
        "editor-token",
        "viewer-token",
    ]
    assert all(
        set(t)
        == {"name", "role", "prefix", "created_at", "created_by", "expires_at", "join"}
        | {"join_node", "spent_at"}
        for t in listing
    )
    assert secret not in api.get("/v1/tokens").text
    assert_error(
        api.post("/v1/tokens", json={"name": "ci", "role": "viewer"}), 409, "already_exists"
    )
    error = assert_error(
        api.post("/v1/tokens", json={"name": "x", "role": "root"}), 422, "invalid_request"
    )
    assert error["fields"][0]["path"] == "role"
    assert_error(
        api.post("/v1/tokens", json={"name": "Bad Name", "role": "viewer"}), 422, "invalid_request"
    )
    assert_error(
        api.post("/v1/tokens", json={"name": "y", "role": "viewer", "x": 1}), 422, "invalid_request"
    )
    assert_error(api.post("/v1/tokens", json=["ci"]), 422, "invalid_request")
    assert_error(api.post("/v1/tokens", content=b"{"), 400, "malformed_json")

    revoked = api.delete("/v1/tokens/ci")
    assert revoked.status_code == 200 and revoked.json() == {"revoked": "ci"}
    assert_error(api.client.get("/v1/policies", headers=new), 401, "unauthorized")
    assert_error(api.delete("/v1/tokens/ci"), 404, "not_found")
    audit = api.get("/v1/audit?limit=3").json()["items"]
    assert [e["operation"] for e in audit] == ["token.revoke", "policy.create", "token.create"]
    assert audit[0]["target"] == "token/ci" and audit[0]["before"]["role"] == "editor"
    assert audit[1]["actor"] == "ci"
    assert secret not in api.get("/v1/audit").text


def test_health_readiness_and_openapi_need_no_token(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "revision": 0}
    schema = api.client.get("/openapi.json")
    assert schema.status_code == 200
    assert "/v1/policies/{name}/slices/{slice_id}" in schema.json()["paths"]


def test_unknown_routes_and_methods_keep_the_error_shape(api: Api) -> None:
    assert_error(api.get("/v1/nothing"), 404, "not_found")
    assert_error(api.request("PATCH", "/v1/policies/checkout"), 405, "method_not_allowed")


def test_oversized_body_is_413(api: Api) -> None:
    # The default limit is 1 MiB (it was 4 MiB): one byte more is refused, naming it.
    huge = b" " * (1024 * 1024 + 1)
    response = api.put("/v1/policies/checkout", content=huge)
    error = assert_error(response, 413, "payload_too_large")
    assert "limit of 1048576 bytes" in error["message"]
    assert revision_of(api) == 0
