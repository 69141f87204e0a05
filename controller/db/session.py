"""Transactions: one per operation, reads in one snapshot, writes one at a time on SQLite.

Repositories (controller.repositories) only query, add and flush; services
(controller.services) open the transactions here, which own begin/commit/rollback and turn
driver errors into the controller's errors once (connection trouble -> DatabaseUnavailable).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Engine, exc
from sqlalchemy.orm import Session, sessionmaker

from controller.db.engine import WRITE_OPTION, is_unavailable
from controller.errors import AlreadyExists, CommitUnknown, DatabaseUnavailable
from controller.repositories.revision import PENDING_REVISION, current_revision

T = TypeVar("T")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every one we stored was UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class WriteTransaction:
    """The session of one write; ``discard()`` ends it without keeping anything.

    A service that finds nothing to change (an unchanged PUT, a down set another replica
    already committed) discards the transaction it bumped the revision in and returns
    "unchanged" as its result.
    """

    session: Session
    discarded: bool = False

    def discard(self) -> None:
        self.discarded = True


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
        """Runs ``work`` in one write transaction."""
        with self.writing() as transaction:
            return work(transaction.session)

    @contextmanager
    def writing(self) -> Iterator[WriteTransaction]:
        """One write transaction: committed when the block ends unless discarded or raised.

        A failure before COMMIT (a statement, the final flush) rolled everything back:
        DatabaseUnavailable, nothing landed. A connection lost during COMMIT is different:
        the server may have committed before the connection went, so it raises
        CommitUnknown with the revision the write would have, and the caller must re-read.
        """
        with self._write_gate, self.guard(), self._writes() as session, session.begin() as inner:
            transaction = WriteTransaction(session)
            yield transaction
            if transaction.discarded:
                inner.rollback()
                return
            session.flush()  # the last statements, still before COMMIT
            try:
                inner.commit()
            except exc.SQLAlchemyError as error:
                if not self._in_doubt(error):
                    raise  # the COMMIT was refused: nothing landed
                raise CommitUnknown(
                    "the database connection was lost during COMMIT: the write may have "
                    f"landed or not{_at(session)}; re-read before retrying "
                    f"({_first_line(error)})",
                    session.info.get(PENDING_REVISION),
                ) from error

    def _in_doubt(self, error: exc.SQLAlchemyError) -> bool:
        """Whether a failed COMMIT may have landed: the connection went before the answer.

        SQLite is in this process: a failed commit there did not happen. A PostgreSQL
        answer of class 40 (serialization failure, deadlock) is a definite rollback.
        """
        if self.engine.dialect.name == "sqlite" or not is_unavailable(error):
            return False
        sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None)
        return not (isinstance(sqlstate, str) and sqlstate.startswith("40"))

    def current_revision(self) -> int:
        return self.read(current_revision)


def _at(session: Session) -> str:
    revision = session.info.get(PENDING_REVISION)
    return "" if revision is None else f" (it would be revision {revision})"


def _first_line(error: exc.SQLAlchemyError) -> str:
    original = getattr(error, "orig", None) or error
    return (str(original).strip().splitlines() or [type(original).__name__])[0]
