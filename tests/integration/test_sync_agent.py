"""The agent's sync client in-process against a real ``dnsmesh controller`` on loopback.

Each test starts the controller (SQLite) as a process and a SyncedAgent on the test loop
with short backoff and keepalive settings, and checks answers with dnspython and what
the controller reports in ``GET /v1/agents``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.sync.state_file import StateDir
from dnsmesh.protocol import AppliedState, SnapshotMessage, apply_update
from tests.integration.fakedns import LoopThread
from tests.integration.sync_support import (
    Controller,
    Rest,
    Synced,
    SyncedAgents,
    migrated_sqlite,
    mint_tokens,
    policy,
    running_controller,
)
from tests.support.polling import wait_until


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[Controller, Rest, dict[str, str]]]:
    url = migrated_sqlite(tmp_path / "db")
    tokens = mint_tokens(url)
    with running_controller(url, tmp_path) as controller:
        rest = Rest(controller.url, tokens["admin"])
        try:
            yield controller, rest, tokens
        finally:
            rest.close()


@pytest.fixture
def start_synced(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Callable[..., Synced]]:
    agents = SyncedAgents(loop_thread, tmp_path)
    yield agents.start
    agents.stop_all()


def local_file(path: Path, *docs: dict[str, Any]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n---\n".join(json.dumps(d) for d in docs))
    tmp.replace(path)
    return path


def test_pushed_policies_are_answered_and_the_agent_is_reported(
    mesh: tuple[Controller, Rest, dict[str, str]], start_synced: Callable[..., Synced]
) -> None:
    controller, rest, tokens = mesh
    rest.put(policy("web", ["127.0.10.1"]))
    agent = start_synced(controller.url, tokens["agent"])
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.1"], 5, "first snapshot")
    revision = rest.put(policy("web", ["127.0.10.2"]))
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.2"], 2, "the push")
    row = wait_until(
        lambda: (a := rest.agent(agent.agent_id)) and a["applied_revision"] == revision and a,
        5,
        "the ACK recorded",
    )
    assert row["connected"] and row["transport"] == "websocket"
    assert row["node_name"] == "test-node" and row["labels"] == {"zone": "t1"}
    assert row["software"].startswith("dnsmesh/") and row["last_nack"] is None
    # The same, as the agent's metrics say it (read on the agent's loop, as a scrape is).
    registry = agent.agent.server.metrics

    def sample(name: str, **labels: str) -> float | None:
        value: float | None = agent.loop_thread.call(
            lambda: registry.get_sample_value(name, labels)
        )
        return value

    assert sample("dnsmesh_agent_sync_connected", transport="websocket") == 1
    assert sample("dnsmesh_agent_sync_connected", transport="poll") == 0
    assert sample("dnsmesh_agent_snapshot_revision") == revision
    assert (sample("dnsmesh_agent_sync_last_ack_timestamp_seconds") or 0) > 1e9
    assert sample("dnsmesh_agent_sync_last_nack_timestamp_seconds") is None
    assert sample("dnsmesh_agent_sync_nacks_total") == 0
    rest.delete("web")
    wait_until(lambda: agent.resolve("web.mesh.internal") == [], 2, "the deletion")
    # The state file is written just after the swap (and before the ACK), so it may trail
    # the answers by a moment.
    state_dir = StateDir(agent.agent.state_dir.path)
    wait_until(
        lambda: (stored := state_dir.load()) is not None and stored.policies == {},
        5,
        "the deletion persisted in the state file",
    )


def test_pushed_node_label_slices_follow_the_agents_labels(
    mesh: tuple[Controller, Rest, dict[str, str]], start_synced: Callable[..., Synced]
) -> None:
    controller, rest, tokens = mesh
    doc = policy("web", ["127.0.10.1", "127.0.10.2", "127.0.10.3"])
    doc["spec"]["slices"] = [
        {"id": "t2", "match": {"node_labels": {"zone": "t2"}}, "weights": {"127.0.10.3": 0}},
        {
            "id": "t1",
            "match": {"node_labels": {"zone": "t1"}},
            "weights": {"127.0.10.1": 0, "127.0.10.2": 0},
        },
    ]
    rest.put(doc)
    # the harness's agent says hello with zone=t1: its slice (127.0.10.3 only) answers
    agent = start_synced(controller.url, tokens["agent"])
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.3"], 5, "the zone t1 slice")
    # every answer, not one by chance (the default view would draw among all three)
    answers = {tuple(agent.resolve("web.mesh.internal") or ()) for _ in range(30)}
    assert answers == {("127.0.10.3",)}


@pytest.mark.parametrize(("token", "status"), [("viewer", 403), ("unknown", 401)])
def test_a_refused_token_is_fatal_retried_slowly_and_the_state_file_still_answers(
    mesh: tuple[Controller, Rest, dict[str, str]],
    start_synced: Callable[..., Synced],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    token: str,
    status: int,
) -> None:
    caplog.set_level(logging.INFO)
    controller, rest, tokens = mesh
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.save(
        apply_update(
            AppliedState.empty(),
            SnapshotMessage(revision=3, policies=[policy("old", ["127.0.70.1"])]),
        )
    )
    agent = start_synced(controller.url, tokens.get(token, "dnsm_unknown"), fatal_retry=0.3)
    assert agent.resolve("old.mesh.internal") == ["127.0.70.1"]
    refusals = wait_until(
        lambda: [r for r in caplog.records if r.getMessage() == "sync.token_refused"][1:],
        3,
        "a second refused attempt",
    )
    assert refusals[0].levelno == logging.ERROR
    assert refusals[0].__dict__["dnsmesh_fields"]["status"] == status
    assert agent.resolve("old.mesh.internal") == ["127.0.70.1"]
    assert rest.agents() == []


class UpgradeRefusingProxy:
    """A loopback HTTP relay that answers WebSocket upgrades with 404 while ``refuse`` is set:
    what a proxy that cannot pass WebSockets does."""

    def __init__(self, loop_thread: LoopThread, target_port: int) -> None:
        self.loop_thread = loop_thread
        self.target_port = target_port
        self.refuse = True
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    def start(self) -> UpgradeRefusingProxy:
        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", 0)

        self.server = self.loop_thread.run(start())
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for writer in list(self.writers):
                writer.close()

        self.loop_thread.run(stop())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if self.refuse and b"upgrade: websocket" in head.lower():
            self.refused += 1
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers.update((writer, up_writer))
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_a_refused_upgrade_falls_back_to_polling_and_returns_to_the_websocket(
    mesh: tuple[Controller, Rest, dict[str, str]],
    start_synced: Callable[..., Synced],
    loop_thread: LoopThread,
) -> None:
    controller, rest, tokens = mesh
    proxy = UpgradeRefusingProxy(loop_thread, controller.port).start()
    try:
        agent = start_synced(f"http://127.0.0.1:{proxy.port}", tokens["agent"], ws_retry=1.0)
        wait_until(lambda: agent.transport == "poll", 5, "the fallback to polling")
        assert proxy.refused >= 1
        revision = rest.put(policy("web", ["127.0.10.7"]))
        wait_until(
            lambda: agent.resolve("web.mesh.internal") == ["127.0.10.7"], 3, "a polled change"
        )
        wait_until(
            lambda: (
                (a := rest.agent(agent.agent_id))
                and a["transport"] == "poll"
                and a["applied_revision"] == revision
            ),
            5,
            "the polling agent's report",
        )
        proxy.refuse = False
        wait_until(lambda: agent.transport == "websocket", 5, "back on the WebSocket")
        rest.put(policy("web", ["127.0.10.8"]))
        wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.8"], 2, "a push")
    finally:
        proxy.stop()


def test_forced_polling_converges(
    mesh: tuple[Controller, Rest, dict[str, str]], start_synced: Callable[..., Synced]
) -> None:
    controller, rest, tokens = mesh
    agent = start_synced(controller.url, tokens["agent"], mode="http")
    wait_until(lambda: agent.transport == "poll", 5, "polling")
    for n in range(1, 4):
        revision = rest.put(policy("web", [f"127.0.11.{n}"]))
        wait_until(
            lambda n=n: agent.resolve("web.mesh.internal") == [f"127.0.11.{n}"], 3, f"change {n}"
        )
    row = wait_until(
        lambda: (a := rest.agent(agent.agent_id)) and a["applied_revision"] == revision and a,
        5,
        "ACK",
    )
    assert row["transport"] == "poll" and row["last_nack"] is None


def test_a_hung_controller_is_detected_by_keepalive_and_rejoined(
    mesh: tuple[Controller, Rest, dict[str, str]],
    start_synced: Callable[..., Synced],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    controller, rest, tokens = mesh
    rest.put(policy("web", ["127.0.10.1"]))
    agent = start_synced(controller.url, tokens["agent"], ping_interval=0.2, ping_timeout=0.3)
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.1"], 5, "snapshot")
    with controller.paused():
        wait_until(
            lambda: any(r.getMessage() == "sync.disconnected" for r in caplog.records),
            3,
            "the keepalive noticing the silent controller",
        )
        assert agent.resolve("web.mesh.internal") == ["127.0.10.1"]
    rest.put(policy("web", ["127.0.10.2"]))
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.2"], 5, "rejoined")


def test_a_stop_between_the_swap_and_the_state_write_still_persists_what_ran(
    mesh: tuple[Controller, Rest, dict[str, str]],
    start_synced: Callable[..., Synced],
    loop_thread: LoopThread,
) -> None:
    controller, rest, tokens = mesh
    rest.put(policy("web", ["127.0.10.1"]))
    agent = start_synced(controller.url, tokens["agent"])
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.1"], 5, "first snapshot")
    sync = agent.agent.sync
    assert sync is not None
    sources = sync.sources
    # An update swapped in, as AgentSync.apply does, but stopped before its save() ran.
    update = SnapshotMessage(revision=99, policies=[policy("web", ["127.0.10.9"])])
    loop_thread.call(lambda: sources.commit(sources.prepare([update])))
    assert agent.resolve("web.mesh.internal") == ["127.0.10.9"]
    loop_thread.run(agent.agent.stop(0.2))
    stored = StateDir(agent.agent.state_dir.path).load()
    assert stored is not None and stored.revision == 99
    assert str(stored.policies["web"].spec.endpoints[0].address) == "127.0.10.9"
