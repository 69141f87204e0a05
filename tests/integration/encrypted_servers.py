"""Test DoT and DoH servers on loopback, answering from a FakeUpstream's rules.

``DotServer`` is DNS over TLS (RFC 7858): RFC 7766 framing on a TLS stream, answers written
as the fake produces them (so delayed ones come out of order, as pipelining allows).
``DohServer`` is DNS over HTTPS (RFC 8484) over HTTP/2 (ALPN ``h2``), built on the ``h2``
package: it answers ``POST`` of ``application/dns-message`` to its path, 415 or 404 to
anything else. Both count the TLS connections they accepted, so tests see connection reuse,
and the queries reach the fake's ``received`` list (transport ``dot`` / ``doh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import trustme
import uvicorn

from dnsmesh.tcpframing import FrameDecoder, frame
from tests.integration.fakedns import FakeUpstream, LoopThread
from tests.support.polling import wait_until
from tests.support.ports import free_port

DOH_NAME = "dns.test"  # the name an Http11DohServer's certificate is valid for


def server_context(ca: trustme.CA, *names: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A TLS server context whose certificate, issued by ``ca``, is valid for ``names``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


class _TlsServer:
    """A TLS listener on loopback that counts accepted connections and can be killed."""

    def __init__(self, loop_thread: LoopThread, context: ssl.SSLContext, host: str, port: int):
        self.loop_thread = loop_thread
        self.context = context
        self.host = host
        self.port = port
        self.accepted = 0  # TLS connections established
        self.hellos: list[str | None] = []  # the SNI of every ClientHello, even failed ones
        self.open: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None
        context.sni_callback = lambda _sock, name, _context: self.hellos.append(name)

    def protocol(self) -> asyncio.Protocol:
        raise NotImplementedError

    def start(self) -> _TlsServer:
        async def start() -> None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                self.protocol, self.host, self.port, ssl=self.context
            )
            self.port = self._server.sockets[0].getsockname()[1]

        self.loop_thread.run(start())
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection (the server died)."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for transport in list(self.open):
                transport.abort()
            if self._server is not None:
                await self._server.wait_closed()

        self.loop_thread.run(stop())

    def opened(self, transport: asyncio.Transport) -> None:
        self.accepted += 1
        self.open.add(transport)


class DotServer(_TlsServer):
    def __init__(
        self,
        loop_thread: LoopThread,
        backend: FakeUpstream,
        context: ssl.SSLContext,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(loop_thread, context, host, port)
        self.backend = backend
        # Close the connection on the next query instead of answering it: a server whose
        # idle timeout fired just as the query was written.
        self.close_on_next_query = False

    def protocol(self) -> asyncio.Protocol:
        return _DotProtocol(self)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class _DotProtocol(asyncio.Protocol):
    def __init__(self, server: DotServer) -> None:
        self.server = server
        self.frames = FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.server.opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.server.close_on_next_query:
            self.server.close_on_next_query = False
            self.transport.close()
            return
        self.frames.feed(data)
        while (message := self.frames.next_message()) is not None:

            def send(wire: bytes, transport: asyncio.Transport = self.transport) -> None:
                if not transport.is_closing():
                    transport.write(frame(wire))

            self.server.backend.handle(message, "dot", self.peer, send)


class DohServer(_TlsServer):
    def __init__(
        self,
        loop_thread: LoopThread,
        backend: FakeUpstream,
        context: ssl.SSLContext,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/dns-query",
    ) -> None:
        super().__init__(loop_thread, context, host, port)
        self.backend = backend
        self.path = path
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content-type)

    def protocol(self) -> asyncio.Protocol:
        return _H2Protocol(self)

    def url(self, host: str | None = None) -> str:
        return f"https://{host or self.host}:{self.port}{self.path}"


class _H2Protocol(asyncio.Protocol):
    def __init__(self, server: DohServer) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.headers: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.server.opened(transport)
        self.h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self.transport)

    def _flush(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except Exception:
            self.transport.abort()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.headers[event.stream_id] = {_text(k): _text(v) for k, v in event.headers or []}
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data or b""
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._request(event.stream_id)
        self._flush()

    def _request(self, stream_id: int) -> None:
        headers = self.headers.pop(stream_id)
        body = bytes(self.bodies.pop(stream_id))
        method, path = headers.get(":method", ""), headers.get(":path", "")
        media = headers.get("content-type", "")
        self.server.requests.append((method, path, media))
        if path != self.server.path:
            self._respond(stream_id, 404, b"")
        elif method != "POST" or media != "application/dns-message":
            self._respond(stream_id, 415, b"")
        else:
            self.server.backend.handle(
                body, "doh", self.peer, lambda wire: self._respond(stream_id, 200, wire)
            )

    def _respond(self, stream_id: int, status: int, body: bytes) -> None:
        if self.transport.is_closing():
            return
        with contextlib.suppress(Exception):  # the client may have reset the stream
            self.h2.send_headers(
                stream_id,
                [
                    (":status", str(status)),
                    ("content-type", "application/dns-message"),
                    ("content-length", str(len(body))),
                ],
            )
            self.h2.send_data(stream_id, body, end_stream=True)
        self._flush()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BlackHole:
    """A TCP listener that accepts and never says a word: a TLS server that hangs."""

    def __init__(self, loop_thread: LoopThread, host: str = "127.0.0.1") -> None:
        self.loop_thread = loop_thread
        self.host = host
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.BaseTransport] = []

    def start(self) -> BlackHole:
        def protocol() -> asyncio.Protocol:
            hole = self

            class _Hold(asyncio.Protocol):
                def connection_made(self, transport: asyncio.BaseTransport) -> None:
                    hole.accepted += 1
                    hole._held.append(transport)

            return _Hold()

        async def start() -> None:
            self._server = await asyncio.get_running_loop().create_server(protocol, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self.loop_thread.run(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            for transport in self._held:
                transport.close()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        self.loop_thread.run(stop())


class Http11DohServer:
    """DoH over HTTP/1.1 only: uvicorn with TLS and no ALPN ``h2``, so a client that offers
    HTTP/2 must settle for HTTP/1.1. Records the HTTP version and client port per request."""

    def __init__(
        self,
        loop_thread: LoopThread,
        backend: FakeUpstream,
        ca: trustme.CA,
        workdir: Path,
        host: str = "127.0.0.1",
    ) -> None:
        self.loop_thread = loop_thread
        self.backend = backend
        self.host = host
        self.port = free_port(host)
        cert = ca.issue_cert(DOH_NAME)
        self.cert_file, self.key_file = workdir / "doh-cert.pem", workdir / "doh-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        self.requests: list[tuple[str, str, int]] = []  # (http version, method, client port)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def url(self) -> str:
        return f"https://{self.host}:{self.port}/dns-query"

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append((scope["http_version"], scope["method"], scope["client"][1]))
        answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.backend.handle(body, "doh", tuple(scope["client"]), answered.set_result)
        wire = await answered
        headers = [(b"content-type", b"application/dns-message")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": wire})

    def start(self) -> Http11DohServer:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            ssl_certfile=str(self.cert_file),
            ssl_keyfile=str(self.key_file),
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=0.5,  # the agent keeps its connection open
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]

        async def start() -> None:
            assert self._server is not None
            self._task = asyncio.get_running_loop().create_task(self._server.serve())

        self.loop_thread.run(start())
        wait_until(lambda: self._server is not None and self._server.started, 10, "uvicorn")
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self._server is not None and self._task is not None:
                self._server.should_exit = True
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(self._task, 5)

        self.loop_thread.run(stop())
