"""The change log holds every policy a revision touched: one row per (revision, policy).

A bulk apply (``POST /v1/apply``) writes a whole set as one revision, so a revision is no
longer one row. The key becomes (revision, policy_name); a down-set or drain change is still
the one row of its revision (policy ``""``). The NOTIFY trigger stays: PostgreSQL folds
identical notifications of one transaction into one, so a set still wakes each replica once.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("changes") as batch_op:
        batch_op.drop_constraint("pk_changes", type_="primary")
        batch_op.create_primary_key("pk_changes", ["revision", "policy_name"])


def downgrade() -> None:
    # Only possible while no revision has several rows (no bulk apply since the upgrade).
    with op.batch_alter_table("changes") as batch_op:
        batch_op.drop_constraint("pk_changes", type_="primary")
        batch_op.create_primary_key("pk_changes", ["revision"])
