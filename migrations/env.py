"""Alembic's environment: runs migrations on the connection the caller hands over.

There is no alembic.ini: ``controller.db.migrate`` builds the Config in code and passes an
open connection in ``config.attributes["connection"]``, so an installed wheel migrates too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from controller.db.engine import build_engine
from controller.db.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: batch mode copies the table, the same script
        # then runs on PostgreSQL unchanged.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url given to the migrations")
    engine = build_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; pass a database URL")
_main()
