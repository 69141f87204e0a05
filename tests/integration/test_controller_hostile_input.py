"""Hostile bodies and URLs on both backends: a clear 400/422, and nothing stored or recorded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.api.body import MAX_DEPTH
from tests.integration.controller_support import Api, policy_doc
from tests.integration.test_controller_api import assert_error

# Every route that takes a body (the policy routes need an existing policy for slices).
BODY_ROUTES = (
    ("POST", "/v1/policies"),
    ("PUT", "/v1/policies/checkout"),
    ("POST", "/v1/policies/checkout/slices"),
    ("PUT", "/v1/policies/checkout/slices/beta"),
    ("POST", "/v1/tokens"),
    ("POST", "/v1/agents/node-1/ack"),
    ("POST", "/v1/agents/node-1/report"),
)


def state(api: Api) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    return (
        api.get("/v1/policies").json(),
        api.get("/v1/audit").json()["items"],
        api.get("/v1/tokens").json()["items"],
        api.get("/v1/agents").json()["items"],
        api.get("/v1/endpoints").json()["items"],
    )


def send(api: Api, method: str, path: str, content: bytes) -> Any:
    return api.request(method, path, content=content, headers={"Content-Type": "application/json"})


@pytest.fixture
def seeded(api: Api) -> Api:
    assert api.post("/v1/policies", json=policy_doc("checkout")).status_code == 201
    return api


def test_deeply_nested_bodies_are_400_everywhere(seeded: Api) -> None:
    before = state(seeded)
    # Far past the interpreter's recursion limit: json.loads raised RecursionError (a 500).
    abyss = b"[" * 100_000 + b"]" * 100_000
    # Within the recursion limit but past ours: refused before validation sees it.
    deep = b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)
    for method, path in BODY_ROUTES:
        for content in (abyss, deep):
            error = assert_error(send(seeded, method, path, content), 400, "malformed_json")
            assert f"deeper than {MAX_DEPTH}" in error["message"], (method, path)
    assert state(seeded) == before


def with_label(value: str) -> dict[str, Any]:
    return policy_doc("basket", domain="basket.mesh.internal", labels={"team": value})


@pytest.mark.parametrize(
    "content",
    [
        json.dumps(with_label("pay\x00ments")).encode(),
        # A lone surrogate is valid JSON text but not Unicode: no database can store it.
        json.dumps(with_label("pay")).replace('"pay"', '"\\ud800"').encode(),
    ],
    ids=["nul", "lone-surrogate"],
)
def test_unstorable_text_in_a_policy_is_422_and_stores_nothing(seeded: Api, content: bytes) -> None:
    before = state(seeded)
    for method, path in (("POST", "/v1/policies"), ("PUT", "/v1/policies/basket")):
        error = assert_error(send(seeded, method, path, content), 422, "invalid_request")
        assert [f["path"] for f in error["fields"]] == ["metadata.labels.team"]
    assert state(seeded) == before


@pytest.mark.parametrize(
    ("method", "path", "body", "where"),
    [
        ("POST", "/v1/tokens", {"name": "ci\x00", "role": "viewer"}, "name"),
        ("POST", "/v1/agents/node-1/ack", {"node_name": "n\x001", "revision": 0}, "node_name"),
        (
            "POST",
            "/v1/agents/node-1/ack",
            {"node_name": "n1", "labels": {"zone\x00": "a"}, "revision": 0},
            "labels.zone\x00",
        ),
        (
            "POST",
            "/v1/agents/node-1/ack",
            {"node_name": "n1", "revision": 0, "nack": {"revision": 1, "reason": "bad\x00"}},
            "nack.reason",
        ),
        (
            "POST",
            "/v1/policies/checkout/slices",
            {"id": "b\x00", "match": {"client_cidrs": ["10.9.0.0/16"]}},
            "id",
        ),
    ],
)
def test_nul_in_any_string_field_is_422_and_records_nothing(
    seeded: Api, method: str, path: str, body: dict[str, Any], where: str
) -> None:
    before = state(seeded)
    error = assert_error(
        send(seeded, method, path, json.dumps(body).encode()), 422, "invalid_request"
    )
    assert [f["path"] for f in error["fields"]] == [where]
    assert "NUL" in error["message"]
    assert state(seeded) == before


@pytest.mark.parametrize(
    "path",
    [
        "/v1/policies/check%00out",
        "/v1/policies/checkout/slices/be%00ta",
        "/v1/policies?label=team%3Dp%00y",
        "/v1/tokens/ci%00",
        "/v1/agents/node%001/ack",
    ],
)
def test_nul_in_the_url_is_400(seeded: Api, path: str) -> None:
    before = state(seeded)
    for method in ("GET", "PUT", "DELETE", "POST"):
        response = send(seeded, method, path, json.dumps(policy_doc("checkout")).encode())
        assert "NUL" in assert_error(response, 400, "bad_request")["message"]
    assert state(seeded) == before


@pytest.mark.parametrize(
    ("path", "role"),
    [
        (f"/v1/audit?before={2**63}", "admin"),  # found by the fuzzer: a 500 on PostgreSQL
        (f"/v1/revisions/{2**63}", "admin"),
        (f"/v1/changes?since={2**63}", "agent"),
    ],
)
def test_a_number_past_bigint_in_the_url_is_422(seeded: Api, path: str, role: str) -> None:
    assert_error(seeded.get(path, role=role), 422, "invalid_request")


def test_a_number_past_bigint_in_a_body_is_422_and_records_nothing(seeded: Api) -> None:
    before = state(seeded)
    for revision in (2**63, -(2**63) - 1):
        body = {"node_name": "n1", "revision": revision}
        response = send(seeded, "POST", "/v1/agents/node-1/ack", json.dumps(body).encode())
        error = assert_error(response, 422, "invalid_request")
        assert [f["path"] for f in error["fields"]] == ["revision"]
    assert state(seeded) == before


def test_a_number_too_long_to_parse_is_400(seeded: Api) -> None:
    # Valid JSON, but CPython refuses to turn more than 4,300 digits into an int (ValueError).
    content = b'{"node_name": "n1", "revision": ' + b"9" * 5000 + b"}"
    for method, path in BODY_ROUTES:
        assert_error(send(seeded, method, path, content), 400, "malformed_json")
