"""The controller's tables as typed SQLAlchemy models (``*Row``, never the pydantic ``Policy``).

Constraint names follow one convention so Alembic can name, find and drop them the same way
on PostgreSQL and SQLite (batch mode recreates SQLite tables and needs the names).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, String
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
Document = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StateRow(Base):
    """The single row that holds the global revision; its row lock serialises every write."""

    __tablename__ = "mesh_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)


class PolicyRow(Base):
    """A policy as its validated document plus the columns that queries need."""

    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    domain: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    revision: Mapped[int] = mapped_column(BigInteger, index=True, nullable=False)
    labels: Mapped[dict[str, str]] = mapped_column(Document, nullable=False)
    document: Mapped[dict[str, Any]] = mapped_column(Document, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ChangeRow(Base):
    """One committed change per revision: what the push to agents replays."""

    __tablename__ = "changes"

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    policy_name: Mapped[str] = mapped_column(String(63), index=True, nullable=False)
    operation: Mapped[str] = mapped_column(String(16), nullable=False)  # create|update|delete
    document: Mapped[dict[str, Any] | None] = mapped_column(Document, nullable=True)
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
    before: Mapped[dict[str, Any] | None] = mapped_column(Document, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(Document, nullable=True)


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
