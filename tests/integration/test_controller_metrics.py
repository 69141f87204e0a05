"""The controller's /metrics: requests by route pattern, the metrics token, push convergence."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.api import create_app
from controller.db.session import Database
from dnsmesh import protocol
from tests.integration.conftest import TestClient
from tests.integration.controller_support import Api
from tests.integration.push_support import ServedController, TestAgent, clear_agents, eventually
from tests.support.policies import policy_doc

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def requests(samples: Samples, route: str, status: int) -> float:
    key = (("route", route), ("status", str(status)))
    return samples["dnsmesh_controller_http_requests_total"].get(key, 0)


def test_requests_are_counted_by_route_pattern(api: Api) -> None:
    doc = policy_doc("checkout", [{"address": "10.0.0.1"}])
    assert api.post("/v1/policies", role="editor", json=doc).status_code == 201
    assert api.get("/v1/policies/checkout").status_code == 200
    assert api.get("/v1/policies/checkout").status_code == 200
    assert api.get("/v1/policies/nothing-here").status_code == 404
    assert api.get("/v1/no/such/route").status_code == 404
    assert api.get("/v1/policies", role="viewer").status_code == 200
    assert api.client.get("/v1/policies").status_code == 401  # no token
    response = api.client.get("/metrics")  # no token needed without --metrics-token
    assert response.status_code == 200
    samples = parse(response.text)
    assert requests(samples, "/v1/policies", 201) == 1
    assert requests(samples, "/v1/policies/{name}", 200) == 2
    assert requests(samples, "/v1/policies/{name}", 404) == 1
    assert requests(samples, "unmatched", 404) == 1
    assert requests(samples, "/v1/policies", 200) == 1
    assert requests(samples, "/v1/policies", 401) == 1
    routes = {dict(labels)["route"] for labels in samples["dnsmesh_controller_http_requests_total"]}
    assert not any("checkout" in route or "nothing-here" in route for route in routes)
    durations = samples["dnsmesh_controller_http_request_duration_seconds_count"]
    assert durations[(("route", "/v1/policies/{name}"),)] == 3
    assert samples["dnsmesh_controller_revision"][()] == 1
    assert samples["dnsmesh_controller_endpoints_down"][()] == 0
    assert samples["dnsmesh_controller_agents_connected"] == {
        (("transport", "websocket"),): 0,
        (("transport", "poll"),): 0,
    }
    # /metrics is not part of the REST contract.
    assert "/metrics" not in api.client.get("/openapi.json").json()["paths"]


@SQLITE_ONLY
def test_the_metrics_token(controller_db: Database) -> None:
    with TestClient(create_app(controller_db, metrics_token="scrape-secret")) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 401
        allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert allowed.status_code == 200
        assert "dnsmesh_controller_revision" in allowed.text
        assert requests(parse(allowed.text), "/metrics", 401) == 2


@pytest.fixture
def served(database_url: str) -> Iterator[ServedController]:
    clear_agents(database_url)
    with ServedController(database_url) as controller:
        yield controller


@SQLITE_ONLY
def test_push_convergence_and_nacks(served: ServedController) -> None:
    async def scenario() -> Samples:
        async with served.http() as http:
            agent = await TestAgent.connect(served.ws_url, served.tokens["agent"])
            first = await agent.next()
            assert isinstance(first, protocol.SnapshotMessage)
            await agent.ack(first.revision)

            async def put(name: str) -> int:
                doc: dict[str, Any] = policy_doc(name, [{"address": "10.0.0.1"}])
                response = await http.put(
                    f"/v1/policies/{name}", json=doc, headers=served.auth("editor")
                )
                assert response.status_code == 201
                revision: int = response.json()["metadata"]["revision"]
                return revision

            revision = await put("alpha")
            update = await agent.next()
            assert update.revision == revision  # type: ignore[union-attr]
            await agent.ack(revision)
            refused = await put("beta")
            assert (await agent.next()).revision == refused  # type: ignore[union-attr]
            await agent.nack(refused, "test refusal")

            async def scraped() -> bool:
                text = (await http.get("/metrics")).text
                samples = parse(text)
                return bool(samples["dnsmesh_controller_nacks_total"][()] == 1)

            await eventually(scraped)
            samples = parse((await http.get("/metrics")).text)
            await agent.close()
            return samples

    samples = asyncio.run(scenario())
    # One commit-to-ACK observation: revision 1 (the snapshot's revision 0 was committed
    # before this replica started, so it has no commit time to measure from).
    assert samples["dnsmesh_controller_push_ack_seconds_count"][()] == 1
    assert samples["dnsmesh_controller_push_ack_seconds_bucket"][(("le", "+Inf"),)] == 1
    assert samples["dnsmesh_controller_agents_connected"][(("transport", "websocket"),)] == 1
    assert samples["dnsmesh_controller_revision"][()] == 2
