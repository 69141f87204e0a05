"""The agent's sync client: follow the controller over a WebSocket, or HTTP long-polling.

One task keeps one channel open (the controller's side is controller/api/agents.py):

* WebSocket ``/v1/agents/stream`` (ws:// from http://, wss:// from https://), the bearer
  token on the upgrade request. The agent says ``hello`` (its id, node name, labels,
  software, and the revision it runs), then applies each ``snapshot``/``delta`` and
  answers ``ack`` or ``nack``. Updates queued while one is applied are applied together:
  one compile, one snapshot swap, one state-file write, one ACK of the last revision.
* HTTP long-polling (``GET /v1/changes?since=R&wait=S`` and ``POST /v1/agents/{id}/ack``)
  with the same revision semantics, when the upgrade is refused with an HTTP answer that
  is not about the token or a server error (a proxy that cannot pass WebSockets), or when
  ``--sync http`` forces it. In ``auto`` mode the WebSocket is tried again every
  ``ws_retry`` seconds. The polling channel lives in agent/syncpoll.py, the error split
  in agent/syncerrors.py.

Errors are split the way python-websockets' reconnect loop splits them: **fatal** ones
(401/403: the token is wrong, retrying soon cannot help) are logged at error level and
retried every ``fatal_retry`` seconds; everything else (refused connections, resets, ping
timeouts, closes, 5xx) is **retryable** with exponential backoff and full jitter
(``backoff_delay``). Through all of it the agent keeps answering from its last good
snapshot: the sync client only ever swaps in a complete, valid one.

What happens when the controller's policies clash with local ``--policies`` files is
decided in agent/policysource.py: the running set wins and the newcomer is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidHeader,
    InvalidStatus,
    InvalidUpgrade,
    WebSocketException,
)

from agent.policysource import Applied, Outcome, PolicySources, Refused
from agent.statefile import StateDir
from agent.syncconfig import SyncConfig
from agent.syncerrors import Resync, SyncFatal, SyncRetry, WebSocketRefused, parse_retry_after
from agent.syncpoll import Poller
from dnsmesh.logs import fields
from dnsmesh.protocol import (
    Ack,
    AppliedState,
    Delta,
    ErrorMessage,
    Hello,
    Nack,
    ProtocolError,
    Report,
    Snapshot,
    decode_message,
    encode_message,
)

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024 * 1024  # a snapshot of many policies is far above websockets' 1 MiB
MAX_BATCH = 1000  # updates applied in one go (bounds one compile's latency)


def software_version() -> str:
    try:
        return f"dnsmesh/{metadata.version('dnsmesh')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "dnsmesh/unknown"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**attempt)).

    Spreading reconnects over the whole window (rather than base*2**n plus a little noise)
    is what stops a thousand agents from reconnecting in lockstep after a controller
    restart ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015).
    """
    return rng.uniform(0.0, min(cap, base * 2 ** min(attempt, 32)))


@dataclass(frozen=True, slots=True)
class _Closed:
    code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class _LocalApplied:
    revision: int


# Close codes of controller/hub.py worth a word in the log (RFC 6455 §7.4.2: 4000-4999 are
# the application's).
_CLOSE_HINTS = {
    4409: ": another connection uses this agent id; is the state folder shared between nodes?",
    4400: ": the controller did not understand this agent (versions apart?)",
}

_Item = Snapshot | Delta | ErrorMessage | _Closed | _LocalApplied | Report | object


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class AgentSync:
    """``await start()``/``await stop()``; follows the controller until stopped."""

    def __init__(
        self,
        config: SyncConfig,
        sources: PolicySources,
        state_dir: StateDir,
        agent_id: str,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        probe_report: Callable[[], Report] | None = None,
        probe_report_interval: float = 5.0,
    ) -> None:
        self.config = config
        # Probe results for the controller (agent/probes/monitor.py), sent batched every
        # probe_report_interval on whichever channel is open.
        self.probe_report = probe_report
        self.probe_report_interval = probe_report_interval
        self.sources = sources
        self.state_dir = state_dir
        self.agent_id = agent_id
        self.rng = rng or random.Random()
        self.clock = clock
        self.software = software_version()
        self.transport: str | None = None  # "websocket" | "poll" while connected
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._poller: Poller | None = None
        self._save_lock = asyncio.Lock()
        # What the state file holds (the state loaded at start, then each one saved): on stop,
        # anything applied since is written before exit, so a stop that lands between a swap
        # and its write does not leave the disk behind what was answered.
        self._saved: AppliedState = sources.running
        self._progress = False  # the current channel applied something (resets backoff)
        self._background: set[asyncio.Task[None]] = set()
        sources.on_pending_applied = self._on_pending_applied

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="agent-sync")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        if self.sources.running is not self._saved:
            await self.save()

    # -- the reconnect loop ----------------------------------------------------------------

    async def _run(self) -> None:
        config = self.config
        attempt = 0
        use_ws = config.mode != "http"
        while True:
            started = self.clock()
            self._progress = False
            retry_after: float | None = None
            try:
                if use_ws:
                    await self._ws_session()
                else:
                    await self._poll_session()
                    use_ws = config.mode == "auto"  # time to try the WebSocket again
                    attempt = 0
                    continue
            except SyncFatal as exc:
                log.error(
                    "sync.token_refused",
                    extra=fields(
                        status=exc.status,
                        error=str(exc),
                        controller=config.controller,
                        retry_in=config.fatal_retry,
                    ),
                )
                # Jittered too, so agents whose token was revoked together do not retry
                # in lockstep.
                await asyncio.sleep(config.fatal_retry * self.rng.uniform(0.75, 1.25))
                continue
            except WebSocketRefused as exc:
                if config.mode == "auto":
                    log.warning(
                        "sync.websocket_refused",
                        extra=fields(error=str(exc), fallback="poll", retry_ws_in=config.ws_retry),
                    )
                    use_ws = False
                    continue
                error = str(exc)
            except Resync as exc:
                error = str(exc)
                attempt = 0
            except SyncRetry as exc:
                error = _describe(exc)
                retry_after = exc.retry_after
            except (
                OSError,
                TimeoutError,
                WebSocketException,
                httpx.HTTPError,
                ProtocolError,
            ) as exc:
                error = _describe(exc)
            finally:
                self.transport = None
                self._queue = None
                self._poller = None
            if self._progress or self.clock() - started > config.backoff_cap:
                attempt = 0  # the last channel worked: the next failure is a fresh one
            delay = backoff_delay(attempt, config.backoff_base, config.backoff_cap, self.rng)
            if retry_after is not None:
                delay = max(delay, retry_after)
            attempt += 1
            log.warning(
                "sync.disconnected",
                extra=fields(error=error, attempt=attempt, retry_in=round(delay, 3)),
            )
            await asyncio.sleep(delay)

    # -- applying updates (both transports) ------------------------------------------------

    async def apply(self, updates: Sequence[Snapshot | Delta], transport: str) -> list[Outcome]:
        began = time.perf_counter()
        # Parsing and compiling a big update is CPU work: in a thread, the loop keeps
        # answering queries between GIL switches (measured with 5,000 policies, one of them
        # changed: the loop's longest stall 60 ms inline -> ~35 ms). The swap is on the loop.
        prepared = await asyncio.to_thread(self.sources.prepare, updates)
        outcomes = self.sources.commit(prepared)
        applied = [o for o in outcomes if isinstance(o, Applied)]
        if applied:
            self._progress = True
            log.info(
                "sync.applied",
                extra=fields(
                    revision=applied[-1].revision,
                    policies=len(self.sources.running.policies),
                    updates=len(updates),
                    transport=transport,
                    ms=round((time.perf_counter() - began) * 1000, 2),
                ),
            )
            await self.save()
        for outcome in outcomes:
            if isinstance(outcome, Refused):
                log.warning(
                    "sync.nack",
                    extra=fields(
                        revision=outcome.revision,
                        reason=outcome.reason,
                        running=self.sources.running.revision,
                    ),
                )
        return outcomes

    async def save(self) -> None:
        """Persist what runs (off the loop: fsync must not stall DNS answers)."""
        async with self._save_lock:
            state = self.sources.running
            try:
                await asyncio.to_thread(self.state_dir.save, state)
                self._saved = state
            except OSError as exc:
                log.error(
                    "sync.state_write_failed",
                    extra=fields(file=str(self.state_dir.state_file), error=str(exc)),
                )

    def _on_pending_applied(self, state: AppliedState) -> None:
        """A local edit let the controller's pending state run: persist it and ACK it."""
        if self._queue is not None:
            self._queue.put_nowait(_LocalApplied(state.revision))
            return
        task = asyncio.get_running_loop().create_task(self._report_pending())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report_pending(self) -> None:
        await self.save()
        poller = self._poller
        if poller is not None:
            with contextlib.suppress(httpx.HTTPError, SyncRetry, SyncFatal):
                await poller.report()

    def connected(self, transport: str, url: str) -> None:
        self.transport = transport
        log.info(
            "sync.connected",
            extra=fields(
                transport=transport,
                url=url,
                agent_id=self.agent_id,
                revision=self.sources.running.revision,
            ),
        )

    def nack_pause(self) -> float:
        """How long polling waits after a refusal that did not advance (no hot loop)."""
        return backoff_delay(3, self.config.backoff_base, 5.0, self.rng)

    # -- HTTP long-polling (agent/syncpoll.py) ---------------------------------------------

    async def _poll_session(self) -> None:
        async with Poller.client_for(self) as client:
            self._poller = Poller(self, client)
            await self._poller.run()

    # -- WebSocket ------------------------------------------------------------------------

    async def _ws_session(self) -> None:
        config = self.config
        try:
            ws = await connect(
                config.stream_url,
                additional_headers={"Authorization": f"Bearer {config.token}"},
                user_agent_header=f"{self.software} (agent)",
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
                raise SyncFatal(status, body or "the token was refused") from exc
            if status >= 500 or status == 429:
                raise SyncRetry(
                    f"the controller answered {status}: {body}",
                    retry_after=parse_retry_after(exc.response.headers.get("Retry-After")),
                ) from exc
            raise WebSocketRefused(f"the upgrade was answered with HTTP {status}") from exc
        except (InvalidUpgrade, InvalidHeader) as exc:
            raise WebSocketRefused(f"the upgrade failed: {exc}") from exc
        except InvalidHandshake as exc:  # e.g. the connection closed mid-handshake
            raise SyncRetry(f"handshake failed: {_describe(exc)}") from exc
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        async with ws:
            self.sources.resync()
            await ws.send(encode_message(self._hello()))
            self._queue = queue
            self.connected("websocket", config.stream_url)
            loop = asyncio.get_running_loop()
            helpers = [loop.create_task(_read(ws, queue))]
            if self.probe_report is not None:
                helpers.append(loop.create_task(self._report_probes(queue)))
            try:
                await self._ws_loop(ws, queue)
            finally:
                for helper in helpers:
                    helper.cancel()
                for helper in helpers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper

    def _hello(self) -> Hello:
        return Hello(
            agent_id=self.agent_id,
            node_name=self.config.node_name,
            labels=dict(self.config.labels),
            software=self.software,
            revision=self.sources.running.revision,
        )

    async def _ws_loop(self, ws: ClientConnection, queue: asyncio.Queue[_Item]) -> None:
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < MAX_BATCH:
                batch.append(queue.get_nowait())
            updates: list[Snapshot | Delta] = []
            for item in batch:
                if isinstance(item, Snapshot | Delta):
                    updates.append(item)
                    continue
                await self._ws_apply(ws, updates)
                updates = []
                if isinstance(item, Report):
                    await ws.send(encode_message(item))
                elif isinstance(item, _LocalApplied):
                    await self.save()
                    await ws.send(encode_message(Ack(revision=item.revision)))
                elif isinstance(item, ErrorMessage):
                    log.error(
                        "sync.controller_error", extra=fields(code=item.code, error=item.message)
                    )
                elif isinstance(item, _Closed):
                    hint = _CLOSE_HINTS.get(item.code or 0, "")
                    raise SyncRetry(
                        f"the controller closed the stream ({item.code} {item.reason}){hint}"
                    )
                else:
                    raise ProtocolError(f"unexpected message from the controller: {item!r}"[:200])
            await self._ws_apply(ws, updates)

    def next_probe_report(self) -> Report | None:
        """The batched probe results to send now, or None when there is nothing to say."""
        if self.probe_report is None:
            return None
        report = self.probe_report()
        return report if report.endpoints else None

    async def _report_probes(self, queue: asyncio.Queue[_Item]) -> None:
        """Queue a probe report every probe_report_interval (jittered, so that agents
        started together do not report together); the stream loop sends it in order."""
        while True:
            await asyncio.sleep(self.probe_report_interval * self.rng.uniform(0.9, 1.1))
            report = self.next_probe_report()
            if report is not None:
                queue.put_nowait(report)

    async def _ws_apply(self, ws: ClientConnection, updates: list[Snapshot | Delta]) -> None:
        if not updates:
            return
        outcomes = await self.apply(updates, "websocket")
        for outcome in outcomes:
            if isinstance(outcome, Applied):
                await ws.send(encode_message(Ack(revision=outcome.revision)))
            else:
                await ws.send(
                    encode_message(Nack(revision=outcome.revision, reason=outcome.reason))
                )
        gap = next((o for o in outcomes if isinstance(o, Refused) and o.resync), None)
        if gap is not None:
            await ws.close(1000, "resync")
            raise Resync(gap.reason)


async def _read(ws: ClientConnection, queue: asyncio.Queue[_Item]) -> None:
    """Decode every frame into the queue; a close (clean or not) becomes a _Closed item."""
    try:
        async for raw in ws:
            try:
                queue.put_nowait(decode_message(raw))
            except ProtocolError as exc:
                queue.put_nowait(_Closed(None, f"undecodable message: {exc}"[:300]))
                return
        queue.put_nowait(_Closed(ws.close_code, ws.close_reason or ""))
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        queue.put_nowait(_Closed(code, _describe(exc)))
