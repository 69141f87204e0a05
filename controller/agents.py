"""The agents table: what every node agent runs and where it is connected, written in batches.

One row per agent id. A WebSocket agent's row is written when it says hello, when it ACKs or
NACKs, and when its connection ends; a polling agent's on every ``POST /v1/agents/{id}/ack``
and long-poll. Writes arrive as events and are applied many at once (``apply``): a thousand
agents ACKing one revision is one UPDATE, not a thousand transactions.

``connected`` is what the row says *and* a fresh ``last_seen``: each replica refreshes
``last_seen`` of its own WebSocket agents every heartbeat, so the agents of a replica that
died without saying goodbye turn disconnected after ``stale_after`` on every reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controller.db.models import AgentRow
from controller.db.session import Database, as_utc, iso

Transport = Literal["websocket", "poll"]


_AGENTS = cast(Table, AgentRow.__table__)


# -- events (what the hub and the polling routes report) ----------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """An agent (re)connected or polled: who it is, what it runs, where it is connected."""

    agent_id: str
    node_name: str
    labels: dict[str, str]
    software: str
    revision: int
    transport: Transport
    replica: str
    session: str


@dataclass(frozen=True, slots=True)
class Acked:
    agent_id: str
    revision: int


@dataclass(frozen=True, slots=True)
class Nacked:
    agent_id: str
    revision: int
    reason: str


@dataclass(frozen=True, slots=True)
class Gone:
    """The connection ``session`` of the agent ended."""

    agent_id: str
    session: str


@dataclass(frozen=True, slots=True)
class Seen:
    """The agent is alive (a long-poll): only ``last_seen`` moves."""

    agent_id: str


Event = Hello | Acked | Nacked | Gone | Seen


# -- what readers get ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nack:
    revision: int
    reason: str
    at: str

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "reason": self.reason, "at": self.at}


@dataclass(frozen=True, slots=True)
class AgentInfo:
    agent_id: str
    node_name: str
    labels: dict[str, str]
    software: str
    transport: str
    connected: bool
    replica: str | None
    first_seen: str
    connected_at: str | None
    disconnected_at: str | None
    last_seen: str
    applied_revision: int
    last_nack: Nack | None

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "node_name": self.node_name,
            "labels": self.labels,
            "software": self.software,
            "transport": self.transport,
            "connected": self.connected,
            "replica": self.replica,
            "first_seen": self.first_seen,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
            "last_seen": self.last_seen,
            "applied_revision": self.applied_revision,
            "last_nack": self.last_nack.to_json() if self.last_nack else None,
        }


@dataclass(frozen=True, slots=True)
class Convergence:
    """How many connected agents run ``revision`` or newer, and which do not."""

    revision: int
    total: int
    converged: int
    pending: list[AgentInfo] = field(default_factory=list)


class AgentRegistry:
    """Reads and batched writes of the agents table (blocking: call from a thread)."""

    def __init__(self, db: Database, *, stale_after: timedelta) -> None:
        self.db = db
        self.stale_after = stale_after

    # -- writes --------------------------------------------------------------------------

    def apply(self, events: Sequence[Event]) -> None:
        """Applies ``events`` in order, in one transaction, with one statement per run."""
        if not events:
            return
        now = self.db.clock()

        def work(session: Session) -> None:
            for kind, run in _runs(events):
                _WRITERS[kind](session, run, now)

        self.db.write(work)

    def heartbeat(self, replica: str) -> None:
        """This replica is alive: its WebSocket agents are still connected."""
        now = self.db.clock()
        self.db.write(
            lambda session: session.execute(
                update(AgentRow)
                .where(AgentRow.replica == replica, AgentRow.connected.is_(True))
                .where(AgentRow.transport == "websocket")
                .values(last_seen=now)
            )
        )

    def release(self, replica: str) -> None:
        """The replica stops: every agent it held is disconnected."""
        now = self.db.clock()
        self.db.write(
            lambda session: session.execute(
                update(AgentRow)
                .where(AgentRow.replica == replica, AgentRow.connected.is_(True))
                .where(AgentRow.transport == "websocket")
                .values(connected=False, disconnected_at=now)
            )
        )

    # -- reads ---------------------------------------------------------------------------

    def list(self) -> list[AgentInfo]:
        now = self.db.clock()

        def work(session: Session) -> list[AgentInfo]:
            rows = session.scalars(select(AgentRow).order_by(AgentRow.agent_id))
            return [self._info(row, now) for row in rows]

        return self.db.read(work)

    def convergence(self, revision: int, *, limit: int = 100) -> Convergence:
        """Counted in the database (no row per agent read); at most ``limit`` pending listed."""
        now = self.db.clock()
        live = and_(AgentRow.connected.is_(True), AgentRow.last_seen >= now - self.stale_after)
        count = select(func.count()).select_from(AgentRow).where(live)

        def work(session: Session) -> Convergence:
            total = session.scalar(count) or 0
            converged = session.scalar(count.where(AgentRow.applied_revision >= revision)) or 0
            behind = (
                select(AgentRow)
                .where(live, AgentRow.applied_revision < revision)
                .order_by(AgentRow.agent_id)
                .limit(limit)
            )
            pending = [self._info(row, now) for row in session.scalars(behind)]
            return Convergence(revision, total, converged, pending)

        return self.db.read(work)

    def _info(self, row: AgentRow, now: datetime) -> AgentInfo:
        last_seen = as_utc(row.last_seen)
        fresh = now - last_seen <= self.stale_after
        nack = None
        if row.nack_revision is not None and row.nack_at is not None:
            nack = Nack(row.nack_revision, row.nack_reason or "", iso(row.nack_at))
        return AgentInfo(
            agent_id=row.agent_id,
            node_name=row.node_name,
            labels=dict(row.labels),
            software=row.software,
            transport=row.transport,
            connected=row.connected and fresh,
            replica=row.replica,
            first_seen=iso(row.first_seen),
            connected_at=iso(row.connected_at) if row.connected_at else None,
            disconnected_at=iso(row.disconnected_at) if row.disconnected_at else None,
            last_seen=iso(last_seen),
            applied_revision=row.applied_revision,
            last_nack=nack,
        )


def _runs(events: Iterable[Event]) -> list[tuple[type, list[Any]]]:
    """Consecutive events of one kind, together; order between kinds is kept."""
    runs: list[tuple[type, list[Any]]] = []
    for event in events:
        if runs and runs[-1][0] is type(event):
            runs[-1][1].append(event)
        else:
            runs.append((type(event), [event]))
    return runs


def _write_hellos(session: Session, run: list[Hello], now: datetime) -> None:
    last = {h.agent_id: h for h in run}  # a reconnect within one batch: the newest wins
    rows = [
        {
            "agent_id": h.agent_id,
            "node_name": h.node_name,
            "labels": h.labels,
            "software": h.software,
            "transport": h.transport,
            "connected": True,
            "replica": h.replica,
            "session": h.session,
            "first_seen": now,
            "connected_at": now,
            "disconnected_at": None,
            "last_seen": now,
            "applied_revision": h.revision,
        }
        for h in last.values()
    ]
    insert = (
        postgresql.insert(_AGENTS)
        if session.get_bind().dialect.name == "postgresql"
        else sqlite.insert(_AGENTS)
    )
    kept = {"agent_id", "first_seen"}
    statement = insert.on_conflict_do_update(
        index_elements=["agent_id"],
        set_={name: insert.excluded[name] for name in rows[0] if name not in kept},
    )
    session.execute(statement, rows)


def _write_acks(session: Session, run: list[Acked], now: datetime) -> None:
    last = {a.agent_id: a.revision for a in run}
    by_revision: dict[int, list[str]] = {}
    for agent_id, revision in last.items():
        by_revision.setdefault(revision, []).append(agent_id)
    for revision, agent_ids in sorted(by_revision.items()):
        session.execute(
            update(AgentRow)
            .where(AgentRow.agent_id.in_(agent_ids))
            .values(applied_revision=revision, last_seen=now)
        )


def _write_nacks(session: Session, run: list[Nacked], now: datetime) -> None:
    statement = (
        update(_AGENTS)
        .where(_AGENTS.c.agent_id == bindparam("b_agent"))
        .values(
            nack_revision=bindparam("b_revision"),
            nack_reason=bindparam("b_reason"),
            nack_at=now,
            last_seen=now,
        )
    )
    params = [{"b_agent": n.agent_id, "b_revision": n.revision, "b_reason": n.reason} for n in run]
    session.connection().execute(statement, params)


def _write_gone(session: Session, run: list[Gone], now: datetime) -> None:
    statement = (
        update(_AGENTS)
        .where(
            and_(
                _AGENTS.c.agent_id == bindparam("b_agent"),
                _AGENTS.c.session == bindparam("b_session"),
            )
        )
        .values(connected=False, disconnected_at=now, last_seen=now)
    )
    params = [{"b_agent": g.agent_id, "b_session": g.session} for g in run]
    session.connection().execute(statement, params)


def _write_seen(session: Session, run: list[Seen], now: datetime) -> None:
    agent_ids = sorted({s.agent_id for s in run})
    session.execute(
        update(AgentRow)
        .where(AgentRow.agent_id.in_(agent_ids))
        .values(last_seen=now, connected=True)
    )


_WRITERS: dict[type, Any] = {
    Hello: _write_hellos,
    Acked: _write_acks,
    Nacked: _write_nacks,
    Gone: _write_gone,
    Seen: _write_seen,
}
