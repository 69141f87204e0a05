"""What happened: the change log (one row per revision) and the audit log, appended and read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.db.models import AuditRow, ChangeRow
from controller.db.session import iso
from dnsmesh.drains import Drained, DrainSet
from dnsmesh.probing import Assignment
from dnsmesh.protocol import Document, Probers, assignment_of

Operation = Literal["create", "update", "delete", "down", "drain", "rollout", "probers", "scale"]
DOWN: Final = "down"  # a down-set change (controller.services.endpoint_health); policy ""
DRAIN: Final = "drain"  # a change of the drains (controller.services.drains); policy ""
ROLLOUT: Final = "rollout"  # a rollout's move (controller.services.rollouts); policy ""
PROBERS: Final = "probers"  # a new probe assignment (controller.services.probe_assignment)
SCALE: Final = "scale"  # a scaled slice's new count (controller.services.scaling); policy ""
_NOT_POLICIES = (DOWN, DRAIN, ROLLOUT, PROBERS, SCALE)


@dataclass(frozen=True, slots=True)
class Change:
    """One committed revision: the policy it touched and its document after (None: deleted).

    A change of the mesh-wide down set (operation ``down``) touches no policy (``policy``
    is empty) and its document is ``{"down": [address, ...]}``, the whole new set; a change
    of the drains (operation ``drain``) likewise, ``{"drained": [{address, policy}, ...]}``,
    and of the probe assignment (operation ``probers``), ``{"probers": <protocol.Probers>}``.
    """

    revision: int
    policy: str
    operation: Operation
    document: Document | None

    @property
    def is_down(self) -> bool:
        return self.operation == "down"

    @property
    def is_drain(self) -> bool:
        return self.operation == "drain"

    @property
    def is_rollout(self) -> bool:
        return self.operation == ROLLOUT

    @property
    def is_probers(self) -> bool:
        return self.operation == PROBERS

    @property
    def touches_policy(self) -> bool:
        return self.operation not in _NOT_POLICIES

    @property
    def rollouts(self) -> dict[str, int] | None:
        """Every policy's canary share after this change (``{"rollouts": [{policy, share}]}``),
        or None for any other change."""
        if self.operation != ROLLOUT or self.document is None:
            return None
        return {str(r["policy"]): int(r["share"]) for r in self.document.get("rollouts", [])}

    @property
    def is_scale(self) -> bool:
        return self.operation == SCALE

    @property
    def slice_scale(self) -> dict[str, dict[str, int]] | None:
        """Every scaled slice's count after this change (``{"slice_scale": [{policy, slice,
        count}]}``), or None for any other change."""
        if self.operation != SCALE or self.document is None:
            return None
        out: dict[str, dict[str, int]] = {}
        for entry in self.document.get("slice_scale", []):
            out.setdefault(str(entry["policy"]), {})[str(entry["slice"])] = int(entry["count"])
        return out

    @property
    def probers(self) -> Assignment | None:
        """The probe assignment after this change, or None for any other change."""
        if self.operation != PROBERS or self.document is None:
            return None
        return assignment_of(Probers.model_validate(self.document.get("probers", {})))

    @property
    def drains(self) -> DrainSet | None:
        """The drains after this change, or None for any other change."""
        if self.operation != "drain" or self.document is None:
            return None
        return DrainSet(
            Drained(str(d["address"]), d.get("policy")) for d in self.document.get("drained", [])
        )

    @property
    def down(self) -> list[str] | None:
        """The down set after this change, or None for a policy change."""
        if self.operation != "down" or self.document is None:
            return None
        return [str(a) for a in self.document.get("down", [])]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row: who (token name) did what to which target, with the documents."""

    id: int
    at: str
    actor: str
    operation: str
    target: str
    revision: int | None
    before: Document | None
    after: Document | None


def append_change(
    session: Session,
    revision: int,
    policy: str,
    operation: Operation,
    document: Document | None,
    at: datetime,
) -> None:
    session.add(
        ChangeRow(
            revision=revision,
            policy_name=policy,
            operation=operation,
            document=document,
            created_at=at,
        )
    )


def append_audit(
    session: Session,
    *,
    at: datetime,
    actor: str,
    operation: str,
    target: str,
    revision: int | None,
    before: Document | None,
    after: Document | None,
) -> None:
    session.add(
        AuditRow(
            at=at,
            actor=actor,
            operation=operation,
            target=target,
            revision=revision,
            before=before,
            after=after,
        )
    )


def delete_changes_through(session: Session, revision: int) -> int:
    """Deletes change-log rows at or below ``revision``; returns how many."""
    result = session.execute(delete(ChangeRow).where(ChangeRow.revision <= revision))
    return int(getattr(result, "rowcount", 0) or 0)


def read_changes_since(session: Session, revision: int, limit: int | None) -> list[Change]:
    query = select(ChangeRow).where(ChangeRow.revision > revision).order_by(ChangeRow.revision)
    if limit is not None:
        query = query.limit(limit)
    return [
        Change(row.revision, row.policy_name, _operation(row.operation), row.document)
        for row in session.scalars(query)
    ]


def read_audit(session: Session, limit: int, before: int | None) -> list[AuditEntry]:
    query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditRow.id < before)
    return [
        AuditEntry(
            row.id,
            iso(row.at),
            row.actor,
            row.operation,
            row.target,
            row.revision,
            row.before,
            row.after,
        )
        for row in session.scalars(query)
    ]


def _operation(value: str) -> Operation:
    if value == "create":
        return "create"
    if value == "update":
        return "update"
    if value == "down":
        return "down"
    if value == "drain":
        return "drain"
    if value == "rollout":
        return "rollout"
    if value == "probers":
        return "probers"
    if value == "scale":
        return "scale"
    return "delete"
