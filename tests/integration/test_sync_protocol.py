"""The agent against a scripted controller: the cases the real hub never produces on purpose.

A revision gap, undecodable frames, an ``error`` message and application close codes are
what a buggy or newer controller (or a proxy) could send; a scripted WebSocket server on
loopback plays them, one script per connection, and records what the agent answered. A
corrupt state file at start is covered here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from agent.sync.state_file import StateDir
from dnsmesh.protocol import (
    Ack,
    Delta,
    ErrorMessage,
    Hello,
    Message,
    Nack,
    PolicyChange,
    SnapshotMessage,
    decode_message,
    encode_message,
)
from tests.integration.fakedns import LoopThread
from tests.integration.sync_support import Synced, SyncedAgents, policy
from tests.support.polling import wait_until

Script = Callable[["ScriptedController", ServerConnection], Awaitable[None]]


class ScriptedController:
    """Connection n plays scripts[n] (the last one repeats); hellos and replies are kept."""

    def __init__(self, loop_thread: LoopThread, scripts: list[Script]) -> None:
        self.loop_thread = loop_thread
        self.scripts = scripts
        self.hellos: list[Hello] = []
        self.replies: list[Message] = []
        self.server: Server | None = None
        self.url = ""

    def start(self) -> ScriptedController:
        async def start() -> Server:
            return await serve(self._handle, "127.0.0.1", 0, process_request=self._upgrade)

        self.server = self.loop_thread.run(start())
        port = self.server.sockets[0].getsockname()[1] if self.server.sockets else 0
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        self.loop_thread.run(stop())

    refuse_upgrades = 0  # answer this many upgrades with 503 + Retry-After first
    upgrades = 0

    def _upgrade(self, connection: ServerConnection, _request: Request) -> Response | None:
        self.upgrades += 1
        if self.upgrades > self.refuse_upgrades:
            return None
        response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "database away\n")
        response.headers["Retry-After"] = "0.4"
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        hello = decode_message(await ws.recv())
        assert isinstance(hello, Hello)
        self.hellos.append(hello)
        script = self.scripts[min(len(self.hellos), len(self.scripts)) - 1]
        await script(self, ws)

    async def reply(self, ws: ServerConnection) -> Message:
        message = decode_message(await asyncio.wait_for(ws.recv(), 5))
        self.replies.append(message)
        return message


@pytest.fixture
def agents(loop_thread: LoopThread, tmp_path: Path) -> Iterator[SyncedAgents]:
    started = SyncedAgents(loop_thread, tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def scripted(loop_thread: LoopThread) -> Iterator[Callable[[list[Script]], ScriptedController]]:
    servers: list[ScriptedController] = []

    def start(scripts: list[Script]) -> ScriptedController:
        server = ScriptedController(loop_thread, scripts).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def web(address: str) -> dict[str, Any]:
    return policy("web", [address])


def test_a_gap_is_nacked_and_the_agent_resumes_from_its_revision(
    agents: SyncedAgents, scripted: Callable[[list[Script]], ScriptedController]
) -> None:
    async def first(c: ScriptedController, ws: ServerConnection) -> None:
        await ws.send(encode_message(SnapshotMessage(revision=5, policies=[web("127.0.10.5")])))
        await c.reply(ws)
        gap = Delta(since=7, revision=8, changes=[PolicyChange(name="web", policy=None)])
        await ws.send(encode_message(gap))
        await c.reply(ws)
        await ws.wait_closed()

    async def second(c: ScriptedController, ws: ServerConnection) -> None:
        delta = Delta(
            since=5, revision=6, changes=[PolicyChange(name="web", policy=web("127.0.10.6"))]
        )
        await ws.send(encode_message(delta))
        await c.reply(ws)
        await ws.wait_closed()

    controller = scripted([first, second])
    agent = agents.start(controller.url, "dnsm_t")
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.6"], 5, "the resync")
    wait_until(lambda: len(controller.replies) == 3, 5, "the last ACK")
    assert [h.revision for h in controller.hellos] == [0, 5]
    ack5, nack, ack6 = controller.replies
    assert ack5 == Ack(revision=5) and ack6 == Ack(revision=6)
    assert isinstance(nack, Nack) and nack.revision == 8
    assert "starts at revision 7" in nack.reason and "at 5" in nack.reason
    assert controller.hellos[0].agent_id == controller.hellos[1].agent_id


def test_garbage_errors_and_closes_are_retried_while_the_answers_stay(
    agents: SyncedAgents,
    scripted: Callable[[list[Script]], ScriptedController],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def snapshot(c: ScriptedController, ws: ServerConnection) -> None:
        await ws.send(encode_message(SnapshotMessage(revision=2, policies=[web("127.0.10.2")])))
        await c.reply(ws)
        await ws.close(1012, "restarting")

    async def garbage(c: ScriptedController, ws: ServerConnection) -> None:
        await ws.send("this is not a dnsmesh message")
        await ws.wait_closed()

    async def error(c: ScriptedController, ws: ServerConnection) -> None:
        await ws.send(encode_message(ErrorMessage(code="bad_message", message="what?")))
        await ws.close(4400, "bad_message")

    async def healthy(c: ScriptedController, ws: ServerConnection) -> None:
        await ws.send(encode_message(SnapshotMessage(revision=3, policies=[web("127.0.10.3")])))
        await c.reply(ws)
        await ws.wait_closed()

    controller = scripted([snapshot, garbage, error, healthy])
    agent = agents.start(controller.url, "dnsm_t")
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.3"], 10, "recovery")
    assert [h.revision for h in controller.hellos] == [0, 2, 2, 2]
    errors = [
        r.__dict__["dnsmesh_fields"]["error"]
        for r in caplog.records
        if r.getMessage() == "sync.disconnected"
    ]
    assert any("1012" in e for e in errors) and any("4400" in e for e in errors)
    assert any("undecodable" in e for e in errors)
    assert any(r.getMessage() == "sync.controller_error" for r in caplog.records)


def test_a_503_upgrade_is_retried_no_sooner_than_its_retry_after(
    agents: SyncedAgents,
    scripted: Callable[[list[Script]], ScriptedController],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def snapshot(c: ScriptedController, ws: ServerConnection) -> None:
        await ws.send(encode_message(SnapshotMessage(revision=1, policies=[web("127.0.10.1")])))
        await c.reply(ws)
        await ws.wait_closed()

    controller = scripted([snapshot])
    controller.refuse_upgrades = 2
    agent = agents.start(controller.url, "dnsm_t")
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.1"], 5, "the snapshot")
    waits = [
        r.__dict__["dnsmesh_fields"]
        for r in caplog.records
        if r.getMessage() == "sync.disconnected"
    ]
    assert len(waits) == 2 and all("503" in w["error"] for w in waits)
    assert all(w["retry_in"] >= 0.4 for w in waits)  # backoff alone would be < 0.1 here
    assert agent.transport == "websocket"  # a 503 is the controller's trouble: no fallback


def test_a_corrupt_state_file_is_ignored_and_the_snapshot_replaces_it(
    agents: SyncedAgents,
    scripted: Callable[[list[Script]], ScriptedController],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "state.json").write_bytes(b'{"type": "snapshot", "revision": 4, "pol')

    async def snapshot(c: ScriptedController, ws: ServerConnection) -> None:
        await ws.send(encode_message(SnapshotMessage(revision=4, policies=[web("127.0.10.4")])))
        await c.reply(ws)
        await ws.wait_closed()

    controller = scripted([snapshot])
    agent: Synced = agents.start(controller.url, "dnsm_t")
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.4"], 5, "the snapshot")
    assert controller.hellos[0].revision == 0  # the corrupt file was not trusted
    assert any(r.getMessage() == "sync.state_corrupt" for r in caplog.records)
    saved = StateDir(tmp_path / "state").load()
    assert saved is not None and saved.revision == 4  # the snapshot replaced it, sealed
