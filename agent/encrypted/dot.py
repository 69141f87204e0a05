"""DNS over TLS (RFC 7858): one reused, pipelined connection per upstream.

Queries share the upstream's one TLS connection (RFC 7858 §3.4 asks for reuse; a handshake
costs a round trip or two and CPU on both sides) and are pipelined on it with RFC 7766
framing: each is written at once, and a reader task hands each answer to its asker by
message ID (answers may come out of order, RFC 7766 §6.2.1.1). The connection is closed after
``idle_timeout`` without a query in flight. When a *reused* connection turns out closed by
the server (its own idle timeout) before our answer, the query is asked once more on a fresh
one; a fresh connection that fails is the upstream's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl

from agent.config import TlsUpstream
from agent.encrypted import Question, StreamFailure
from dnsmesh.dnsforward import UpstreamAnswer
from dnsmesh.tcpframing import FrameDecoder, frame

_READ = 65535 + 2


class _Closed(StreamFailure):
    """The connection ended before our answer."""


class _Connection:
    """One TLS connection: writes framed queries, dispatches answers by ID."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        idle_timeout: float,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._idle_timeout = idle_timeout
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._idle: asyncio.TimerHandle | None = None
        self.closed = False
        self._reading = asyncio.get_running_loop().create_task(self._read())
        self._arm_idle()

    async def ask(self, question: Question) -> UpstreamAnswer:
        if self.closed:
            raise _Closed("connection closed")
        msg_id = _free_id(self._pending)
        answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = answered
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            self._writer.write(frame(question.packet(msg_id)))
            data = await answered
        finally:
            if self._pending.get(msg_id) is answered:
                del self._pending[msg_id]
            self._arm_idle()
        return question.answer(data, msg_id)

    def _arm_idle(self) -> None:
        if not self._pending and not self.closed and self._idle is None:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self._idle_timeout, self.close)

    async def _read(self) -> None:
        frames = FrameDecoder()
        reason = "closed by the server"
        try:
            while True:
                data = frames.next_message()
                if data is None:
                    chunk = await self._reader.read(_READ)
                    if not chunk:
                        break
                    frames.feed(chunk)
                    continue
                if len(data) < 2:
                    continue
                waiter = self._pending.pop(int.from_bytes(data[:2], "big"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(data)
                # else: an answer nobody waits for (its asker gave up); drop it
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            reason = f"connection failed: {exc}"
        finally:
            self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.closed = True
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(_Closed(reason))
        self._pending.clear()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._writer.close()

    def close(self) -> None:
        """Close now (idle, or the upstream left the list); pending askers fail."""
        self._idle = None
        self._reading.cancel()
        self._finish("closed")

    async def wait_closed(self) -> None:
        with contextlib.suppress(BaseException):
            await self._reading
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


def _free_id(pending: dict[int, asyncio.Future[bytes]]) -> int:
    while True:
        msg_id = int.from_bytes(os.urandom(2), "big")
        if msg_id not in pending:
            return msg_id


class DotClient:
    """Queries one DoT upstream over its connection, opening one when there is none."""

    def __init__(
        self,
        upstream: TlsUpstream,
        context: ssl.SSLContext,
        idle_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.upstream = upstream
        # The handshake runs in its own task, outliving the attempt that started it: without
        # a bound of its own, a server that accepts and never answers (or dropped SYNs)
        # would hold every later query on it for the OS's minutes.
        self._connect_timeout = connect_timeout
        self._context = context
        self._idle_timeout = idle_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def query(self, question: Question) -> UpstreamAnswer:
        for _ in range(2):
            connection, fresh = await self._get()
            try:
                return await connection.ask(question)
            except _Closed:
                if fresh:
                    raise
        raise StreamFailure("the server closed two connections before answering")

    async def _get(self) -> tuple[_Connection, bool]:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection, False
        connecting = self._connecting
        if connecting is None:
            # Its own task, shared: one asker giving up must not abort the handshake for
            # the others waiting on it.
            connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting = connecting
            connecting.add_done_callback(self._connected)
        return await asyncio.shield(connecting), True

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._connection = task.result()

    async def _connect(self) -> _Connection:
        up = self.upstream
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    up.host, up.port, ssl=self._context, server_hostname=up.name
                )
        except TimeoutError:
            raise StreamFailure(f"no TLS handshake in {self._connect_timeout:.2f}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise StreamFailure(
                f"certificate refused for {up.name}: {exc.verify_message}"
            ) from None
        except (OSError, EOFError) as exc:
            raise StreamFailure(f"TLS connection failed: {exc}") from None
        return _Connection(reader, writer, self._idle_timeout)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        if self._connection is not None:
            self._connection.close()
            await self._connection.wait_closed()
            self._connection = None
