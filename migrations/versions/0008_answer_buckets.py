"""Served share: the answers agents report, summed per time bucket.

``answer_buckets`` holds, per (policy, slice, endpoint) and bucket of a few seconds, the
answers every agent reported giving; buckets older than the longest window are pruned.
One row per key and bucket however many agents report, so the table is bounded by the
policies served, not by the agents.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "answer_buckets",
        sa.Column("policy", sa.String(length=63), nullable=False),
        sa.Column("slice", sa.String(length=63), nullable=False),
        sa.Column("endpoint", sa.String(length=45), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("answers", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "policy", "slice", "endpoint", "bucket", name=op.f("pk_answer_buckets")
        ),
    )
    with op.batch_alter_table("answer_buckets") as batch_op:
        batch_op.create_index(batch_op.f("ix_answer_buckets_bucket"), ["bucket"])


def downgrade() -> None:
    with op.batch_alter_table("answer_buckets") as batch_op:
        batch_op.drop_index(batch_op.f("ix_answer_buckets_bucket"))
    op.drop_table("answer_buckets")
