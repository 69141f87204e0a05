"""Rollout rows: where each policy's canary stands, read and written."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import AuditRow, RolloutRow


def rollout_rows(session: Session) -> list[RolloutRow]:
    return list(session.scalars(select(RolloutRow).order_by(RolloutRow.policy_name)))


def find_rollout(session: Session, policy: str) -> RolloutRow | None:
    return session.get(RolloutRow, policy)


def read_shares(session: Session) -> dict[str, int]:
    """Every rollout's canary share by policy: what a snapshot carries as ``rollouts``."""
    query = select(RolloutRow.policy_name, RolloutRow.share).order_by(RolloutRow.policy_name)
    return {name: share for name, share in session.execute(query)}


def previous_document(session: Session, policy: str) -> dict[str, object] | None:
    """The policy's document before its last write (the audit row's ``before``), or None
    when its last write created it (or none is recorded)."""
    query = (
        select(AuditRow.before)
        .where(AuditRow.target == policy)
        .where(AuditRow.operation.in_(("policy.create", "policy.update")))
        .order_by(AuditRow.id.desc())
        .limit(1)
    )
    before = session.execute(query).scalar_one_or_none()
    return before if isinstance(before, dict) else None
