"""The ``agents`` table: batched event writes, liveness updates and reads (no transactions)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controller.agent_events import Acked, AgentConnected, Event, Gone, Nacked, Seen
from controller.db.models import AgentRow, EndpointHealthRow

_AGENTS = cast(Table, AgentRow.__table__)


def write_events(session: Session, events: Sequence[Event], now: datetime) -> None:
    """Writes ``events`` in order, with one statement per run of events of one kind."""
    for kind, run in _runs(events):
        _WRITERS[kind](session, run, now)


def refresh_websocket_agents(session: Session, replica: str, now: datetime) -> None:
    """The replica is alive: its connected WebSocket agents were seen ``now``."""
    session.execute(
        update(AgentRow)
        .where(AgentRow.replica == replica, AgentRow.connected.is_(True))
        .where(AgentRow.transport == "websocket")
        .values(last_seen=now)
    )


def disconnect_websocket_agents(session: Session, replica: str, now: datetime) -> None:
    session.execute(
        update(AgentRow)
        .where(AgentRow.replica == replica, AgentRow.connected.is_(True))
        .where(AgentRow.transport == "websocket")
        .values(connected=False, disconnected_at=now)
    )


def all_agents(session: Session) -> list[AgentRow]:
    return list(session.scalars(select(AgentRow).order_by(AgentRow.agent_id)))


def find_agent(session: Session, agent_id: str) -> AgentRow | None:
    return session.get(AgentRow, agent_id)


def delete_agent(session: Session, agent_id: str) -> None:
    """The agent's row and its latest probe reports (its report history ages out alone)."""
    session.execute(delete(EndpointHealthRow).where(EndpointHealthRow.agent_id == agent_id))
    session.execute(delete(AgentRow).where(AgentRow.agent_id == agent_id))


def count_live(session: Session, seen_since: datetime, *, applied_at_least: int | None) -> int:
    """Connected agents seen since ``seen_since`` (that run ``applied_at_least`` or newer)."""
    query = select(func.count()).select_from(AgentRow).where(_live(seen_since))
    if applied_at_least is not None:
        query = query.where(AgentRow.applied_revision >= applied_at_least)
    return session.scalar(query) or 0


def live_behind(
    session: Session, seen_since: datetime, revision: int, limit: int
) -> list[AgentRow]:
    """The first ``limit`` live agents (by id) that do not run ``revision`` yet."""
    query = (
        select(AgentRow)
        .where(_live(seen_since), AgentRow.applied_revision < revision)
        .order_by(AgentRow.agent_id)
        .limit(limit)
    )
    return list(session.scalars(query))


@dataclass(frozen=True, slots=True)
class LocalDefinition:
    """A policy of a live agent's own files that has a given name or domain."""

    agent_id: str
    node_name: str
    what: str  # "name" or "domain"
    local: dict[str, str]  # {name, domain, source} as the agent reported it


def local_definitions(
    session: Session, seen_since: datetime, *, name: str | None, domain: str
) -> list[LocalDefinition]:
    """Live agents' local policies with domain ``domain`` or (if given) named ``name``.

    The JSON lists are matched here rather than in SQL, the same way on both backends; only
    agents that reported local policies are read.
    """
    return matching_definitions(live_local_policies(session, seen_since), name=name, domain=domain)


@dataclass(frozen=True, slots=True)
class LocalEntry:
    agent_id: str
    node_name: str
    local: dict[str, str]  # {name, domain, source} as the agent reported it


def live_local_policies(session: Session, seen_since: datetime) -> list[LocalEntry]:
    """Every local policy live agents reported, read once for the checks of a whole set."""
    rows = session.execute(
        select(AgentRow.agent_id, AgentRow.node_name, AgentRow.local_policies)
        .where(_live(seen_since), AgentRow.local_policies.is_not(None))
        .order_by(AgentRow.agent_id)
    )
    return [
        LocalEntry(agent_id, node_name, entry)
        for agent_id, node_name, local in rows
        for entry in local or []
    ]


def matching_definitions(
    entries: Iterable[LocalEntry], *, name: str | None, domain: str
) -> list[LocalDefinition]:
    """The entries with domain ``domain`` or (if given) named ``name``."""
    found = []
    for entry in entries:
        if name is not None and entry.local.get("name") == name:
            found.append(LocalDefinition(entry.agent_id, entry.node_name, "name", entry.local))
        elif entry.local.get("domain") == domain:
            found.append(LocalDefinition(entry.agent_id, entry.node_name, "domain", entry.local))
    return found


def _live(seen_since: datetime) -> Any:
    return and_(AgentRow.connected.is_(True), AgentRow.last_seen >= seen_since)


def _runs(events: Iterable[Event]) -> list[tuple[type, list[Any]]]:
    """Consecutive events of one kind, together; order between kinds is kept."""
    runs: list[tuple[type, list[Any]]] = []
    for event in events:
        if runs and runs[-1][0] is type(event):
            runs[-1][1].append(event)
        else:
            runs.append((type(event), [event]))
    return runs


def _write_hellos(session: Session, run: list[AgentConnected], now: datetime) -> None:
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
            "local_policies": h.local,
            "shadowed": h.shadowed,
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
    last = {a.agent_id: a for a in run}  # each agent's newest ACK says what it runs
    statement = (
        update(_AGENTS)
        .where(_AGENTS.c.agent_id == bindparam("b_agent"))
        .values(
            applied_revision=bindparam("b_revision"),
            local_policies=bindparam("b_local", type_=_AGENTS.c.local_policies.type),
            shadowed=bindparam("b_shadowed", type_=_AGENTS.c.shadowed.type),
            last_seen=now,
        )
    )
    params = [
        {
            "b_agent": a.agent_id,
            "b_revision": a.revision,
            "b_local": a.local,
            "b_shadowed": a.shadowed,
        }
        for a in last.values()
    ]
    session.connection().execute(statement, params)


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
    AgentConnected: _write_hellos,
    Acked: _write_acks,
    Nacked: _write_nacks,
    Gone: _write_gone,
    Seen: _write_seen,
}


def live_agents(
    session: Session, seen_since: datetime
) -> list[tuple[str, dict[str, str], list[dict[str, str]] | None]]:
    """(agent id, labels, shadowed) of every connected agent seen since ``seen_since``."""
    rows = session.execute(
        select(AgentRow.agent_id, AgentRow.labels, AgentRow.shadowed)
        .where(_live(seen_since))
        .order_by(AgentRow.agent_id)
    )
    return [(agent_id, dict(labels), shadowed) for agent_id, labels, shadowed in rows]
