"""Transactions: one per operation, writes serialised on the revision counter row.

Repositories only add and flush; the functions here own begin/commit/rollback, and turn
driver errors into the controller's errors once (connection trouble -> DatabaseUnavailable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Engine, exc, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from controller.db.engine import WRITE_OPTION, is_unavailable
from controller.db.models import StateRow
from controller.errors import AlreadyExists, DatabaseUnavailable

T = TypeVar("T")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every one we stored was UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


class Rollback(Exception):
    """Raised inside a write to undo it and hand ``result`` back (e.g. an unchanged PUT)."""

    def __init__(self, result: object) -> None:
        super().__init__("rollback")
        self.result = result


class Database:
    """The engine plus the session factories: reads, and writes that hold the counter lock."""

    def __init__(self, engine: Engine, clock: Clock = utc_now) -> None:
        self.engine = engine
        self.clock = clock
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(
            engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Driver errors -> ours: unreachable/dropped -> DatabaseUnavailable, duplicates -> 409."""
        try:
            yield
        except exc.IntegrityError as error:
            raise AlreadyExists(
                f"conflicts with an existing entry: {_first_line(error)}"
            ) from error
        except exc.SQLAlchemyError as error:
            if is_unavailable(error):
                raise DatabaseUnavailable(
                    f"the database is unavailable: {_first_line(error)}"
                ) from error
            raise

    def read(self, work: Callable[[Session], T]) -> T:
        with self.guard(), self._reads() as session, session.begin():
            return work(session)

    def write(self, work: Callable[[Session], T]) -> T:
        """Runs ``work`` in one transaction without touching the revision (tokens)."""
        with self.guard(), self._writes() as session:
            try:
                with session.begin():
                    return work(session)
            except Rollback as undo:
                return undo.result  # type: ignore[return-value]

    def write_revision(self, work: Callable[[Session, int], T]) -> T:
        """Runs ``work(session, new_revision)`` in one transaction that bumps the revision.

        The UPDATE ... RETURNING takes the counter row's lock first and keeps it to the
        commit, so concurrent writers queue here: no two get the same revision, revisions
        commit in order (a reader that sees R has every change up to R), and the checks
        that ``work`` makes (If-Match, name and domain uniqueness) cannot race.
        """

        def bumped(session: Session) -> T:
            revision = session.execute(
                update(StateRow)
                .where(StateRow.id == 1)
                .values(revision=StateRow.revision + 1)
                .returning(StateRow.revision)
            ).scalar_one()
            return work(session, revision)

        return self.write(bumped)

    def current_revision(self) -> int:
        return self.read(_current_revision)

    def ping(self) -> None:
        """Raises DatabaseUnavailable unless the database answers."""
        with self.guard(), self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))


def _current_revision(session: Session) -> int:
    return session.execute(select(StateRow.revision).where(StateRow.id == 1)).scalar_one()


def current_revision_in(session: Session) -> int:
    return _current_revision(session)


def _first_line(error: exc.SQLAlchemyError) -> str:
    original = getattr(error, "orig", None) or error
    return (str(original).strip().splitlines() or [type(original).__name__])[0]
