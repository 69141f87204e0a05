"""GET and POST /v1/explain on SQLite and PostgreSQL: the stored policy as a client gets it."""

from __future__ import annotations

from typing import Any

from tests.integration.controller_support import Api, policy_doc


def explain(api: Api, role: str = "viewer", **params: str) -> Any:
    return api.get("/v1/explain", role, params=params)


def test_explain_a_stored_policy_by_name_and_by_dns_name(api: Api) -> None:
    assert api.post("/v1/policies", json=policy_doc()).status_code == 201
    response = explain(api, name="checkout", client="127.0.0.1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "controller" and body["slice"] == "_default"
    assert body["distribution"]["A"]["shares"] == {"127.0.10.1": 0.9, "127.0.10.2": 0.1}
    assert body["revision"] >= 1 and body["rollout"] is None
    by_dns = explain(api, name="checkout.mesh.internal.", client="10.8.1.2").json()
    assert by_dns["policy"] == "checkout" and by_dns["slice"] == "beta"
    assert by_dns["distribution"]["A"]["answer"] == ["127.0.10.2"]


def test_explain_shows_drains(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc())
    drained = api.post("/v1/endpoints/127.0.10.2/drain", json={"policy": "checkout"})
    assert drained.status_code == 201, drained.text
    body = explain(api, name="checkout", client="127.0.0.1").json()
    states = {c["address"]: c["state"] for c in body["candidates"]}
    assert states == {"127.0.10.1": "active", "127.0.10.2": "drained"}
    assert body["distribution"]["A"]["shares"] == {"127.0.10.1": 1.0}


def test_unknown_name_or_node_is_404_and_a_bad_client_422(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc())
    assert explain(api, name="nope", client="127.0.0.1").status_code == 404
    assert explain(api, name="checkout", client="127.0.0.1", node="n9").status_code == 404
    bad = explain(api, name="checkout", client="not-an-ip")
    assert bad.status_code == 422
    assert [f["path"] for f in bad.json()["error"]["fields"]] == ["client"]
    assert api.get("/v1/explain", params={"name": "checkout"}).status_code == 422
    assert api.client.get("/v1/explain?name=checkout&client=127.0.0.1").status_code == 401


def test_what_if_sets_before_and_after_side_by_side_and_stores_nothing(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc())
    revision = api.get("/v1/policies").json()["revision"]
    proposed = policy_doc(weight=30)
    response = api.post("/v1/explain", "viewer", params={"client": "127.0.0.1"}, json=proposed)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changes"]["A"] == [
        {"address": "127.0.10.1", "before": 0.9, "after": 0.75},
        {"address": "127.0.10.2", "before": 0.1, "after": 0.25},
    ]
    assert api.get("/v1/policies").json()["revision"] == revision
    fresh = api.post(
        "/v1/explain", params={"client": "127.0.0.1"}, json=policy_doc("fresh", domain="f.x")
    ).json()
    assert fresh["before"] is None and fresh["after"]["policy"] == "fresh"


def test_what_if_of_an_invalid_or_clashing_document_is_422_naming_the_field(api: Api) -> None:
    api.post("/v1/policies", json=policy_doc())
    broken = policy_doc()
    broken["spec"]["endpoints"][0]["weight"] = -1
    response = api.post("/v1/explain", params={"client": "127.0.0.1"}, json=broken)
    assert response.status_code == 422
    paths = [f["path"] for f in response.json()["error"]["fields"]]
    assert "spec.endpoints[0].weight" in paths
    clash = policy_doc("other", domain="checkout.mesh.internal")  # the domain of checkout
    assert api.post("/v1/explain", params={"client": "127.0.0.1"}, json=clash).status_code == 422


def test_explain_with_a_node_uses_its_labels_for_node_label_slices(api: Api) -> None:
    doc = policy_doc()
    doc["spec"]["slices"] = [
        {
            "id": "zone-a",
            "match": {"node_labels": {"zone": "a"}},
            "strategy": "sticky",
            "ttl": 3,
            "weights": {"127.0.10.2": 40},
        },
        {"id": "preview", "match": {"debug_label": "preview"}, "groups": ["v2"]},
    ]
    doc["spec"]["unmatched"] = "refuse"
    assert api.post("/v1/policies", json=doc).status_code == 201
    for agent_id, node, zone in (("a1", "node-a", "a"), ("b1", "node-b", "b")):
        hello = {"node_name": node, "labels": {"zone": zone}, "software": "test", "revision": 0}
        assert api.post(f"/v1/agents/{agent_id}/ack", "agent", json=hello).status_code == 200
    on_a = explain(api, name="checkout", client="10.1.2.3", node="node-a").json()
    assert (on_a["slice"], on_a["strategy"], on_a["ttl"]) == ("zone-a", "sticky", 3)
    assert on_a["weights"] == {"127.0.10.2": 40}
    assert {c["address"]: c["weight"] for c in on_a["candidates"]} == {
        "127.0.10.1": 90,
        "127.0.10.2": 40,
    }
    on_b = explain(api, name="checkout", client="10.1.2.3", node="node-b").json()
    assert on_b["action"] == "refuse" and on_b["slice"] == "_default"
    no_node = explain(api, name="checkout", client="10.1.2.3").json()
    assert any("node_labels" in note for note in no_node["notes"])
    preview = explain(api, name="preview.checkout.mesh.internal", client="10.1.2.3").json()
    assert (preview["slice"], preview["debug_label"]) == ("preview", "preview")
    assert preview["distribution"]["A"]["answer"] == ["127.0.10.2"]
