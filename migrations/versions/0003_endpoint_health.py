"""Endpoint health: the latest probe report per (agent, endpoint), a bounded history, and the
mesh-wide down set.

``endpoint_health`` holds one row per (agent, address): what the agent last reported.
``endpoint_reports`` keeps every report for the retention window
(controller.services.endpoint_health prunes it by ``reported_at``). ``endpoints_down`` is
the down set the quorum rule (dnsmesh.quorum) decided, as of the revision that last
changed it; a change of it is a change-log row of operation ``down`` (policy_name empty),
so it travels to agents like a policy change.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _measurements() -> list[sa.Column[object]]:
    return [
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "endpoint_health",
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        *_measurements(),
        sa.PrimaryKeyConstraint("agent_id", "address", name=op.f("pk_endpoint_health")),
    )
    with op.batch_alter_table("endpoint_health") as batch_op:
        batch_op.create_index(batch_op.f("ix_endpoint_health_address"), ["address"])
    op.create_table(
        "endpoint_reports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        *_measurements(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoint_reports")),
    )
    with op.batch_alter_table("endpoint_reports") as batch_op:
        batch_op.create_index(batch_op.f("ix_endpoint_reports_reported_at"), ["reported_at"])
        batch_op.create_index(
            batch_op.f("ix_endpoint_reports_address_reported_at"), ["address", "reported_at"]
        )
    op.create_table(
        "endpoints_down",
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voters", sa.Integer(), nullable=False),
        sa.Column("failing", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_endpoints_down")),
    )


def downgrade() -> None:
    op.drop_table("endpoints_down")
    with op.batch_alter_table("endpoint_reports") as batch_op:
        batch_op.drop_index(batch_op.f("ix_endpoint_reports_address_reported_at"))
        batch_op.drop_index(batch_op.f("ix_endpoint_reports_reported_at"))
    op.drop_table("endpoint_reports")
    with op.batch_alter_table("endpoint_health") as batch_op:
        batch_op.drop_index(batch_op.f("ix_endpoint_health_address"))
    op.drop_table("endpoint_health")
    # Down-set rows of the change log mean nothing to a schema without the down set.
    op.execute("DELETE FROM changes WHERE operation = 'down'")
