"""Refused writes (401/403) leave an audit row each, rate-limited per source, on both backends."""

from __future__ import annotations

import time
from typing import Any

from controller.api.refusals import BURST, RATE_PER_S
from tests.integration.controller_support import Api, policy_doc
from tests.integration.test_controller_api import assert_error


def refusals(api: Api) -> list[dict[str, Any]]:
    items = api.get("/v1/audit?limit=1000", role="viewer").json()["items"]
    return [e for e in items if e["operation"] == "write.refused"]


def test_each_refused_write_is_audited_with_who_what_why_and_where(api: Api) -> None:
    anonymous = api.client.post("/v1/policies", json=policy_doc("checkout"))
    assert_error(anonymous, 401, "unauthorized")
    unknown = api.client.put(
        "/v1/policies/checkout",
        json=policy_doc("checkout"),
        headers={"Authorization": "Bearer dnsm_not-a-token-anyone-has"},
    )
    assert_error(unknown, 401, "unauthorized")
    assert_error(api.delete("/v1/policies/checkout", role="viewer"), 403, "forbidden")
    assert_error(api.post("/v1/tokens", role="editor", json={}), 403, "forbidden")
    entries = list(reversed(refusals(api)))  # oldest first
    assert [(e["actor"], e["target"], e["after"]["status"]) for e in entries] == [
        ("anonymous", "/v1/policies", 401),
        ("unknown-token", "/v1/policies/checkout", 401),
        ("viewer-token", "/v1/policies/checkout", 403),
        ("editor-token", "/v1/tokens", 403),
    ]
    assert [e["after"]["method"] for e in entries] == ["POST", "PUT", "DELETE", "POST"]
    assert entries[0]["after"]["reason"] == "a bearer token is required"
    assert entries[1]["after"]["token_prefix"] == "dnsm_not-a-t"
    assert entries[2]["after"]["reason"] == "role 'viewer' may not write policies"
    assert entries[3]["after"]["token_prefix"] == api.tokens["editor"][:12]
    assert {e["after"]["source"] for e in entries} == {"testclient"}
    assert all(e["revision"] is None and e["before"] is None for e in entries)
    assert "dropped" not in entries[-1]["after"]
    # The refusals changed nothing else.
    assert api.get("/v1/policies").json() == {"revision": 0, "items": []}


def test_refused_reads_are_not_audited(api: Api) -> None:
    assert api.client.get("/v1/policies").status_code == 401
    assert api.get("/v1/tokens", role="viewer").status_code == 403
    assert refusals(api) == []


def test_a_flood_of_refusals_is_limited_per_source_and_the_drops_are_counted(api: Api) -> None:
    sent = 300
    started = time.monotonic()
    for _ in range(sent):
        assert api.client.post("/v1/policies", json={}).status_code == 401
    elapsed = time.monotonic() - started
    recorded = refusals(api)
    # The burst, plus what the bucket refilled meanwhile: far fewer rows than refusals.
    assert BURST <= len(recorded) <= BURST + RATE_PER_S * elapsed + 1
    assert len(recorded) < sent
    # Every refusal is accounted for: a row, or counted as dropped in the source's next row.
    time.sleep(2 / RATE_PER_S)  # room for one more row, which carries the last drops
    assert api.client.post("/v1/policies", json={}).status_code == 401
    rows = refusals(api)
    assert len(rows) == len(recorded) + 1
    dropped = [e["after"].get("dropped", 0) for e in rows]
    assert len(rows) + sum(dropped) == sent + 1
    # Which row carries a count depends on how fast the loop ran against the refill (on a
    # slow machine the loop's own admitted rows carry them all), but some row must.
    assert max(dropped) > 0
