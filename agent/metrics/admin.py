"""The agent's admin listener: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``, ``/explain``.

It runs on the agent's own event loop, so a scrape reads the query counters on the thread
that writes them (no lock, nothing half counted), and it needs no second server framework:
h11 parses HTTP/1.1 (the parser httpx and uvicorn use), prometheus_client formats the
samples (the text format or OpenMetrics, as the scraper's Accept asks). One request per
connection, answered with ``Connection: close``, a few connections at a time: this is for
a scraper and a kubelet, not for the world, and it listens on loopback unless told
otherwise (agent/config.py ``parse_admin_listen``).

``GET /explain?name=NAME&client=IP`` is agent/explain.py's JSON: 400 for a missing or
invalid name or client, 404 for a name no policy has or answers.

A scrape formats every series on the loop; with the label sets bounded (agent/tally.py)
that is a millisecond or so, a pause the DNS queries share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import h11
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from agent.config import HostPort
from agent.explain import BadQuestion, UnknownName
from dnsmesh.logs import fields

log = logging.getLogger(__name__)

# A request must arrive whole within this; a client that sends less is closed.
REQUEST_TIMEOUT = 5.0
# Connections served at once; more are closed at once (a scraper needs one).
MAX_CONNECTIONS = 16
_READ_SIZE = 4096

# None: ready; else the reason it is not, shown in the 503's body.
Readiness = Callable[[], str | None]
# (name, client) -> the explanation's JSON; raises BadQuestion or UnknownName.
Explainer = Callable[[str | None, str | None], dict[str, Any]]
_JSON = b"application/json"


class AdminListener:
    """``await start()`` binds (``address`` is then the bound one), ``await stop()``."""

    def __init__(
        self,
        address: HostPort,
        registry: CollectorRegistry,
        ready: Readiness,
        explain: Explainer | None = None,
    ) -> None:
        self.address = address
        self.registry = registry
        self.ready = ready
        self.explain = explain
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # SO_REUSEPORT, like the DNS listeners: a successor taking over (agent/handoff.py)
        # binds the same admin port while this agent drains, and keeps it after. Linux lets
        # only sockets of the same user join the group.
        self._server = await asyncio.start_server(
            self._connected, self.address.host, self.address.port, backlog=64, reuse_port=True
        )
        port = self._server.sockets[0].getsockname()[1]
        self.address = HostPort(self.address.host, port)
        # Tests and scripts read this line to learn the port when port 0 was asked.
        log.info("agent.admin_listening", extra=fields(address=str(self.address)))

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._open):
            task.cancel()
        if self._open:
            await asyncio.wait(list(self._open))
        await self._server.wait_closed()
        self._server = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._open) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await _read_request(conn, reader)
            head = request is not None and request.method == b"HEAD"
            writer.write(_response(conn, self._respond(request), head))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._open.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, request: h11.Request | None) -> Reply:
        if request is None:
            return Reply(400, b"bad request\n")
        path, _, query = request.target.partition(b"?")
        if request.method not in (b"GET", b"HEAD"):
            return Reply(405, b"GET only\n", extra=((b"Allow", b"GET, HEAD"),))
        if path == b"/metrics":
            accept = next((v for k, v in request.headers if k == b"accept"), b"")
            encode, content_type = choose_encoder(accept.decode("latin-1"))
            return Reply(200, encode(self.registry), content_type.encode())
        if path == b"/healthz":
            return Reply(200, b"ok\n")
        if path == b"/readyz":
            reason = self.ready()
            if reason is None:
                return Reply(200, b"ready\n")
            return Reply(503, f"not ready: {reason}\n".encode())
        if path == b"/explain" and self.explain is not None:
            return self._explain(query)
        return Reply(404, b"not found: /metrics, /healthz, /readyz, /explain\n")

    def _explain(self, query: bytes) -> Reply:
        try:
            params = parse_qs(query.decode("utf-8"), errors="strict")
        except UnicodeDecodeError:
            return _json(400, {"error": "the query string is not UTF-8"})
        assert self.explain is not None
        try:
            body = self.explain(_one(params, "name"), _one(params, "client"))
        except BadQuestion as exc:
            return _json(400, {"error": str(exc)})
        except UnknownName as exc:
            return _json(404, {"error": str(exc)})
        return _json(200, body)


def _one(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[-1] if values else None


def _json(status: int, body: dict[str, Any]) -> Reply:
    return Reply(status, json.dumps(body, indent=1).encode() + b"\n", _JSON)


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    extra: tuple[tuple[bytes, bytes], ...] = ()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The request's head (a body, if any, is not read), or None when it is not HTTP/1.x
    (answered 400). ConnectionError when the client goes away before a whole request."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if isinstance(event, h11.Request):
            return event
        if event is not h11.NEED_DATA:
            raise ConnectionResetError("closed before a whole request")
        conn.receive_data(await reader.read(_READ_SIZE))


def _response(conn: h11.Connection, reply: Reply, head: bool) -> bytes:
    headers = [
        (b"Content-Type", reply.content_type),
        (b"Content-Length", str(len(reply.body)).encode()),
        (b"Connection", b"close"),
        (b"Cache-Control", b"no-store"),
        *reply.extra,
    ]
    reason = HTTPStatus(reply.status).phrase.encode()
    out = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reason))
    if not head:
        out = (out or b"") + (conn.send(h11.Data(data=reply.body)) or b"")
    return out or b""
