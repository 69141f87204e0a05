"""Schema migrations from code: the Alembic Config without an alembic.ini, and the head check."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from controller.db.engine import redact
from controller.errors import SchemaNotCurrent

# Alembic announces each of its plugins at INFO; only the migrations it runs are news.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Looking at the schema is not news either ("Context impl ..." at INFO)."""
    logger = logging.getLogger("alembic.runtime.migration")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def alembic_config() -> Config:
    """script_location is the installed ``migrations`` package, wherever it was installed."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def head_revisions() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrates the database behind ``engine`` to ``revision`` in one transaction."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrates the database back to ``revision`` ("base": no schema); for tests and repairs."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@dataclass(frozen=True, slots=True)
class SchemaState:
    current: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def is_current(self) -> bool:
        return set(self.current) == set(self.heads)


def schema_state(engine: Engine) -> SchemaState:
    with _quiet_alembic(), engine.connect() as connection:
        current = tuple(MigrationContext.configure(connection).get_current_heads())
    return SchemaState(current=current, heads=head_revisions())


def require_current_schema(engine: Engine, url_for_message: str) -> None:
    """Raises SchemaNotCurrent, saying what to run, unless the database is at head."""
    state = schema_state(engine)
    if state.is_current:
        return
    where = redact(url_for_message)
    fix = f"run `dnsmesh db upgrade --database {where}` or start the controller with --migrate"
    if not state.current:
        raise SchemaNotCurrent(f"the database {where} is not migrated (it has no schema): {fix}")
    script = ScriptDirectory.from_config(alembic_config())
    known = all(_known(script, rev) for rev in state.current)
    if not known:
        raise SchemaNotCurrent(
            f"the database {where} is at revision {', '.join(state.current)}, which this "
            "dnsmesh does not know: it was migrated by a newer dnsmesh; upgrade dnsmesh"
        )
    raise SchemaNotCurrent(
        f"the database {where} is at revision {', '.join(state.current)}, behind head "
        f"{', '.join(state.heads)}: {fix}"
    )


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:
        return False
