"""Migrations from an empty database, the schema check at start, and the db/token commands."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from controller.db.engine import build_engine
from controller.db.migrate import (
    downgrade,
    head_revisions,
    require_current_schema,
    schema_state,
    upgrade,
)
from controller.errors import SchemaNotCurrent
from tests.integration.controller_support import run_cli, temporary_postgres_database
from tests.support.ports import free_port

TABLES = {"mesh_state", "policies", "changes", "audit_log", "api_tokens", "alembic_version"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with temporary_postgres_database("migrations") as url:
        yield url


def test_upgrade_from_empty_then_down_and_up_again(empty_url: str) -> None:
    engine = build_engine(empty_url)
    try:
        assert schema_state(engine).current == ()
        with pytest.raises(SchemaNotCurrent) as refused:
            require_current_schema(engine, empty_url)
        assert "is not migrated" in str(refused.value)
        assert "dnsmesh db upgrade --database" in str(refused.value)
        assert "--migrate" in str(refused.value)

        upgrade(engine)
        assert schema_state(engine).is_current
        require_current_schema(engine, empty_url)
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id, revision FROM mesh_state")).all() == [(1, 0)]
        constraints = inspect(engine).get_unique_constraints("policies")
        assert {c["name"] for c in constraints} == {"uq_policies_name", "uq_policies_domain"}

        downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert schema_state(engine).is_current
    finally:
        engine.dispose()


def test_a_database_from_a_newer_dnsmesh_is_refused(sqlite_url: str) -> None:
    engine = build_engine(sqlite_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(SchemaNotCurrent, match="newer dnsmesh"):
            require_current_schema(engine, sqlite_url)
    finally:
        engine.dispose()


def test_cli_db_upgrade_token_create_and_refusal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    refused = run_cli("controller", "--database", url, "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert refused.returncode == 1
    assert "is not migrated" in refused.stderr
    assert f"dnsmesh db upgrade --database {url}" in refused.stderr

    no_schema = run_cli(
        "token", "create", "--database", url, "--role", "admin", "--name", "a", cwd=tmp_path
    )
    assert no_schema.returncode == 1 and "is not migrated" in no_schema.stderr

    upgraded = run_cli("db", "upgrade", "--database", url, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"at revision {head_revisions()[0]} (head)" in upgraded.stdout

    created = run_cli(
        "token", "create", "--database", url, "--role", "editor", "--name", "ci", cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("dnsm_") and "\n" not in secret
    assert "shown only this once" in created.stderr

    engine = build_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(text("SELECT name, role, digest, created_by FROM api_tokens"))
            name, role, digest, created_by = row.one()
        assert (name, role, created_by) == ("ci", "editor", "cli")
        assert secret not in digest and len(digest) == 64  # only the SHA-256 digest is kept
    finally:
        engine.dispose()

    again = run_cli(
        "token", "create", "--database", url, "--role", "viewer", "--name", "ci", cwd=tmp_path
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    bad_role = run_cli(
        "token", "create", "--database", url, "--role", "root", "--name", "x", cwd=tmp_path
    )
    assert bad_role.returncode == 2


def test_cli_default_database_is_sqlite_in_the_working_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DNSMESH_DATABASE_URL"}
    upgraded = run_cli("db", "upgrade", cwd=tmp_path, env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "dnsmesh.db").exists()
    other = tmp_path / "other.db"
    env["DNSMESH_DATABASE_URL"] = f"sqlite:///{other}"
    assert run_cli("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    assert other.exists()


@pytest.mark.postgres
def test_cli_db_upgrade_on_postgres(tmp_path: Path) -> None:
    with temporary_postgres_database("cli") as url:
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        assert plain.startswith("postgresql://")  # the plain scheme maps to psycopg 3
        upgraded = run_cli("db", "upgrade", "--database", plain, cwd=tmp_path)
        assert upgraded.returncode == 0, upgraded.stderr
        engine = build_engine(plain)
        try:
            assert schema_state(engine).is_current
        finally:
            engine.dispose()


def test_cli_unreachable_database_says_so(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = run_cli("db", "upgrade", "--database", url, cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr


def test_a_database_behind_head_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = build_engine(url)
    try:
        upgrade(engine, "0001")  # as an older dnsmesh left it
        with pytest.raises(SchemaNotCurrent) as refused:
            require_current_schema(engine, url)
        message = str(refused.value)
        assert f"at revision 0001, behind head {head_revisions()[0]}" in message
        assert "dnsmesh db upgrade --database" in message and "--migrate" in message
    finally:
        engine.dispose()
