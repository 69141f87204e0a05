"""Transactions: one per operation, writes serialised on the revision counter row.

Repositories only add and flush; the functions here own begin/commit/rollback, and turn
driver errors into the controller's errors once (connection trouble -> DatabaseUnavailable).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Engine, exc, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from controller.db.engine import WRITE_OPTION, is_unavailable
from controller.db.models import StateRow
from controller.errors import AlreadyExists, DatabaseUnavailable
from dnsmesh.logs import fields

T = TypeVar("T")
log = logging.getLogger("dnsmesh.controller.db")

# PostgreSQL NOTIFY channel: the payload is each committed revision, as text.
NOTIFY_CHANNEL = "dnsmesh_revision"
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
        # Reads see one snapshot for the whole transaction (REPEATABLE READ on PostgreSQL;
        # an SQLite read transaction already is one), so a list and the revision read with
        # it agree exactly. Read-only transactions never fail serialisation there.
        reads = (
            engine.execution_options(isolation_level="REPEATABLE READ")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._reads = sessionmaker(reads, expire_on_commit=False)
        self._writes = sessionmaker(
            engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        # SQLite has one writer at a time; threads of this process queue on a lock instead of
        # on SQLite's busy handler, which polls with sleeps of up to 100 ms (p99 in seconds
        # under load). BEGIN IMMEDIATE still guards against other processes.
        self._write_gate: AbstractContextManager[object] = (
            threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
        )
        self._listeners: list[Callable[[int], None]] = []

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
        with self._write_gate, self.guard(), self._writes() as session:
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

        committed: list[int] = []

        def bumped(session: Session) -> T:
            revision = session.execute(
                update(StateRow)
                .where(StateRow.id == 1)
                .values(revision=StateRow.revision + 1)
                .returning(StateRow.revision)
            ).scalar_one()
            if self.engine.dialect.name == "postgresql":
                # Delivered at commit (and never on rollback) to every LISTENing replica.
                session.execute(
                    text("SELECT pg_notify(:channel, :revision)"),
                    {"channel": NOTIFY_CHANNEL, "revision": str(revision)},
                )
            result = work(session, revision)  # a Rollback raised here skips the next line
            committed.append(revision)
            return result

        result = self.write(bumped)
        if committed:
            self._announce(committed[0])
        return result

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Calls ``listener(revision)`` after each committed revision of this process.

        For waking this process's own watchers at once; other replicas learn of revisions
        through LISTEN on ``NOTIFY_CHANNEL`` (PostgreSQL). Called on the writer's thread.
        """
        self._listeners.append(listener)

    def _announce(self, revision: int) -> None:
        for listener in list(self._listeners):
            try:
                listener(revision)
            except Exception:
                log.exception("revision.listener_failed", extra=fields(revision=revision))

    def current_revision(self) -> int:
        return self.read(_current_revision)


def _current_revision(session: Session) -> int:
    return session.execute(select(StateRow.revision).where(StateRow.id == 1)).scalar_one()


def current_revision_in(session: Session) -> int:
    return _current_revision(session)


def _first_line(error: exc.SQLAlchemyError) -> str:
    original = getattr(error, "orig", None) or error
    return (str(original).strip().splitlines() or [type(original).__name__])[0]
