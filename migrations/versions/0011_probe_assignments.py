"""Coordinated probing: which agents probe each endpoint address.

``probe_assignments`` holds one row per coordinated address: its probing agents (a JSON
list of agent ids), the latency each zone measured of it when it was assigned (JSON, zone
-> ms; only for addresses of latency-weighted policies) and the node label that names the
zones. A change of the assignment is a change-log row of operation ``probers`` (policy_name
empty) carrying the whole new assignment, so it travels to agents like the down set.

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "probe_assignments",
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("agents", _JSON, nullable=False),
        sa.Column("zone_latency_ms", _JSON, nullable=False),
        sa.Column("spread_label", sa.String(length=63), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_probe_assignments")),
    )


def downgrade() -> None:
    op.drop_table("probe_assignments")
    # Assignment rows of the change log mean nothing to a schema without coordination.
    op.execute("DELETE FROM changes WHERE operation = 'probers'")
