"""Engines for the controller's database: URL defaults, driver mapping, fail-fast settings."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from dnsmesh.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///dnsmesh.db"
DATABASE_URL_ENV = "DNSMESH_DATABASE_URL"

# A request must fail in seconds, not hang, when PostgreSQL is away: the connect timeout
# bounds a new connection, keepalives notice a peer that vanished without a reset.
CONNECT_TIMEOUT_S = 3
# SQLite waits this long for another writer's lock before it reports "database is locked".
SQLITE_BUSY_TIMEOUT_S = 15.0
# Execution option that marks a write engine: SQLite then starts with BEGIN IMMEDIATE.
WRITE_OPTION = "dnsmesh_write"


def resolve_database_url(given: str | None) -> str:
    """--database, else $DNSMESH_DATABASE_URL, else the embedded SQLite in the working folder."""
    return given or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL


def normalize_url(url: str) -> URL:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; anything else is taken as given."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise ConfigError(f"{url!r} is not a database URL: {error}") from error
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigError(f"unsupported database {parsed.drivername!r}: use postgresql or sqlite")
    return parsed


def redact(url: str | URL) -> str:
    """The URL without its password, for messages and logs."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.render_as_string(hide_password=True)


def build_engine(url: str | URL, *, pool_size: int = 10) -> Engine:
    """An engine that reconnects after a server restart and fails fast while it is down."""
    parsed = normalize_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        )
        _sqlite_transactions(engine, in_memory=parsed.database in (None, "", ":memory:"))
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
        "application_name": "dnsmesh-controller",
    }
    return create_engine(
        parsed,
        pool_pre_ping=True,  # a connection killed by a restart is replaced, not handed out
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=CONNECT_TIMEOUT_S * 2,
        connect_args=connect_args,
    )


def _sqlite_transactions(engine: Engine, *, in_memory: bool) -> None:
    """Let SQLAlchemy, not the sqlite3 module, start transactions, so writers can say IMMEDIATE.

    pysqlite's own BEGIN is deferred: two writers would each read and then both try to
    upgrade to a write lock, and one fails with "database is locked" instead of waiting.
    BEGIN IMMEDIATE takes the write lock first and waits on the busy timeout.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            # WAL lets readers go on while one writer commits.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def is_unavailable(error: BaseException) -> bool:
    """True when the database could not be reached or dropped the connection (retryable)."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, exc.OperationalError | exc.InterfaceError | exc.TimeoutError)
