"""The sync client's WebSocket channel: ``/v1/agents/stream`` (controller/api/agents.py).

ws:// from http://, wss:// from https://, the bearer token on the upgrade request. The
agent says ``hello`` (its id, node name, labels, software, and the revision it runs), then
feeds every frame, and its own events that must go out in order, to a ``SyncSession``
(agent/sync/session.py) and carries out its decisions. Updates queued while one is
applied are applied together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidHeader,
    InvalidStatus,
    InvalidUpgrade,
)

from agent.sync.channel import ChannelContext
from agent.sync.errors import (
    JoinRefused,
    Resync,
    SyncFatal,
    SyncRetry,
    WebSocketRefused,
    parse_retry_after,
)
from agent.sync.incoming import decode_incoming
from agent.sync.session import (
    Apply,
    Closed,
    ControllerError,
    Decision,
    Disconnect,
    Event,
    LocalChanged,
    Send,
    SyncSession,
)
from agent.sync.session import Resync as ResyncDecision
from dnsmesh.logs import fields
from dnsmesh.protocol import (
    ANSWERS_FEATURE,
    FEATURES_HEADER,
    AnswerReport,
    ProtocolError,
    encode_message,
)

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024 * 1024  # a snapshot of many policies is far above websockets' 1 MiB
MAX_BATCH = 1000  # updates applied in one go (bounds one compile's latency)


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class WebSocketChannel:
    """One stream; ``run`` returns only by raising (a close is a ``SyncRetry``)."""

    def __init__(self, context: ChannelContext) -> None:
        self.context = context
        self.session = SyncSession()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.connected = False  # the hello went out: queued answers will be sent

    def local_changed(self) -> None:
        """Queued, so the new ACK goes out in order with the stream's other answers."""
        self._queue.put_nowait(LocalChanged(self.context.sources.acknowledgement()))

    async def run(self) -> None:
        context = self.context
        ws = await _open(context)
        async with ws:
            await ws.send(encode_message(context.hello()))
            self.connected = True
            context.connected("websocket", context.config.stream_url)
            loop = asyncio.get_running_loop()
            helpers = [loop.create_task(_read(ws, self._queue))]
            if context.probe_report is not None:
                helpers.append(loop.create_task(self._report_probes()))
            if context.answer_reports is not None and accepts_answers(ws):
                helpers.append(loop.create_task(self._report_answers()))
            try:
                await self._loop(ws)
            finally:
                for helper in helpers:
                    helper.cancel()
                for helper in helpers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper
                self._keep_unsent_answers()

    async def _loop(self, ws: ClientConnection) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < MAX_BATCH:
                batch.append(queue.get_nowait())
            for decision in self.session.receive(batch):
                await self._carry_out(ws, decision)

    async def _carry_out(self, ws: ClientConnection, decision: Decision) -> None:
        if isinstance(decision, Apply):
            outcomes = await self.context.apply(decision.updates, "websocket")
            ack = self.context.sources.acknowledgement()
            for answer in self.session.applied(outcomes, ack):
                await self._carry_out(ws, answer)
        elif isinstance(decision, Send):
            try:
                await ws.send(encode_message(decision.message))
            except ConnectionClosed:
                if isinstance(decision.message, AnswerReport):
                    self._put_back(decision.message)  # it never left: the next one takes it
                raise
        elif isinstance(decision, ControllerError):
            log.error(
                "sync.controller_error", extra=fields(code=decision.code, error=decision.message)
            )
        elif isinstance(decision, Disconnect):
            raise SyncRetry(decision.reason, clean=decision.clean)
        elif isinstance(decision, ResyncDecision):
            await ws.close(1000, "resync")
            raise Resync(decision.reason)

    async def _report_probes(self) -> None:
        """Queue a probe report every probe_report_interval (jittered, so that agents
        started together do not report together); the stream loop sends it in order."""
        context = self.context
        while True:
            await asyncio.sleep(context.probe_report_interval * context.rng.uniform(0.9, 1.1))
            report = context.next_probe_report()
            if report is not None:
                self._queue.put_nowait(report)

    async def _report_answers(self) -> None:
        """Queue the answers counted since the last report, as often as probe results."""
        context = self.context
        reports = context.answer_reports
        assert reports is not None
        while True:
            await asyncio.sleep(context.probe_report_interval * context.rng.uniform(0.9, 1.1))
            report = reports.take()
            if report is not None:
                self._queue.put_nowait(report)

    def _put_back(self, report: AnswerReport) -> None:
        if self.context.answer_reports is not None:
            self.context.answer_reports.put_back(report)

    def _keep_unsent_answers(self) -> None:
        """Answer reports still queued when the channel ends were never sent: keep them."""
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if isinstance(event, AnswerReport):
                self._put_back(event)


def accepts_answers(ws: ClientConnection) -> bool:
    """Whether the controller said, in its upgrade response, that it takes answer reports
    (an older one closes the stream on a message type it does not know)."""
    response = ws.response
    if response is None:
        return False
    features = response.headers.get(FEATURES_HEADER, "")
    return ANSWERS_FEATURE in (part.strip() for part in features.split(","))


async def _open(context: ChannelContext) -> ClientConnection:
    """The upgraded connection, or the error that says what to do next."""
    config = context.config
    secure = config.stream_url.startswith("wss://")
    try:
        return await connect(
            config.stream_url,
            ssl=context.credentials.tls_context() if secure else None,
            additional_headers=context.credentials.headers(),
            user_agent_header=f"{context.software} (agent)",
            open_timeout=config.open_timeout,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=2.0,
            max_size=MAX_MESSAGE,
            proxy=None,  # the agent talks to its controller directly
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace")[:300] if exc.response.body else ""
        if status in (401, 403):
            refused = JoinRefused if context.credentials.mtls else SyncFatal
            raise refused(status, body or "the token was refused") from exc
        if status >= 500 or status == 429:
            raise SyncRetry(
                f"the controller answered {status}: {body}",
                retry_after=parse_retry_after(exc.response.headers.get("Retry-After")),
            ) from exc
        raise WebSocketRefused(f"the upgrade was answered with HTTP {status}") from exc
    except (InvalidUpgrade, InvalidHeader) as exc:
        raise WebSocketRefused(f"the upgrade failed: {exc}") from exc
    except InvalidHandshake as exc:  # e.g. the connection closed mid-handshake
        raise SyncRetry(f"handshake failed: {describe(exc)}") from exc


async def _read(ws: ClientConnection, queue: asyncio.Queue[Event]) -> None:
    """Decode every frame into the queue; a close (clean or not) becomes a Closed event."""
    try:
        while True:
            # Bytes: a big text frame is decoded in a worker thread (agent/sync/incoming.py),
            # not by websockets on the loop.
            raw = await ws.recv(decode=False)
            try:
                message = await decode_incoming(raw)
            except ProtocolError as exc:
                queue.put_nowait(Closed(None, f"undecodable message: {exc}"[:300]))
                return
            queue.put_nowait(message)
    except ConnectionClosedOK:
        queue.put_nowait(Closed(ws.close_code, ws.close_reason or ""))
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        queue.put_nowait(Closed(code, describe(exc)))
