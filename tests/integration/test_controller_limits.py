"""The documented limits of names, domains and labels, at the API, on both backends.

Each limit sits at or below the column that stores the value (controller/db/models.py), so
the longest accepted value is stored (on PostgreSQL a longer one would be a 500, value too
long for VARCHAR) and the first refused one is a 422 that names the field.
"""

from __future__ import annotations

from typing import Any

from dnsmesh.policy import MAX_LABELS
from tests.integration.controller_support import Api, policy_doc
from tests.integration.test_controller_api import assert_error


def paths(error: dict[str, Any]) -> list[str]:
    return [field["path"] for field in error["fields"]]


def domain_of(length: int) -> str:
    """A domain of exactly ``length`` characters: labels of 63 and a shorter last one."""
    labels: list[str] = []
    left = length
    while left > 0:
        size = min(63, left)
        labels.append("a" * size)
        left -= size + 1  # the dot before the next label
    name = ".".join(labels)
    assert len(name) == length
    return name


def test_domains_up_to_253_characters_are_stored_longer_ones_are_422(api: Api) -> None:
    longest = domain_of(253)
    stored = api.put("/v1/policies/long", json=policy_doc("long", domain=longest))
    assert stored.status_code == 201, stored.text
    assert api.get("/v1/policies/long").json()["spec"]["domain"] == longest
    for length in (254, 300, 5000):
        refused = api.put("/v1/policies/other", json=policy_doc("other", domain=domain_of(length)))
        assert paths(assert_error(refused, 422, "invalid_policy")) == ["spec.domain"]
    # IDNA: the stored (ASCII) form is what counts; 60 'ü' become a 64-character label.
    umlauts = api.put("/v1/policies/other", json=policy_doc("other", domain="ü" * 60 + ".de"))
    assert paths(assert_error(umlauts, 422, "invalid_policy")) == ["spec.domain"]


def test_policy_names_and_slice_ids_up_to_63_characters(api: Api) -> None:
    name = "n" * 63
    created = api.put(f"/v1/policies/{name}", json=policy_doc(name, domain="n.mesh.internal"))
    assert created.status_code == 201, created.text
    # The audit row's target holds the policy name (and the slice id) within VARCHAR(127).
    slice_ = {"id": "s" * 63, "match": {"client_cidrs": ["10.9.0.0/16"]}, "groups": ["v1"]}
    assert api.post(f"/v1/policies/{name}/slices", json=slice_).status_code == 201
    too_long = "n" * 64
    refused = api.put(f"/v1/policies/{too_long}", json=policy_doc(too_long, domain="x.internal"))
    assert paths(assert_error(refused, 422, "invalid_policy")) == ["metadata.name"]


def test_policy_labels_have_64_keys_and_values_of_63_characters(api: Api) -> None:
    most = {f"k{i}": "v" * 63 for i in range(MAX_LABELS)}
    assert api.put("/v1/policies/a", json=policy_doc("a", labels=most)).status_code == 201
    too_many = {**most, "one-more": "v"}
    # Before: any number of labels was taken (only the body size bounded them).
    refused = api.put("/v1/policies/a", json=policy_doc("a", labels=too_many))
    assert paths(assert_error(refused, 422, "invalid_policy")) == ["metadata.labels"]
    for labels in ({"k": "v" * 64}, {"k" * 64: "v"}):
        refused = api.put("/v1/policies/a", json=policy_doc("a", labels=labels))
        assert_error(refused, 422, "invalid_policy")
    assert api.get("/v1/policies/a").json()["metadata"]["labels"] == most


def test_agent_labels_have_the_limits_of_policy_labels(api: Api) -> None:
    ack = {"node_name": "node-1", "revision": 0}
    fits = {f"k{i}": "v" * 63 for i in range(MAX_LABELS)}
    assert api.post("/v1/agents/node-1/ack", json={**ack, "labels": fits}).status_code == 200
    # Before: labels of any size were stored as they came (a 30 KB value, a 3 KB key).
    for labels in (
        {"k": "v" * 64},
        {"k" * 64: "v"},
        {"zone": "a\x01b"},
        {**fits, "one-more": "v"},
    ):
        refused = api.post("/v1/agents/node-2/ack", json={**ack, "labels": labels})
        error = assert_error(refused, 422, "invalid_request")
        assert all(path.startswith("labels") for path in paths(error)), error
    # node-2 was never recorded; node-1 kept what it reported.
    agents = {a["agent_id"]: a for a in api.get("/v1/agents").json()["items"]}
    assert set(agents) == {"node-1"} and agents["node-1"]["labels"] == fits


def test_agent_names_past_their_columns_are_422(api: Api) -> None:
    ack = {"node_name": "n" * 253, "revision": 0, "software": "s" * 64}
    assert api.post("/v1/agents/a/ack", json=ack).status_code == 200
    for field, value in (("node_name", "n" * 254), ("software", "s" * 65)):
        refused = api.post("/v1/agents/b/ack", json={**ack, field: value})
        assert paths(assert_error(refused, 422, "invalid_request")) == [field]
    long_id = api.post(f"/v1/agents/{'i' * 129}/ack", json=ack)
    assert_error(long_id, 422, "invalid_request")
