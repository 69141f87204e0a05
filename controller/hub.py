"""The push hub: serves every connected agent the revisions it lacks, in order, as they commit.

Modelled on go-control-plane's snapshot cache: the feed (controller.feed) knows the head
revision and builds shared updates; the hub keeps, per agent session, the revision it last
sent. When the head moves, every session behind it is woken and sent one update from where
it is to the head. Commits wake the hub through controller.notify (in-process hook, and
LISTEN/NOTIFY across replicas), and a catch-up poll bounds the delay if a wake-up is lost.

The protocol an agent speaks is documented in controller/api/agents.py; the messages are
dnsmesh.protocol's. Agent state goes to the agents table through controller.recorder.

An agent that connected with its certificate (controller/agent_trust.py) is held to it:
its hello must name its own node, and once its certificate is revoked its stream is
closed at the next round of the watcher (at once when a NOTIFY wakes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from controller.agent_events import Acked, AgentConnected, Event, Gone, Nacked, Seen
from controller.agent_trust import AgentTrust
from controller.db.session import Database
from controller.feed import Feed, Moved, Update
from controller.identity import AgentIdentity
from controller.identity_refusals import Refusal
from controller.metrics import ControllerMetrics
from controller.notify import PgListener, add_commit_listener, remove_commit_listener
from controller.push_settings import PushSettings
from controller.quorum_monitor import QuorumMonitor
from controller.recorder import AgentRecorder
from controller.services.agent_state import AgentInfo, AgentStateService, Convergence
from controller.services.health_view import HealthView
from controller.share_monitor import ShareMonitor
from dnsmesh import protocol
from dnsmesh.logs import fields
from dnsmesh.protocol import Document

log = logging.getLogger("dnsmesh.controller.hub")

# WebSocket close codes (RFC 6455 §7.4.2: 4000-4999 are for applications).
CLOSE_PROTOCOL_ERROR = 4400  # a message that is not valid, or not expected now
CLOSE_REPLACED = 4409  # the same agent id connected again to this replica
CLOSE_HELLO_TIMEOUT = 4408  # no hello within hello_timeout_s
CLOSE_IDENTITY = 4403  # the certificate was revoked, or names another node than the hello
CLOSE_INTERNAL = 1011  # RFC 6455: the server hit an unexpected condition


class Channel(Protocol):
    """One agent connection as the hub sees it (the API adapts Starlette's WebSocket)."""

    async def send(self, text: str) -> None: ...

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the peer is gone."""

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(eq=False, slots=True)
class AgentSession:
    agent_id: str
    session: str
    channel: Channel
    sent: int  # the revision the agent has been sent (its hello's before the first update)
    acked: int  # the last revision it ACKed (or its hello's): what it runs
    refused: int = -1  # the last revision it NACKed: no resend until the head passes it
    force_snapshot: bool = False
    identity: AgentIdentity | None = None  # the certificate it connected with
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    """One per controller process; its tasks start with the first agent (or ``start()``)."""

    def __init__(
        self,
        db: Database,
        settings: PushSettings,
        *,
        feed: Feed,
        agents: AgentStateService,
        recorder: AgentRecorder,
        health: QuorumMonitor,
        share: ShareMonitor,
        trust: AgentTrust,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.db = db
        self.trust = trust
        self.metrics = metrics or ControllerMetrics()
        self.settings = settings
        self.feed = feed
        self.agents = agents
        self.recorder = recorder
        self.health = health
        self.share = share  # answer reports and the served-share drift
        self.sessions: dict[str, AgentSession] = {}  # by agent id
        self.listener: PgListener | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Reads the head and starts the watcher, recorder and LISTEN tasks (idempotent)."""
        started = self._started
        if started is None or (started.done() and started.exception() is not None):
            # First use, or the last try failed (database away): try (again) now.
            started = self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(started)

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.agents.release, self.settings.replica_id)
        await self.feed.start()
        await self.feed.snapshot()  # the copy stale reads are served from (known_policies)
        add_commit_listener(self._wake_threadsafe)
        self._spawn(self._watch(), "watch")
        self._spawn(
            self.recorder.run(has_agents=lambda: bool(self.sessions), written=self._agents_written),
            "recorder",
        )
        self._spawn(self.health.run(), "health")
        self._spawn(self.share.run(), "share")
        if self.db.engine.dialect.name == "postgresql":
            self.listener = PgListener(self.db.engine.url, self._on_notify)
            self._spawn(self.listener.run(), "listen")
        log.info(
            "hub.started",
            extra=fields(replica=self.settings.replica_id, revision=self.feed.head),
        )

    async def stop(self) -> None:
        if self._started is None:
            return
        remove_commit_listener(self._wake_threadsafe)
        for session in list(self.sessions.values()):
            await session.channel.close(1001, "controller stopping")
        await self.recorder.flush(within_s=5.0)
        await self.health.flush(within_s=2.0)
        await self.share.flush(within_s=2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.agents.release, self.settings.replica_id)
        self._started = None

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(work, name=f"hub-{name}"))

    def _wake_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake.set)

    def _on_notify(self, _revision: int) -> None:
        self._wake.set()

    def _agents_written(self, batch: Sequence[Event]) -> None:
        # Connects, disconnects and ACKs (which carry the shadowed names) change who may
        # probe; a Seen only keeps a row fresh, which the assignment's refresh covers.
        if any(not isinstance(event, Seen) for event in batch):
            self.health.probing.touch()

    # -- what the routes ask (polling agents, operators) ------------------------------------

    async def record_seen(self, agent_id: str) -> None:
        """A polling agent is alive (its long-poll)."""
        await self.start()
        self.metrics.polled(agent_id)
        self.recorder.record(Seen(agent_id))

    async def record_poll(self, hello: AgentConnected, nack: Nacked | None) -> None:
        """A polling agent's hello and ACK (or NACK), written before this returns."""
        await self.start()
        self.metrics.polled(hello.agent_id)
        self.metrics.acked(hello.agent_id, hello.revision)
        self.recorder.record(hello)
        if nack is not None:
            self.metrics.nacks.inc()
            self.recorder.record(nack)
        await self.recorder.flush()  # the answer means "recorded": a read right after sees it

    async def record_report(self, agent_id: str, report: protocol.Report) -> bool:
        """A polling agent's probe report, written and evaluated; False if not yet stored."""
        await self.start()
        self.recorder.record(Seen(agent_id))
        self.health.record(agent_id, report)
        return await self.health.flush()

    async def record_answers(self, agent_id: str, report: protocol.AnswerReport) -> bool:
        """A polling agent's answer report, written; False if not yet stored."""
        await self.start()
        self.recorder.record(Seen(agent_id))
        self.share.record(agent_id, report)
        return await self.share.flush()

    async def down(self) -> list[str]:
        return await asyncio.to_thread(self.health.service.down)

    async def health_view(self) -> HealthView:
        return await asyncio.to_thread(self.health.service.view)

    async def list_agents(self) -> list[AgentInfo]:
        return await asyncio.to_thread(self.agents.list)

    def known_policies(self) -> tuple[int, list[Document]] | None:
        """(revision, policies by name) as served to agents, read without the database;
        None before the hub has started or while its copy is being rebuilt."""
        return self.feed.known_policies() if self._started is not None else None

    async def convergence(self, revision: int, *, limit: int) -> Convergence:
        return await asyncio.to_thread(self.agents.convergence, revision, limit=limit)

    # -- following the database ----------------------------------------------------------

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        compacted_at = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.catch_up_s)
            self._wake.clear()
            try:
                await self.catch_up()
                await self.drop_revoked()
                if self.feed.known_policies() is None:  # lost to a gap: read them again
                    await self.feed.snapshot()
                if loop.time() - compacted_at >= 1.0:  # at most one DELETE a second
                    compacted_at = loop.time()
                    await self.feed.compact()
            except Exception as error:  # the database is away: the next round retries
                self.metrics.database_errors.labels("hub").inc()
                log.warning("hub.catch_up_failed", extra=fields(error=str(error)))

    async def catch_up(self) -> None:
        """Reads the committed revision; if it moved, wakes every session behind it."""
        moved = await self.feed.catch_up()
        if moved is Moved.NO:
            return
        self.health.probing.touch()  # the policies may have changed
        self.metrics.committed(self.feed.head)
        for session in self.sessions.values():
            if moved is Moved.BACK:
                session.force_snapshot = True
            session.wake.set()

    async def drop_revoked(self) -> None:
        """Closes the stream of every agent whose certificate was revoked since it connected."""
        by_serial = {s.identity.serial: s for s in self.sessions.values() if s.identity}
        if not by_serial:
            return
        for serial in await asyncio.to_thread(self.trust.registry.revoked_among, by_serial):
            session = by_serial[serial]
            node = session.identity.node_name if session.identity else ""
            message = f"the certificate of node {node!r} was revoked"
            self.trust.refusals.note(Refusal.REVOKED, message, node=node, stream="closed")
            await _fail(session.channel, CLOSE_IDENTITY, "revoked", message)

    # -- long-polling ----------------------------------------------------------------------

    async def poll(self, since: int, wait: float, *, mesh_id: str | None = None) -> Update | None:
        """The update from ``since`` as soon as there is one, or None after ``wait`` seconds.

        A ``mesh_id`` other than this mesh's gets a snapshot: its revision is another's."""
        await self.start()
        if self._other_mesh(mesh_id, since, "poll"):
            return await self.feed.update_for(since, snapshot=True)
        if since > self.feed.head:
            await self.catch_up()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while since != 0 and since == self.feed.head:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self.feed.wait_moved(remaining):
                return None
        return await self.feed.update_for(since, snapshot=since == 0)

    # -- one WebSocket agent ----------------------------------------------------------------

    def _other_mesh(self, mesh_id: str | None, revision: int, agent: str) -> bool:
        if mesh_id is None or mesh_id == self.feed.mesh_id:
            return False
        log.info(
            "agent.other_mesh",
            extra=fields(
                agent=agent,
                agent_mesh=mesh_id,
                mesh=self.feed.mesh_id,
                revision=revision,
                outcome="a snapshot, not a delta",
            ),
        )
        return True

    async def serve(self, channel: Channel, identity: AgentIdentity | None = None) -> None:
        """Speaks the protocol with one agent until it goes; never raises.

        ``identity``: the certificate the agent connected with (None: a token)."""
        try:
            await self._serve(channel, identity)
        except Exception:
            log.exception("hub.session_failed")
            await _fail(channel, CLOSE_INTERNAL, "internal", "internal error; see the log")

    async def _serve(self, channel: Channel, identity: AgentIdentity | None) -> None:
        await self.start()
        try:
            first = await asyncio.wait_for(channel.receive(), self.settings.hello_timeout_s)
        except TimeoutError:
            await _fail(channel, CLOSE_HELLO_TIMEOUT, "hello_timeout", "send hello first")
            return
        if first is None:
            return
        hello = await _decode(channel, first)
        if hello is None:
            return
        if not isinstance(hello, protocol.Hello):
            await _fail(
                channel, CLOSE_PROTOCOL_ERROR, "expected_hello", "the first message must be hello"
            )
            return
        if identity is not None and (hello.agent_id, hello.node_name) != (
            identity.agent_id,
            identity.node_name,
        ):
            message = (
                f"the certificate is node {identity.node_name!r}'s; the hello asks as agent "
                f"{hello.agent_id!r} of node {hello.node_name!r}"
            )
            self.trust.refusals.note(
                Refusal.WRONG_NODE, message, node=identity.node_name, asked=hello.agent_id
            )
            await _fail(channel, CLOSE_IDENTITY, "wrong_node", message)
            return
        if hello.revision > self.feed.head:
            await self.catch_up()  # another replica may have pushed it before we heard
        session = AgentSession(
            agent_id=hello.agent_id,
            session=secrets.token_hex(8),
            channel=channel,
            sent=hello.revision,
            acked=hello.revision,
            force_snapshot=hello.revision == 0
            or hello.revision > self.feed.head
            or self._other_mesh(hello.mesh_id, hello.revision, hello.agent_id),
            identity=identity,
        )
        self.recorder.record(
            AgentConnected(
                agent_id=hello.agent_id,
                node_name=hello.node_name,
                labels=dict(hello.labels),
                software=hello.software,
                revision=hello.revision,
                transport="websocket",
                replica=self.settings.replica_id,
                session=session.session,
                local=_entries(hello.local),
                shadowed=_entries(hello.shadowed),
            )
        )
        previous = self.sessions.get(hello.agent_id)
        self.sessions[hello.agent_id] = session
        if previous is not None:
            await previous.channel.close(CLOSE_REPLACED, "replaced by a newer connection")
        log.debug("agent.connected", extra=fields(agent=hello.agent_id, revision=hello.revision))
        session.wake.set()
        pusher = asyncio.get_running_loop().create_task(self._push(session))
        try:
            await self._listen(session)
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pusher
            if self.sessions.get(session.agent_id) is session:
                del self.sessions[session.agent_id]
            self.recorder.record(Gone(session.agent_id, session.session))
            log.debug("agent.disconnected", extra=fields(agent=session.agent_id))

    async def _listen(self, session: AgentSession) -> None:
        while True:
            data = await session.channel.receive()
            if data is None:
                return
            message = await _decode(session.channel, data)
            if message is None:
                return
            if isinstance(message, protocol.Ack):
                session.acked = message.revision
                self.metrics.acked(session.agent_id, message.revision)
                self.recorder.record(
                    Acked(
                        session.agent_id,
                        message.revision,
                        local=_entries(message.local),
                        shadowed=_entries(message.shadowed),
                    )
                )
            elif isinstance(message, protocol.Report):
                self.health.record(session.agent_id, message)
            elif isinstance(message, protocol.AnswerReport):
                self.share.record(session.agent_id, message)
            elif isinstance(message, protocol.Nack):
                # The agent still runs what it last ACKed: the next update starts there,
                # once a revision newer than the refused one exists (no resend loop).
                session.refused = message.revision
                session.sent = session.acked
                self.metrics.nacks.inc()
                self.recorder.record(Nacked(session.agent_id, message.revision, message.reason))
                log.info(
                    "agent.nack",
                    extra=fields(
                        agent=session.agent_id, revision=message.revision, reason=message.reason
                    ),
                )
            else:
                await _fail(
                    session.channel,
                    CLOSE_PROTOCOL_ERROR,
                    "unexpected_message",
                    f"an agent may send ack, nack, report or answers here, not {message.type}",
                )
                return

    async def _push(self, session: AgentSession) -> None:
        try:
            while True:
                await session.wake.wait()
                session.wake.clear()
                while self._behind(session):
                    update = await self.feed.update_for(
                        session.sent, snapshot=session.force_snapshot
                    )
                    if update is None or (
                        update.revision <= session.sent and not session.force_snapshot
                    ):
                        break
                    session.force_snapshot = False
                    await session.channel.send(update.text)
                    session.sent = update.revision
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the connection went away under a send
            log.debug("agent.send_failed", extra=fields(agent=session.agent_id, error=str(error)))
            await session.channel.close(CLOSE_INTERNAL, "send failed")

    def _behind(self, session: AgentSession) -> bool:
        if session.force_snapshot:
            return True
        head = self.feed.head
        return session.sent < head and head > session.refused


def _entries(items: Sequence[BaseModel]) -> list[dict[str, str]]:
    return [item.model_dump() for item in items]


async def _decode(channel: Channel, data: str | bytes) -> protocol.Message | None:
    try:
        return protocol.decode_message(data)
    except protocol.ProtocolError as error:
        await _fail(channel, CLOSE_PROTOCOL_ERROR, "bad_message", str(error))
        return None


async def _fail(channel: Channel, close_code: int, code: str, message: str) -> None:
    """Tells the agent what went wrong (an ``error`` message), then closes."""
    with contextlib.suppress(Exception):
        await channel.send(
            protocol.encode_message(protocol.ErrorMessage(code=code, message=message[:1000]))
        )
    await channel.close(close_code, code)
