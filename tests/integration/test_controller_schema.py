"""The ORM models and the migrated schema agree: autogenerate finds nothing to migrate.

Runs every migration on a fresh database (SQLite file, and a PostgreSQL database made for
the test and dropped after), then asks Alembic to compare the result with
``controller.db.models.Base.metadata``, types included, as ``migrations/env.py`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.models import Base
from tests.integration.controller_support import temporary_postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'schema.db'}"
        return
    with temporary_postgres_database("schema") as url:
        yield url


def test_migrated_schema_matches_the_models(fresh_url: str) -> None:
    engine = build_engine(fresh_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
        assert differences == []
    finally:
        engine.dispose()
