"""Agents: one row per node agent (what it runs, where it is connected); NOTIFY on changes.

On PostgreSQL a trigger on the change log sends ``NOTIFY dnsmesh_changes, '<revision>'`` in
the same transaction as the change, so every controller replica hears about a commit the
moment it is visible, whichever process (or tool) wrote it. NOTIFY is transactional: a
rolled-back change notifies nobody.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# The channel name is also controller.notify.CHANNEL.
_NOTIFY_FUNCTION = """
CREATE FUNCTION dnsmesh_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dnsmesh_changes', NEW.revision::text);
    RETURN NULL;
END;
$$
"""
_NOTIFY_TRIGGER = """
CREATE TRIGGER changes_notify AFTER INSERT ON changes
FOR EACH ROW EXECUTE FUNCTION dnsmesh_notify_change()
"""


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("labels", _DOC, nullable=False),
        sa.Column("software", sa.String(length=64), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=False),
        sa.Column("replica", sa.String(length=128), nullable=True),
        sa.Column("session", sa.String(length=32), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disconnected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_revision", sa.BigInteger(), nullable=False),
        sa.Column("nack_revision", sa.BigInteger(), nullable=True),
        sa.Column("nack_reason", sa.Text(), nullable=True),
        sa.Column("nack_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_agents")),
    )
    with op.batch_alter_table("agents") as batch_op:
        batch_op.create_index(batch_op.f("ix_agents_replica"), ["replica"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NOTIFY_FUNCTION)
        op.execute(_NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS changes_notify ON changes")
        op.execute("DROP FUNCTION IF EXISTS dnsmesh_notify_change()")
    with op.batch_alter_table("agents") as batch_op:
        batch_op.drop_index(batch_op.f("ix_agents_replica"))
    op.drop_table("agents")
