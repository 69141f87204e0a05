"""Endpoint drains: an operator's override that takes an address out of service.

``endpoint_drains`` holds one row per drained (address, policy); ``policy_name`` is empty
for a drain in every policy that has the address (not NULL, so the pair can be unique on
both backends). ``until`` is when it expires by itself (NULL: until undrained), by the
controller's clock. A change of the drains is a change-log row of operation ``drain``
(policy_name empty) carrying the whole new set, so it travels to agents like the down set.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-16
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "endpoint_drains",
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("policy_name", sa.String(length=63), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=63), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("address", "policy_name", name=op.f("pk_endpoint_drains")),
    )


def downgrade() -> None:
    op.drop_table("endpoint_drains")
    # Drain rows of the change log mean nothing to a schema without drains.
    op.execute("DELETE FROM changes WHERE operation = 'drain'")
