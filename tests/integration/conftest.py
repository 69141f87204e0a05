"""Shared fixtures for integration tests: real PostgreSQL and SQLite controller databases.

PostgreSQL: ``DNSMESH_TEST_POSTGRES_URL`` (default postgresql://postgres@127.0.0.1:5432/postgres)
is the maintenance database; each session CREATEs a uniquely named database, migrates it and
DROPs it at the end, so parallel runs never meet. SQLite: a migrated file copied per test.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from controller.api import create_app
from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database
from tests.integration.controller_support import Api, temporary_postgres_database

# Starlette's TestClient warns that it prefers httpx2 to httpx; httpx is what the project
# depends on, so the deprecation is noted here, once, instead of adding a second client.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

CONTROLLER_TABLES = ("policies", "changes", "audit_log", "api_tokens")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database for this test session (dropped afterwards)."""
    with temporary_postgres_database("session") as url:
        engine = build_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("controller-template") / "dnsmesh.db"
    engine = build_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
        with engine.connect() as connection:  # fold the WAL into the file before copying it
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return path


def reset_postgres(url: str) -> None:
    """Empty the session database between tests (cheaper than a database per test)."""
    engine = build_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {', '.join(CONTROLLER_TABLES)} RESTART IDENTITY"))
            connection.execute(text("UPDATE mesh_state SET revision = 0 WHERE id = 1"))
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "dnsmesh.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def clean_postgres_url(postgres_url: str) -> str:
    reset_postgres(postgres_url)
    return postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty controller database on each backend."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("clean_postgres_url")
    return url


@pytest.fixture
def controller_db(database_url: str) -> Iterator[Database]:
    engine = build_engine(database_url)
    try:
        yield Database(engine)
    finally:
        engine.dispose()


@pytest.fixture
def api(controller_db: Database) -> Iterator[Api]:
    """The controller app in a TestClient (ASGI, no socket), with a token for every role."""
    tokens = TokenStore(controller_db)
    secrets = {
        role: tokens.create(f"{role}-token", role, actor="test")[1]
        for role in ("admin", "editor", "viewer", "agent")
    }
    with TestClient(create_app(controller_db)) as client:
        yield Api(client, secrets)
