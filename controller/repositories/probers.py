"""Probe assignment rows: which agents probe each endpoint address (dnsmesh.probing)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.db.models import ProberRow
from dnsmesh.probing import DEFAULT_SPREAD_LABEL, Assignment


def read_probers(session: Session) -> Assignment:
    """The stored assignment (for snapshots: read in the same snapshot as policies)."""
    rows = list(session.scalars(select(ProberRow).order_by(ProberRow.address)))
    return Assignment(
        probers={r.address: tuple(r.agents) for r in rows},
        zone_latency_ms={r.address: dict(r.zone_latency_ms) for r in rows if r.zone_latency_ms},
        spread_label=rows[0].spread_label if rows else DEFAULT_SPREAD_LABEL,
    )


def replace_probers(session: Session, assignment: Assignment, revision: int) -> None:
    """Rewrites every row: the assignment is small (one row per coordinated address) and
    always replaced whole, like the down set's change document."""
    session.execute(delete(ProberRow))
    session.add_all(
        ProberRow(
            address=address,
            agents=list(agents),
            zone_latency_ms=dict(assignment.zone_latency_ms.get(address, {})),
            spread_label=assignment.spread_label,
            revision=revision,
        )
        for address, agents in sorted(assignment.probers.items())
    )
