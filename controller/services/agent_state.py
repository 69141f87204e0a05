"""Agents as the controller last heard from them: batched writes of agent events, and reads.

One row per agent id. A WebSocket agent's row is written when it says hello, when it ACKs or
NACKs, and when its connection ends; a polling agent's on every ``POST /v1/agents/{id}/ack``
and long-poll. Writes arrive as events (controller.agent_events) and are applied many at
once (``apply``): a thousand agents ACKing one revision is one UPDATE, not a thousand
transactions.

``connected`` is what the row says *and* a fresh ``last_seen``: each replica refreshes
``last_seen`` of its own WebSocket agents every heartbeat, so the agents of a replica that
died without saying goodbye turn disconnected after ``stale_after`` on every reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy.orm import Session

from controller.agent_events import Event
from controller.db.models import AgentRow
from controller.db.session import Database, as_utc, iso
from controller.repositories import agents


@dataclass(frozen=True, slots=True)
class LastNack:
    """The last revision an agent refused, why, and when."""

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
    last_nack: LastNack | None
    # Its --policies files ({name, domain, source}) and the controller policies they shadow
    # on its node ({name, reason}), as it last reported; None: it never said (older agent).
    local_policies: list[dict[str, str]] | None = None
    shadowed: list[dict[str, str]] | None = None

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
            "local_policies": self.local_policies,
            "shadowed": self.shadowed,
        }


class Forgotten(Enum):
    """What ``AgentStateService.forget`` did."""

    DELETED = "deleted"
    UNKNOWN = "unknown"  # no agent has that id
    CONNECTED = "connected"  # refused: the agent is connected and would only come back


@dataclass(frozen=True, slots=True)
class Convergence:
    """How many connected agents run ``revision`` or newer, and which do not."""

    revision: int
    total: int
    converged: int
    pending: list[AgentInfo] = field(default_factory=list)


class AgentStateService:
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
        self.db.write(lambda session: agents.write_events(session, events, now))

    def heartbeat(self, replica: str) -> None:
        """This replica is alive: its WebSocket agents are still connected."""
        now = self.db.clock()
        self.db.write(lambda session: agents.refresh_websocket_agents(session, replica, now))

    def release(self, replica: str) -> None:
        """The replica stops: every agent it held is disconnected."""
        now = self.db.clock()
        self.db.write(lambda session: agents.disconnect_websocket_agents(session, replica, now))

    def forget(self, agent_id: str) -> Forgotten:
        """Deletes the row of an agent that is gone (a node removed for good).

        A connected agent is refused: it would be listed again at its next ACK or hello,
        and forgetting it meanwhile would hide it from convergence.
        """
        now = self.db.clock()

        def work(session: Session) -> Forgotten:
            row = agents.find_agent(session, agent_id)
            if row is None:
                return Forgotten.UNKNOWN
            if self._info(row, now).connected:
                return Forgotten.CONNECTED
            agents.delete_agent(session, agent_id)
            return Forgotten.DELETED

        return self.db.write(work)

    # -- reads ---------------------------------------------------------------------------

    def list(self) -> list[AgentInfo]:
        now = self.db.clock()
        return self.db.read(
            lambda session: [self._info(row, now) for row in agents.all_agents(session)]
        )

    def convergence(self, revision: int, *, limit: int = 100) -> Convergence:
        """Counted in the database (no row per agent read); at most ``limit`` pending listed."""
        now = self.db.clock()
        seen_since = now - self.stale_after

        def work(session: Session) -> Convergence:
            total = agents.count_live(session, seen_since, applied_at_least=None)
            converged = agents.count_live(session, seen_since, applied_at_least=revision)
            behind = agents.live_behind(session, seen_since, revision, limit)
            return Convergence(revision, total, converged, [self._info(r, now) for r in behind])

        return self.db.read(work)

    def _info(self, row: AgentRow, now: datetime) -> AgentInfo:
        last_seen = as_utc(row.last_seen)
        fresh = now - last_seen <= self.stale_after
        nack = None
        if row.nack_revision is not None and row.nack_at is not None:
            nack = LastNack(row.nack_revision, row.nack_reason or "", iso(row.nack_at))
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
            local_policies=row.local_policies,
            shadowed=row.shadowed,
        )
