"""Helpers for the push tests: a controller served on loopback in a thread, and test agents.

``ServedController`` runs the real app under uvicorn on a free loopback port (the same
server the ``dnsmesh controller`` process runs, minus the process start), so tests can
reach its hub and use short ping and catch-up intervals. ``TestAgent`` is a real
``websockets`` client speaking dnsmesh.protocol, as an agent would.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from ssl import SSLContext
from typing import Any

import httpx
import uvicorn
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect

from controller.api import create_app
from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.session import Database
from controller.hub import Hub
from controller.push_settings import PushSettings
from controller.server import bind
from dnsmesh import protocol

ROLES = ("admin", "editor", "viewer", "agent")


def fast_settings(**overrides: Any) -> PushSettings:
    """Short intervals so tests see keepalive and catch-up in well under a second."""
    values: dict[str, Any] = {
        "ping_interval_s": 1.0,
        "hello_timeout_s": 2.0,
        "catch_up_s": 0.5,
        "heartbeat_s": 1.0,
        "replica_id": "test-replica",
    }
    values.update(overrides)
    return PushSettings(**values)


def clear_agents(url: str) -> None:
    engine = build_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM agents"))
    finally:
        engine.dispose()


class ServedController:
    """The controller app under uvicorn in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, database_url: str, settings: PushSettings | None = None) -> None:
        self.database_url = database_url
        self.settings = settings or fast_settings()
        self.engine = build_engine(database_url)
        self.db = Database(self.engine)
        self.app = create_app(self.db, self.settings)
        self.tokens: dict[str, str] = {}
        self.base_url = ""
        self.ws_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.state.hub
        return hub

    def __enter__(self) -> ServedController:
        store = TokenStore(self.db)
        suffix = self.settings.replica_id
        self.tokens = {
            role: store.create(f"{role}-{suffix}", role, actor="test")[1] for role in ROLES
        }
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws_ping_interval=self.settings.ping_interval_s,
            ws_ping_timeout=self.settings.ping_interval_s,
            ws_per_message_deflate=self.settings.ws_deflate,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.__exit__()
                raise AssertionError("the served controller did not start")
            time.sleep(0.01)
        self._sock = sock
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/v1/agents/stream"
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        with contextlib.suppress(AttributeError, OSError):
            self._sock.close()
        self.engine.dispose()

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def http(self) -> httpx.AsyncClient:
        """An async client on this controller (no proxies from the environment)."""
        return httpx.AsyncClient(base_url=self.base_url, trust_env=False, timeout=10)


class TestAgent:
    """One WebSocket agent: hello, then read updates and answer ACK/NACK."""

    __test__ = False  # not a pytest test class

    def __init__(self, ws: ClientConnection, agent_id: str) -> None:
        self.ws = ws
        self.agent_id = agent_id

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | None,
        *,
        agent_id: str = "agent-1",
        revision: int = 0,
        node_name: str | None = None,
        labels: dict[str, str] | None = None,
        hello: bool = True,
        ping_interval: float | None = 20,
        ssl: SSLContext | None = None,
        mesh_id: str | None = None,
    ) -> TestAgent:
        """``token`` None: no Authorization header (an agent with a client certificate in
        ``ssl``)."""
        ws = await connect(
            url,
            additional_headers={} if token is None else {"Authorization": f"Bearer {token}"},
            ssl=ssl,
            proxy=None,
            open_timeout=10,
            ping_interval=ping_interval,
        )
        agent = cls(ws, agent_id)
        if hello:
            await agent.send(
                protocol.Hello(
                    agent_id=agent_id,
                    node_name=node_name or f"node-{agent_id}",
                    labels=labels or {"zone": "a"},
                    software="dnsmesh-test/1",
                    revision=revision,
                    mesh_id=mesh_id,
                )
            )
        return agent

    async def send(self, message: Any) -> None:
        await self.ws.send(protocol.encode_message(message))

    async def next(self, within: float = 5.0) -> protocol.Message:
        data = await asyncio.wait_for(self.ws.recv(), within)
        return protocol.decode_message(data)

    async def silent_for(self, seconds: float) -> None:
        """Asserts nothing arrives for ``seconds``."""
        try:
            data = await asyncio.wait_for(self.ws.recv(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {data!r}")

    async def ack(self, revision: int) -> None:
        await self.send(protocol.Ack(revision=revision))

    async def nack(self, revision: int, reason: str) -> None:
        await self.send(protocol.Nack(revision=revision, reason=reason))

    async def close(self) -> None:
        await self.ws.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 5.0, every: float = 0.02
) -> float:
    """Polls ``check`` until it is true; returns the seconds it took (fails after ``within``)."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(every)


async def agents_by_id(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await http.get("/v1/agents", headers=headers)
    assert response.status_code == 200, response.text
    return {a["agent_id"]: a for a in response.json()["items"]}
