"""The controller's tables as typed SQLAlchemy models (``*Row``, never the pydantic ``Policy``).

Constraint names follow one convention so Alembic can name, find and drop them the same way
on PostgreSQL and SQLite (batch mode recreates SQLite tables and needs the names).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact); plain JSON (text) on SQLite.
JsonColumn = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StateRow(Base):
    """The single row that holds the global revision; its row lock serialises every write."""

    __tablename__ = "mesh_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Made with the database (migration 0006): which mesh an agent's state came from.
    mesh_id: Mapped[str] = mapped_column(String(36), nullable=False)


class PolicyRow(Base):
    """A policy as its validated document plus the columns that queries need."""

    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    domain: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    revision: Mapped[int] = mapped_column(BigInteger, index=True, nullable=False)
    labels: Mapped[dict[str, str]] = mapped_column(JsonColumn, nullable=False)
    document: Mapped[dict[str, Any]] = mapped_column(JsonColumn, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ChangeRow(Base):
    """What each committed revision changed, one row per policy it touched (a bulk apply
    touches many in one revision): what the push to agents replays."""

    __tablename__ = "changes"

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    policy_name: Mapped[str] = mapped_column(String(63), primary_key=True, index=True)
    operation: Mapped[str] = mapped_column(String(16), nullable=False)  # create|update|delete
    document: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AuditRow(Base):
    """Who did what and when, with the documents before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    actor: Mapped[str] = mapped_column(String(63), nullable=False)
    operation: Mapped[str] = mapped_column(String(32), nullable=False)
    target: Mapped[str] = mapped_column(String(127), nullable=False)
    revision: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn, nullable=True)


class TokenRow(Base):
    """An API token: its SHA-256 digest (never the token), its name, role and display prefix."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(63), nullable=False)
    # NULL: valid until revoked; else refused (401 "the token has expired") from then on.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A join token (role agent): never a bearer token; buys one agent certificate, for
    # ``join_node`` only when that is set. ``spent_at`` is set by the statement that spends it.
    is_join: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    join_node: Mapped[str | None] = mapped_column(String(128), nullable=True)
    spent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    spent_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class AgentCertificateRow(Base):
    """An X.509-SVID the controller issued to an agent, and its revocation."""

    __tablename__ = "agent_certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # hex, as in the cert
    node_name: Mapped[str] = mapped_column(String(128), index=True, nullable=False)
    spiffe_id: Mapped[str] = mapped_column(String(512), nullable=False)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    issued_by: Mapped[str] = mapped_column(String(63), nullable=False)  # join token, or "renew"
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(63), nullable=True)


class AgentRow(Base):
    """A node agent as the controller last heard from it."""

    __tablename__ = "agents"

    agent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    node_name: Mapped[str] = mapped_column(String(253), nullable=False)
    labels: Mapped[dict[str, str]] = mapped_column(JsonColumn, nullable=False)
    software: Mapped[str] = mapped_column(String(64), nullable=False)
    transport: Mapped[str] = mapped_column(String(16), nullable=False)
    connected: Mapped[bool] = mapped_column(Boolean, nullable=False)
    replica: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    # The connection the row describes: a late "gone" of an older connection (on this or
    # another replica) must not mark a reconnected agent disconnected.
    session: Mapped[str | None] = mapped_column(String(32), nullable=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    connected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    disconnected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    applied_revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    nack_revision: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    nack_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    nack_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # What the agent last reported of its own --policies files ({name, domain, source}) and
    # of the controller policies they shadow on its node ({name, reason}); NULL: never said.
    local_policies: Mapped[list[dict[str, str]] | None] = mapped_column(JsonColumn, nullable=True)
    shadowed: Mapped[list[dict[str, str]] | None] = mapped_column(JsonColumn, nullable=True)


class EndpointHealthRow(Base):
    """What one agent last reported of one endpoint address."""

    __tablename__ = "endpoint_health"

    agent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(45), primary_key=True, index=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float] = mapped_column(Float, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False)
    samples: Mapped[int] = mapped_column(Integer, nullable=False)
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class EndpointReportRow(Base):
    """One report of one endpoint by one agent, kept for the retention window."""

    __tablename__ = "endpoint_reports"
    __table_args__ = (Index(None, "address", "reported_at"),)  # one address's history

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(String(128), nullable=False)
    address: Mapped[str] = mapped_column(String(45), nullable=False)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float] = mapped_column(Float, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False)
    samples: Mapped[int] = mapped_column(Integer, nullable=False)
    reported_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), index=True, nullable=False
    )


class AnswerBucketRow(Base):
    """Answers agents gave naming one endpoint of a policy's slice, summed over every agent
    for one time bucket (``bucket``: its start in Unix seconds, a multiple of its length)."""

    __tablename__ = "answer_buckets"

    policy: Mapped[str] = mapped_column(String(63), primary_key=True)
    slice: Mapped[str] = mapped_column(String(63), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(45), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    answers: Mapped[int] = mapped_column(BigInteger, nullable=False)


class DownRow(Base):
    """An address the quorum marked down, since which revision, and how the vote stood."""

    __tablename__ = "endpoints_down"

    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    voters: Mapped[int] = mapped_column(Integer, nullable=False)
    failing: Mapped[int] = mapped_column(Integer, nullable=False)


class ProberRow(Base):
    """The agents assigned to probe one endpoint address (coordinated probing,
    dnsmesh.probing), with what each zone measured of it when it was assigned."""

    __tablename__ = "probe_assignments"

    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    agents: Mapped[list[str]] = mapped_column(JsonColumn, nullable=False)
    zone_latency_ms: Mapped[dict[str, float]] = mapped_column(JsonColumn, nullable=False)
    spread_label: Mapped[str] = mapped_column(String(63), nullable=False)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)


class DrainRow(Base):
    """An endpoint an operator drained: in one policy, or in every one (``policy_name`` "")."""

    __tablename__ = "endpoint_drains"

    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(63), nullable=False)
    # NULL: until undrained; else it expires by itself then (the controller's clock).
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Made past a safety rule with force.
    forced: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())


class RolloutRow(Base):
    """A policy's canary rollout (controller.services.rollouts): where it is and why."""

    __tablename__ = "rollouts"

    policy_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(63), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)  # an index into canary.steps
    share: Mapped[int] = mapped_column(Integer, nullable=False)  # the canary group's percent
    state: Mapped[str] = mapped_column(String(16), nullable=False)  # dnsmesh.rollout.RolloutState
    # NULL: no step is due (paused, finished, rolled back).
    next_step_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The health figures and the reason of the last transition.
    figures: Mapped[Any] = mapped_column(JsonColumn, nullable=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # SHA-256 of the canary block and the canary group's endpoints: a change starts anew.
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)


class SliceScaleRow(Base):
    """A demand-driven slice's endpoint count (controller.services.scaling) and why. No row:
    the slice answers from its ``scale.min``."""

    __tablename__ = "slice_scales"

    policy_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    slice_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, nullable=False)
    qps: Mapped[float] = mapped_column(Float, nullable=False)  # the rate the change was made at
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
