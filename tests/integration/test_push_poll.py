"""HTTP polling for agents that cannot open a WebSocket, and ``dnsmesh get agents``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dnsmesh import protocol
from tests.integration.controller_support import policy_doc, run_cli
from tests.integration.push_support import (
    ServedController,
    TestAgent,
    agents_by_id,
    clear_agents,
    eventually,
)


@pytest.fixture
def served(database_url: str) -> Iterator[ServedController]:
    clear_agents(database_url)
    with ServedController(database_url) as controller:
        yield controller


def put_sync(served: ServedController, name: str, weight: int = 90) -> int:
    import httpx

    with httpx.Client(base_url=served.base_url, trust_env=False, timeout=10) as http:
        response = http.put(
            f"/v1/policies/{name}",
            json=policy_doc(name, weight=weight),
            headers=served.auth("editor"),
        )
    assert response.status_code in (200, 201), response.text
    revision: int = response.json()["metadata"]["revision"]
    return revision


def test_long_poll_answers_at_once_when_behind_and_as_soon_as_a_change_commits(
    served: ServedController,
) -> None:
    head = put_sync(served, "alpha")

    async def scenario() -> None:
        async with served.http() as http:
            agent = served.auth("agent")
            snapshot = await http.get("/v1/changes", params={"since": 0}, headers=agent)
            assert snapshot.status_code == 200
            message = protocol.decode_message(snapshot.content)
            assert isinstance(message, protocol.SnapshotMessage) and message.revision == head

            waiting = asyncio.create_task(
                http.get("/v1/changes", params={"since": head, "wait": 10}, headers=agent)
            )
            await asyncio.sleep(0.3)
            assert not waiting.done()
            start = time.monotonic()
            revision = await asyncio.to_thread(put_sync, served, "alpha", 50)
            response = await waiting
            took = time.monotonic() - start
            print(f"REST change -> long-poll answer: {took * 1000:.1f} ms")
            assert took < 1.0
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            delta = protocol.decode_message(response.content)
            assert isinstance(delta, protocol.Delta) and (delta.since, delta.revision) == (
                head,
                revision,
            )

            behind = await http.get(
                "/v1/changes", params={"since": head, "wait": 10}, headers=agent
            )
            assert behind.status_code == 200  # already newer: no waiting
            assert protocol.decode_message(behind.content) == delta

    asyncio.run(scenario())


def test_long_poll_times_out_with_204(served: ServedController) -> None:
    head = put_sync(served, "alpha")

    async def scenario() -> None:
        async with served.http() as http:
            start = time.monotonic()
            response = await http.get(
                "/v1/changes", params={"since": head, "wait": 0.5}, headers=served.auth("agent")
            )
            took = time.monotonic() - start
            assert response.status_code == 204 and response.content == b""
            assert 0.45 <= took < 2.0
            at_once = await http.get(
                "/v1/changes", params={"since": head}, headers=served.auth("agent")
            )
            assert at_once.status_code == 204

    asyncio.run(scenario())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("params", "role", "status"),
    [
        ({"since": 0}, "viewer", 403),
        ({"since": 0}, "editor", 403),
        ({"since": -1}, "agent", 422),
        ({"since": 0, "wait": 31}, "agent", 422),
        ({}, "agent", 422),
    ],
)
def test_long_poll_refusals(
    served: ServedController, params: dict[str, Any], role: str, status: int
) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            response = await http.get("/v1/changes", params=params, headers=served.auth(role))
            assert response.status_code == status
            assert set(response.json()["error"]) == {"code", "message", "fields"}
            anonymous = await http.get("/v1/changes", params={"since": 0})
            assert anonymous.status_code == 401

    asyncio.run(scenario())


def test_polled_acks_and_nacks_are_recorded_like_websocket_ones(
    served: ServedController, tmp_path: Path
) -> None:
    base = put_sync(served, "alpha")
    revision = put_sync(served, "alpha", 40)

    async def scenario() -> None:
        async with served.http() as http:
            agent = served.auth("agent")
            hello = {"node_name": "poller-node", "labels": {"zone": "b"}, "software": "poll/1"}
            ok = await http.post(
                "/v1/agents/poller/ack", json={**hello, "revision": revision}, headers=agent
            )
            assert ok.status_code == 200, ok.text
            assert ok.json() == {"agent_id": "poller", "applied_revision": revision}
            refused = {"revision": base, "nack": {"revision": revision, "reason": "bad weight"}}
            nacked = await http.post(
                "/v1/agents/stubborn/ack", json={**hello, **refused}, headers=agent
            )
            assert nacked.status_code == 200
            # Recorded when the POST answers: a read right after sees it.
            rows = await agents_by_id(http, served.auth("viewer"))
            assert rows["poller"]["transport"] == "poll"
            assert rows["poller"]["connected"] is True
            assert rows["poller"]["applied_revision"] == revision
            assert rows["poller"]["labels"] == {"zone": "b"}
            assert rows["stubborn"]["applied_revision"] == base
            assert rows["stubborn"]["last_nack"]["reason"] == "bad weight"
            state = (
                await http.get(f"/v1/revisions/{revision}", headers=served.auth("viewer"))
            ).json()
            assert (state["total"], state["converged"]) == (2, 1)
            assert [a["agent_id"] for a in state["pending"]] == ["stubborn"]

            # A long-poll that names the agent keeps it shown as alive.
            seen = datetime.fromisoformat(rows["poller"]["last_seen"])
            await asyncio.sleep(0.05)
            polled = await http.get(
                "/v1/changes",
                params={"since": revision, "agent_id": "poller"},
                headers=agent,
            )
            assert polled.status_code == 204

            async def seen_again() -> bool:
                rows = await agents_by_id(http, served.auth("viewer"))
                return datetime.fromisoformat(rows["poller"]["last_seen"]) > seen

            await eventually(seen_again)

            bad = await http.post("/v1/agents/poller/ack", json={"revision": 1}, headers=agent)
            assert bad.status_code == 422
            assert {f["path"] for f in bad.json()["error"]["fields"]} == {"node_name"}
            viewer = await http.post(
                "/v1/agents/poller/ack",
                json={**hello, "revision": 1},
                headers=served.auth("viewer"),
            )
            assert viewer.status_code == 403
            listing = await http.get("/v1/agents", headers=served.auth("agent"))
            assert listing.status_code == 403  # agents report; operators read

            # A WebSocket agent beside them, and the table an operator sees.
            ws_agent = await TestAgent.connect(served.ws_url, served.tokens["agent"], agent_id="ws")
            assert (await ws_agent.next()).type == "snapshot"
            await ws_agent.ack(revision)

            async def three() -> bool:
                rows = await agents_by_id(http, served.auth("viewer"))
                return "ws" in rows and rows["ws"]["applied_revision"] == revision

            await eventually(three)
            result = await asyncio.to_thread(
                run_cli,
                "get",
                "agents",
                "--server",
                served.base_url,
                "--token",
                served.tokens["viewer"],
                cwd=tmp_path,
                env={"NO_PROXY": "*", "PATH": "/usr/bin:/bin"},
            )
            assert result.returncode == 0, result.stderr
            lines = result.stdout.splitlines()
            assert lines[0].split() == [
                "ID",
                "NODE",
                "CONNECTED",
                "APPLIED",
                "SHADOWED",
                "LAST",
                "SEEN",
                "LAST",
                "NACK",
            ]
            table = {line.split()[0]: line for line in lines[1:]}
            assert set(table) == {"poller", "stubborn", "ws"}
            assert table["stubborn"].split()[1:5] == ["poller-node", "yes", str(base), "0"]
            assert table["stubborn"].endswith(f"{revision}: bad weight")
            assert table["ws"].split()[1:4] == ["node-ws", "yes", str(revision)]
            await ws_agent.close()

    asyncio.run(scenario())
