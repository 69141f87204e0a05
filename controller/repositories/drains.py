"""Drain rows: the operators' overrides, read, written and expired."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import DrainRow
from controller.db.session import as_utc
from dnsmesh.drains import Drained, DrainSet

EVERY_POLICY = ""  # policy_name of a drain in every policy that has the address


def drain_rows(session: Session) -> list[DrainRow]:
    query = select(DrainRow).order_by(DrainRow.address, DrainRow.policy_name)
    return list(session.scalars(query))


def live(rows: list[DrainRow], now: datetime) -> list[DrainRow]:
    """The rows not yet expired at ``now``: expired ones are gone for readers at once, even
    before the expiry's revision commits."""
    return [r for r in rows if r.until is None or as_utc(r.until) > now]


def as_set(rows: list[DrainRow]) -> DrainSet:
    return DrainSet(Drained(r.address, r.policy_name or None) for r in rows)


def read_drains(session: Session, now: datetime) -> DrainSet:
    """The drains in force at ``now`` (for snapshots: read in the same snapshot as policies)."""
    return as_set(live(drain_rows(session), now))


def find_drain(session: Session, address: str, policy: str | None) -> DrainRow | None:
    return session.get(DrainRow, (address, policy or EVERY_POLICY))


def delete_drains(session: Session, rows: list[DrainRow]) -> None:
    for row in rows:
        session.delete(row)
