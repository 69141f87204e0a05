"""Agents' local policies and the controller policies they shadow.

An agent reports, in its hello and every ACK, the policies of its own ``--policies`` files
(name, domain, source) and the controller policies that they shadow on that node
(name, reason). ``local_policies`` lets a policy write that would clash be refused (409);
``shadowed`` is shown in ``GET /v1/agents``. Both NULL for an agent that never said (an
older agent).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch_op:
        batch_op.add_column(sa.Column("local_policies", _DOC, nullable=True))
        batch_op.add_column(sa.Column("shadowed", _DOC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch_op:
        batch_op.drop_column("shadowed")
        batch_op.drop_column("local_policies")
