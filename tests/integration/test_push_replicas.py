"""Several controllers on one database: LISTEN/NOTIFY across replicas, and the catch-up poll."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed

from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database
from dnsmesh import protocol
from tests.integration.controller_support import (
    admin_postgres_url,
    policy_doc,
    temporary_postgres_database,
)
from tests.integration.fakedns import LoopThread
from tests.integration.push_support import ServedController, TestAgent, eventually, fast_settings
from tests.integration.sync_support import SyncedAgents
from tests.support.controller import ControllerProcess
from tests.support.polling import wait_until


@pytest.fixture
def shared_postgres() -> Iterator[tuple[str, dict[str, str]]]:
    """A migrated database of its own (replicas start and stop on it) and a token per role."""
    with temporary_postgres_database("replicas") as url:
        engine = build_engine(url)
        try:
            upgrade(engine)
            tokens = TokenStore(Database(engine))
            secrets = {
                role: tokens.create(f"{role}-token", role, actor="test")[1]
                for role in ("editor", "agent", "viewer")
            }
        finally:
            engine.dispose()
        yield url, secrets


def client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=10,
    )


@pytest.mark.postgres
def test_a_change_through_one_replica_reaches_an_agent_on_another(
    shared_postgres: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, tokens = shared_postgres
    # Replica B polls the revision only every 30 s: within a second, only NOTIFY can tell it.
    quiet = ("--catch-up-interval", "30", "--ping-interval", "1")
    with (
        ControllerProcess(url, tmp_path, "--replica-id", "replica-a", *quiet) as a,
        ControllerProcess(url, tmp_path, "--replica-id", "replica-b", *quiet) as b,
        client(a.base_url, tokens["editor"]) as editor_a,
        client(a.base_url, tokens["viewer"]) as viewer_a,
    ):
        first = editor_a.put("/v1/policies/alpha", json=policy_doc("alpha"))
        assert first.status_code == 201
        head = first.json()["metadata"]["revision"]
        stream_b = b.base_url.replace("http://", "ws://") + "/v1/agents/stream"

        async def scenario() -> None:
            agent = await TestAgent.connect(
                stream_b, tokens["agent"], agent_id="on-b", revision=head
            )
            await agent.silent_for(0.3)
            latencies = []
            revision = head
            for weight in (70, 50, 30):
                start = time.monotonic()
                response = await asyncio.to_thread(
                    editor_a.put, "/v1/policies/alpha", json=policy_doc("alpha", weight=weight)
                )
                assert response.status_code == 200
                delta = await agent.next(within=3)
                latencies.append(time.monotonic() - start)
                assert isinstance(delta, protocol.Delta)
                assert delta.since == revision
                revision = response.json()["metadata"]["revision"]
                assert delta.revision == revision
                await agent.ack(revision)
            print(
                "replica A change -> agent on replica B: "
                + ", ".join(f"{s * 1000:.1f} ms" for s in latencies)
            )
            assert max(latencies) < 1.0

            def seen_on_a() -> dict[str, object]:
                items = viewer_a.get("/v1/agents").json()["items"]
                return {i["agent_id"]: i for i in items}.get("on-b") or {}

            async def recorded() -> bool:
                row = await asyncio.to_thread(seen_on_a)
                return row.get("applied_revision") == revision and row.get("connected") is True

            await eventually(recorded)
            assert (await asyncio.to_thread(seen_on_a))["replica"] == "replica-b"
            converged = viewer_a.get(f"/v1/revisions/{revision}").json()
            assert (converged["total"], converged["converged"]) == (1, 1)

            # B stops: its agent is told (1012 service restart) and shown disconnected.
            b.__exit__(None, None, None)
            with pytest.raises(ConnectionClosed) as closed:
                await agent.next(within=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)

            async def released() -> bool:
                return (await asyncio.to_thread(seen_on_a)).get("connected") is False

            await eventually(released, within=5)

        asyncio.run(scenario())


def _kill_listeners(url: str) -> int:
    database = make_url(url).database
    admin = make_url(admin_postgres_url()).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'dnsmesh-controller-listen'",
            (database,),
        ).fetchall()
    return len(rows)


@pytest.mark.postgres
def test_the_listener_reconnects_and_notifications_flow_again(
    shared_postgres: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, tokens = shared_postgres
    settings = fast_settings(catch_up_s=30.0)  # only NOTIFY can deliver in time
    with (
        ControllerProcess(url, tmp_path, "--replica-id", "writer") as writer,
        client(writer.base_url, tokens["editor"]) as editor,
        ServedController(url, settings) as served,
    ):

        async def scenario() -> None:
            agent = await TestAgent.connect(served.ws_url, tokens["agent"], agent_id="listening")
            assert (await agent.next()).type == "snapshot"
            listener = served.hub.listener
            assert listener is not None

            async def listening(times: int) -> bool:
                return listener.connections == times and listener.connected.is_set()

            await eventually(lambda: listening(1))
            assert await asyncio.to_thread(_kill_listeners, url) == 1
            await eventually(lambda: listening(2), within=10)
            start = time.monotonic()
            response = await asyncio.to_thread(
                editor.put, "/v1/policies/alpha", json=policy_doc("alpha")
            )
            assert response.status_code == 201
            delta = await agent.next(within=3)
            took = time.monotonic() - start
            assert isinstance(delta, protocol.Delta) and delta.revision == 1
            assert took < 1.0, took
            await agent.close()

        asyncio.run(scenario())


_WRITE = """
import json, sys
from controller.db.engine import build_engine
from controller.db.session import Database
from controller.services.policies import PolicyService
engine = build_engine(sys.argv[1])
PolicyService(Database(engine)).put_policy("alpha", json.loads(sys.argv[2]), actor="other")
engine.dispose()
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_change_nobody_announced_arrives_by_the_catch_up_poll(database_url: str) -> None:
    """Written by another process on SQLite: no notification at all, only the poll."""
    with ServedController(database_url, fast_settings(catch_up_s=0.3)) as served:

        async def scenario() -> None:
            agent = await TestAgent.connect(served.ws_url, served.tokens["agent"])
            assert (await agent.next()).type == "snapshot"
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", _WRITE, database_url, json.dumps(policy_doc("alpha"))],
                check=True,
                timeout=60,
            )
            written = time.monotonic()
            delta = await agent.next(within=3)
            assert isinstance(delta, protocol.Delta) and delta.revision == 1
            assert time.monotonic() - written < 0.3 + 0.5
            await agent.close()

        asyncio.run(scenario())


@pytest.mark.postgres
def test_agents_of_a_killed_replica_move_to_another_and_miss_nothing(
    shared_postgres: tuple[str, dict[str, str]], tmp_path: Path, loop_thread: LoopThread
) -> None:
    """Agents given both replicas (--controller A,B): A is SIGKILLed, a write goes through B
    while they move, and every agent serves it within the reconnect bound, shown on B."""
    url, tokens = shared_postgres
    with (
        ControllerProcess(url, tmp_path, "--replica-id", "replica-a") as a,
        ControllerProcess(url, tmp_path, "--replica-id", "replica-b") as b,
        client(b.base_url, tokens["editor"]) as editor,
        client(b.base_url, tokens["viewer"]) as viewer,
    ):
        first = editor.put("/v1/policies/alpha", json=policy_doc("alpha", weight=10))
        assert first.status_code == 201
        agents = SyncedAgents(loop_thread, tmp_path)
        try:
            synced = [
                agents.start(
                    a.base_url,
                    tokens["agent"],
                    controllers=(a.base_url, b.base_url),
                    state_dir=tmp_path / f"state-{n}",
                    node_name=f"node-{n}",
                )
                for n in range(3)
            ]
            ids = {s.agent_id for s in synced}

            def rows() -> dict[str, dict[str, object]]:
                items = viewer.get("/v1/agents").json()["items"]
                return {i["agent_id"]: i for i in items if i["agent_id"] in ids}

            def on(replica: str) -> bool:
                now = rows()
                return len(now) == 3 and all(
                    r["replica"] == replica and r["connected"] is True for r in now.values()
                )

            wait_until(lambda: on("replica-a"), 10, "the agents on replica A")
            assert a.process is not None
            a.process.kill()  # SIGKILL: no close frames, the kernel resets the connections
            killed = time.monotonic()
            moved = editor.put("/v1/policies/alpha", json=policy_doc("alpha", weight=20))
            assert moved.status_code == 200
            revision = moved.json()["metadata"]["revision"]
            wait_until(
                lambda: all(s.agent.sources.running.revision == revision for s in synced),
                10,
                "the write through B on every agent",
            )
            took = time.monotonic() - killed
            wait_until(lambda: on("replica-b"), 10, "the agents shown on replica B")
            assert {r["transport"] for r in rows().values()} == {"websocket"}
            print(f"replica killed -> write through the other on all 3 agents: {took:.2f} s")
            # The reconnect bound: a first retry within backoff_base, the next replica.
            assert took < 5.0
        finally:
            agents.stop_all()
