"""The feedback loop over real sockets: agents report on the WebSocket (or over HTTP), a
quorum marks an endpoint down for every agent, and operators see it in /v1/endpoints,
/v1/topology and ``dnsmesh get endpoints``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.quorum_monitor import HealthSettings
from dnsmesh import protocol
from dnsmesh.quorum import QuorumRule
from tests.integration.controller_support import policy_doc, run_cli
from tests.integration.push_support import (
    ServedController,
    TestAgent,
    clear_agents,
    eventually,
    fast_settings,
)

A = "127.0.10.1"
B = "127.0.10.2"

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def quick_health(stale_s: float = 30.0) -> HealthSettings:
    return HealthSettings(
        rule=QuorumRule(min_agents=2, stale_s=stale_s), evaluate_s=0.1, batch_delay_s=0.01
    )


@pytest.fixture
def served(database_url: str, request: pytest.FixtureRequest) -> Iterator[ServedController]:
    clear_agents(database_url)  # the PostgreSQL session database is shared by tests
    stale = getattr(request, "param", 30.0)
    with ServedController(database_url, fast_settings(health=quick_health(stale))) as controller:
        yield controller


def report(*entries: tuple[str, str, float]) -> protocol.Report:
    return protocol.Report(
        endpoints=[
            protocol.EndpointReport(
                address=address,
                state=state,
                loss=loss,
                latency_ms=None if state == "ejected" else 2.0,
                consecutive_failures=5 if state == "ejected" else 0,
                samples=3,
            )
            for address, state, loss in entries
        ]
    )


async def put_policy(http: httpx.AsyncClient, served: ServedController, name: str) -> int:
    response = await http.put(
        f"/v1/policies/{name}", json=policy_doc(name), headers=served.auth("editor")
    )
    assert response.status_code in (200, 201), response.text
    revision: int = response.json()["metadata"]["revision"]
    return revision


async def join(served: ServedController, agent_id: str, revision: int = 0) -> TestAgent:
    """An agent that took its first update and ACKed it."""
    agent = await TestAgent.connect(
        served.ws_url, served.tokens["agent"], agent_id=agent_id, revision=revision
    )
    if revision == 0:
        first = await agent.next()
        assert isinstance(first, protocol.SnapshotMessage)
        await agent.ack(first.revision)
    return agent


async def endpoint(http: httpx.AsyncClient, served: ServedController, address: str) -> Any:
    response = await http.get("/v1/endpoints", headers=served.auth("viewer"))
    assert response.status_code == 200, response.text
    return next(i for i in response.json()["items"] if i["address"] == address)


def test_a_quorum_marks_an_endpoint_down_for_every_agent_and_up_again(
    served: ServedController,
) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            head = await put_policy(http, served, "checkout")
            one, two = await join(served, "probe-1"), await join(served, "probe-2")
            observer = await join(served, "no-probes")  # never reports: still told

            # One agent's bad view is its own matter: stored, shown, not pushed.
            await one.send(report((A, "ejected", 1.0), (B, "healthy", 0.0)))

            async def failing_locally() -> bool:
                item = await endpoint(http, served, A)
                return bool(item["status"] == "failing" and item["failing"] == 1)

            await eventually(failing_locally)
            await observer.silent_for(0.4)  # a few evaluation rounds: nothing committed

            await two.send(report((A, "ejected", 1.0), (B, "healthy", 0.0)))
            for agent in (one, two, observer):
                delta = await agent.next()
                assert isinstance(delta, protocol.Delta), delta
                assert (delta.since, delta.revision, delta.down, delta.changes) == (
                    head,
                    head + 1,
                    [A],
                    [],
                )
                await agent.ack(delta.revision)

            # A new agent gets it in its snapshot; one that was at `head`, in its delta.
            fresh = await TestAgent.connect(served.ws_url, served.tokens["agent"], agent_id="new")
            snapshot = await fresh.next()
            assert isinstance(snapshot, protocol.SnapshotMessage) and snapshot.down == [A]
            behind = await join(served, "behind", revision=head)
            catch_up = await behind.next()
            assert isinstance(catch_up, protocol.Delta) and catch_up.down == [A]

            item = await endpoint(http, served, A)
            assert (item["status"], item["down"], item["down_revision"]) == ("down", True, head + 1)
            audit = await http.get("/v1/audit?limit=1", headers=served.auth("viewer"))
            entry = audit.json()["items"][0]
            assert (entry["actor"], entry["operation"], entry["revision"]) == (
                "quorum",
                "endpoints.down",
                head + 1,
            )

            # A tie keeps it down (hysteresis); a healthy majority brings it back.
            await one.send(report((A, "healthy", 0.0)))

            async def tie() -> bool:
                item = await endpoint(http, served, A)
                return bool(item["failing"] == 1 and item["voters"] == 2)

            await eventually(tie)
            await observer.silent_for(0.4)
            await two.send(report((A, "healthy", 0.1)))
            up = await observer.next()
            assert isinstance(up, protocol.Delta)
            assert (up.since, up.revision, up.down) == (head + 1, head + 2, [])
            for agent in (one, two, observer, fresh, behind):
                await agent.close()

    asyncio.run(scenario())


@SQLITE_ONLY
@pytest.mark.parametrize("served", [1.0], indirect=True)
def test_reports_that_go_stale_stop_counting(served: ServedController) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            head = await put_policy(http, served, "checkout")
            one, two = await join(served, "probe-1"), await join(served, "probe-2")
            for agent in (one, two):
                await agent.send(report((A, "ejected", 1.0)))
            down = await one.next()
            assert isinstance(down, protocol.Delta) and down.down == [A]
            # Both fall silent: after stale_s (1 s) no evidence keeps A down.
            up = await one.next(within=5.0)
            assert isinstance(up, protocol.Delta)
            assert (up.since, up.revision, up.down) == (head + 1, head + 2, [])
            item = await endpoint(http, served, A)
            assert item["status"] == "unknown" and all(a["stale"] for a in item["agents"])
            await one.close()
            await two.close()

    asyncio.run(scenario())


@SQLITE_ONLY
def test_endpoints_topology_and_get_endpoints_show_health_per_address_and_agent(
    served: ServedController, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            await put_policy(http, served, "checkout")
            other = policy_doc("search")
            other["spec"]["endpoints"] = [{"address": "127.0.20.1", "weight": 1}]
            other["spec"].pop("slices")
            created = await http.put(
                "/v1/policies/search", json=other, headers=served.auth("editor")
            )
            assert created.status_code == 201, created.text
            one, two = await join(served, "probe-1"), await join(served, "probe-2")
            await one.send(report((A, "healthy", 0.0), (B, "healthy", 0.6)))
            await two.send(report((A, "healthy", 0.1)))

            async def both_reported() -> bool:
                return len((await endpoint(http, served, A))["agents"]) == 2

            await eventually(both_reported)

            listing = (await http.get("/v1/endpoints", headers=served.auth("viewer"))).json()
            assert listing["down"] == [] and listing["rule"]["min_agents"] == 2
            by_address = {i["address"]: i for i in listing["items"]}
            assert list(by_address) == [A, B, "127.0.20.1"]  # numeric order
            a = by_address[A]
            assert (a["status"], a["voters"], a["failing"], a["policies"]) == (
                "healthy",
                2,
                0,
                ["checkout"],
            )
            assert a["latency_ms"] == 2.0 and a["loss"] == pytest.approx(0.05)
            assert [d["agent_id"] for d in a["agents"]] == ["probe-1", "probe-2"]
            detail = a["agents"][0]
            assert set(detail) == {
                "agent_id",
                "node_name",
                "state",
                "latency_ms",
                "loss",
                "consecutive_failures",
                "samples",
                "reported_at",
                "age_s",
                "stale",
                "failing",
            }
            assert detail["node_name"] == "node-probe-1" and detail["samples"] == 3
            assert by_address[B]["status"] == "failing"  # loss 0.6 by one agent only
            assert by_address["127.0.20.1"]["status"] == "unknown"

            only = await http.get("/v1/endpoints?policy=search", headers=served.auth("viewer"))
            assert [i["address"] for i in only.json()["items"]] == ["127.0.20.1"]
            missing = await http.get("/v1/endpoints?policy=nosuch", headers=served.auth("viewer"))
            assert missing.status_code == 404
            refused = await http.get("/v1/endpoints", headers=served.auth("agent"))
            assert refused.status_code == 403

            topology = (await http.get("/v1/topology", headers=served.auth("viewer"))).json()
            assert {a["agent_id"] for a in topology["agents"]} == {"probe-1", "probe-2"}
            assert [e["address"] for e in topology["endpoints"]] == [A, B, "127.0.20.1"]
            links = {(link["agent_id"], link["address"]): link for link in topology["links"]}
            assert sorted(links) == [("probe-1", A), ("probe-1", B), ("probe-2", A)]
            assert links[("probe-1", B)]["loss"] == pytest.approx(0.6)
            assert links[("probe-2", A)]["latency_ms"] == 2.0
            assert links[("probe-2", A)]["stale"] is False
            await one.close()
            await two.close()

    asyncio.run(scenario())

    env = {
        **os.environ,
        "DNSMESH_SERVER": served.base_url,
        "DNSMESH_TOKEN": served.tokens["viewer"],
    }
    table = run_cli("get", "endpoints", cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = ["ADDRESS", "STATUS", "ADMIN", "FAILING", "LATENCY", "LOSS", "POLICIES"]
    assert lines[0].split() == header
    assert lines[1].split() == [A, "healthy", "up", "0/2", "2.0ms", "5%", "checkout"]
    assert lines[2].split()[:4] == [B, "failing", "up", "1/1"]
    as_json = run_cli("get", "endpoints", "search", "-o", "json", cwd=tmp_path, env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert [i["address"] for i in json.loads(as_json.stdout)["items"]] == ["127.0.20.1"]
    missing = run_cli("get", "endpoints", "nosuch", cwd=tmp_path, env=env)
    assert missing.returncode != 0 and "nosuch" in missing.stdout + missing.stderr


@SQLITE_ONLY
def test_polling_agents_report_over_http_and_get_the_down_set_in_their_update(
    served: ServedController,
) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            head = await put_policy(http, served, "checkout")
            body = json.loads(protocol.encode_message(report((A, "ejected", 1.0))))
            first = await http.post(
                "/v1/agents/poll-1/report", json=body, headers=served.auth("agent")
            )
            assert first.status_code == 200, first.text
            assert first.json() == {"agent_id": "poll-1", "endpoints": 1, "down": []}
            # "type" and "v" may be left out.
            second = await http.post(
                "/v1/agents/poll-2/report",
                json={"endpoints": body["endpoints"]},
                headers=served.auth("agent"),
            )
            assert second.status_code == 200, second.text
            assert second.json()["down"] == [A]

            # A long-poll, as polling agents make: the feed learns of the committed down set
            # one notification after the report's answer, so wait=0 could race it.
            update = await http.get(
                f"/v1/changes?since={head}&wait=5&agent_id=poll-1", headers=served.auth("agent")
            )
            assert update.status_code == 200, update.text
            delta = protocol.decode_message(update.text)
            assert isinstance(delta, protocol.Delta) and delta.down == [A]

            bad = await http.post(
                "/v1/agents/poll-1/report",
                json={"endpoints": [{"address": "not-an-ip", "loss": 0, "state": "healthy"}]},
                headers=served.auth("agent"),
            )
            assert bad.status_code == 422
            assert bad.json()["error"]["code"] == "invalid_request"
            viewer = await http.post(
                "/v1/agents/poll-1/report", json=body, headers=served.auth("viewer")
            )
            assert viewer.status_code == 403

    asyncio.run(scenario())


@SQLITE_ONLY
def test_a_report_with_a_bad_address_closes_the_stream_with_an_error(
    served: ServedController,
) -> None:
    async def scenario() -> None:
        agent = await join(served, "sloppy")
        await agent.ws.send(
            json.dumps(
                {
                    "v": 1,
                    "type": "report",
                    "endpoints": [{"address": "example.com", "loss": 0, "state": "healthy"}],
                }
            )
        )
        error = await agent.next()
        assert isinstance(error, protocol.ErrorMessage) and error.code == "bad_message"
        await agent.close()

    asyncio.run(scenario())
