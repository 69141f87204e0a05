"""Agent identities: the mesh id, one-time join tokens, and the certificates issued to agents.

* ``mesh_state.mesh_id``: a UUID made with the database, sent with every update so an
  agent whose state came from another mesh gets a snapshot, never a delta.
* ``api_tokens.is_join``, ``join_node``, ``spent_at``, ``spent_by``: a join token is a
  one-time token of role agent (optionally bound to a node name) that buys one
  certificate; ``spent_at`` is set in the same statement that checks it is unspent.
* ``agent_certificates``: every certificate the controller issued to an agent (by serial),
  and its revocation (shared by every replica).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mesh_state") as batch_op:
        batch_op.add_column(sa.Column("mesh_id", sa.String(length=36), nullable=True))
    state = sa.table("mesh_state", sa.column("id", sa.Integer()), sa.column("mesh_id"))
    op.execute(state.update().where(state.c.id == 1).values(mesh_id=str(uuid.uuid4())))
    with op.batch_alter_table("mesh_state") as batch_op:
        batch_op.alter_column("mesh_id", existing_type=sa.String(length=36), nullable=False)

    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.add_column(
            sa.Column("is_join", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("join_node", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("spent_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("spent_by", sa.String(length=128), nullable=True))

    op.create_table(
        "agent_certificates",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("node_name", sa.String(length=128), nullable=False),
        sa.Column("spiffe_id", sa.String(length=512), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_by", sa.String(length=63), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=63), nullable=True),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_agent_certificates")),
    )
    op.create_index(
        op.f("ix_agent_certificates_node_name"), "agent_certificates", ["node_name"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_certificates_node_name"), table_name="agent_certificates")
    op.drop_table("agent_certificates")
    with op.batch_alter_table("api_tokens") as batch_op:
        batch_op.drop_column("spent_by")
        batch_op.drop_column("spent_at")
        batch_op.drop_column("join_node")
        batch_op.drop_column("is_join")
    with op.batch_alter_table("mesh_state") as batch_op:
        batch_op.drop_column("mesh_id")
