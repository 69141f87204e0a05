"""Demand-driven slices: how many endpoints each slice with ``scale`` answers from, and why.

One row per (policy, slice) whose count the scaling engine (controller.services.scaling)
moved from the slice's ``scale.min``; every change of a row is a revision whose change-log
row (operation ``scale``) carries every scaled slice's count, for the agents.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slice_scales",
        sa.Column("policy_name", sa.String(length=63), nullable=False),
        sa.Column("slice_id", sa.String(length=63), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("qps", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("policy_name", "slice_id", name=op.f("pk_slice_scales")),
    )


def downgrade() -> None:
    op.drop_table("slice_scales")
