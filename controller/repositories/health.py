"""Endpoint health rows: agents' latest reports, their history, and the quorum's down set."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controller.db.models import AgentRow, DownRow, EndpointHealthRow, EndpointReportRow

_LATEST = cast(Table, EndpointHealthRow.__table__)
_HISTORY = cast(Table, EndpointReportRow.__table__)
_MEASURED = ("latency_ms", "loss", "state", "consecutive_failures", "samples", "reported_at")

# A report as column values: agent_id, address, the measured columns and reported_at.
ReportValues = dict[str, Any]


def upsert_latest_reports(session: Session, rows: Sequence[ReportValues]) -> None:
    """Each (agent, address)'s latest report replaces the one stored; call with sorted keys
    so that two replicas upserting overlapping rows lock them in one order."""
    dialect = session.get_bind().dialect.name
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_LATEST)
    statement = upsert.on_conflict_do_update(
        index_elements=["agent_id", "address"],
        set_={name: upsert.excluded[name] for name in _MEASURED},
    )
    session.execute(statement, list(rows))


def insert_report_history(session: Session, rows: Sequence[ReportValues]) -> None:
    session.execute(insert(_HISTORY), list(rows))


def delete_reports_before(
    session: Session, history_cutoff: datetime, latest_cutoff: datetime
) -> int:
    """Deletes history older than ``history_cutoff`` and latest rows older than
    ``latest_cutoff``; returns how many history rows went."""
    result = session.execute(
        delete(EndpointReportRow).where(EndpointReportRow.reported_at < history_cutoff)
    )
    session.execute(delete(EndpointHealthRow).where(EndpointHealthRow.reported_at < latest_cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


def read_down(session: Session) -> list[str]:
    """The stored down set, sorted (for snapshots: read in the same snapshot as policies)."""
    return list(session.scalars(select(DownRow.address).order_by(DownRow.address)))


def fresh_votes(session: Session, since: datetime) -> Iterable[Row[str, str, str, float, datetime]]:
    """(address, agent id, state, loss, reported_at) of every latest report since ``since``."""
    return session.execute(
        select(
            EndpointHealthRow.address,
            EndpointHealthRow.agent_id,
            EndpointHealthRow.state,
            EndpointHealthRow.loss,
            EndpointHealthRow.reported_at,
        ).where(EndpointHealthRow.reported_at >= since)
    )


def clear_down(session: Session, addresses: Iterable[str]) -> None:
    cleared = sorted(addresses)
    if cleared:
        session.execute(delete(DownRow).where(DownRow.address.in_(cleared)))


def add_down(
    session: Session, address: str, *, revision: int, since: datetime, voters: int, failing: int
) -> None:
    session.add(
        DownRow(address=address, revision=revision, since=since, voters=voters, failing=failing)
    )


def latest_reports(session: Session) -> list[EndpointHealthRow]:
    query = select(EndpointHealthRow).order_by(
        EndpointHealthRow.address, EndpointHealthRow.agent_id
    )
    return list(session.scalars(query))


def report_history(session: Session, address: str | None) -> list[EndpointReportRow]:
    query = select(EndpointReportRow).order_by(EndpointReportRow.id)
    if address is not None:
        query = query.where(EndpointReportRow.address == address)
    return list(session.scalars(query))


def down_rows(session: Session) -> dict[str, DownRow]:
    return {row.address: row for row in session.scalars(select(DownRow))}


def agent_names(session: Session) -> dict[str, tuple[str, dict[str, str]]]:
    """Agent id -> its node name and labels."""
    return {
        row.agent_id: (row.node_name, dict(row.labels)) for row in session.scalars(select(AgentRow))
    }
