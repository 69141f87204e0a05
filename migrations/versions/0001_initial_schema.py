"""Initial schema: policies, the revision counter, the change log, the audit log, API tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON text on SQLite (as controller.db.models.JsonColumn).
_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "mesh_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_state")),
    )
    # The one counter row: every write locks it, so revisions are handed out one at a time.
    op.bulk_insert(
        sa.table("mesh_state", sa.column("id", sa.Integer()), sa.column("revision")),
        [{"id": 1, "revision": 0}],
    )
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("labels", _DOC, nullable=False),
        sa.Column("document", _DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.UniqueConstraint("domain", name=op.f("uq_policies_domain")),
        sa.UniqueConstraint("name", name=op.f("uq_policies_name")),
    )
    with op.batch_alter_table("policies") as batch_op:
        batch_op.create_index(batch_op.f("ix_policies_revision"), ["revision"], unique=False)
    op.create_table(
        "changes",
        sa.Column("revision", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("policy_name", sa.String(length=63), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("document", _DOC, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_changes")),
    )
    with op.batch_alter_table("changes") as batch_op:
        batch_op.create_index(batch_op.f("ix_changes_policy_name"), ["policy_name"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=63), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=127), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=True),
        sa.Column("before", _DOC, nullable=True),
        sa.Column("after", _DOC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=63), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("digest", name=op.f("uq_api_tokens_digest")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_table("audit_log")
    with op.batch_alter_table("changes") as batch_op:
        batch_op.drop_index(batch_op.f("ix_changes_policy_name"))
    op.drop_table("changes")
    with op.batch_alter_table("policies") as batch_op:
        batch_op.drop_index(batch_op.f("ix_policies_revision"))
    op.drop_table("policies")
    op.drop_table("mesh_state")
