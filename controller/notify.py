"""Change notification: wake the hub when a revision commits, in this process or another.

Two paths, both only wake-ups (the hub then reads the database, which is the truth):

* In-process: a SQLAlchemy ``after_commit`` hook calls every registered listener once a
  session that inserted a change-log row has committed. This is the only path on SQLite,
  and the quickest one on PostgreSQL for a change made through this replica.
* Across replicas (PostgreSQL): a trigger on ``changes`` (migration 0002) runs
  ``pg_notify('dnsmesh_changes', revision)`` inside the writing transaction; PostgreSQL
  delivers it at commit, to every ``LISTEN``ing session. ``PgListener`` keeps one dedicated
  connection listening and reconnects when it drops. A notification lost while it was
  away only delays: the hub also polls the revision on a timer (catch-up).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, object_session

from controller.db.models import ChangeRow
from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.controller.notify")

CHANNEL = "dnsmesh_changes"  # also in migrations/versions/0002_agents.py
_CHANGED = "dnsmesh.changed"

Listener = Callable[[], None]
_listeners: set[Listener] = set()
_lock = threading.Lock()


def add_commit_listener(listener: Listener) -> None:
    """``listener()`` runs (in the committing thread) after every commit of a change."""
    with _lock:
        _listeners.add(listener)


def remove_commit_listener(listener: Listener) -> None:
    with _lock:
        _listeners.discard(listener)


@event.listens_for(ChangeRow, "after_insert")
def _note_change(_mapper: Any, _connection: Any, target: ChangeRow) -> None:
    session = object_session(target)
    if session is not None:
        session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if not session.info.pop(_CHANGED, False):
        return
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener()


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, _previous: Any) -> None:
    session.info.pop(_CHANGED, None)


def libpq_url(url: URL) -> str:
    """A SQLAlchemy URL as psycopg wants it (no ``+driver``)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class PgListener:
    """One dedicated connection that LISTENs on CHANNEL; reconnects with backoff."""

    def __init__(
        self,
        url: URL,
        on_notify: Callable[[int], None],
        *,
        connect_timeout: float = 3.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = libpq_url(url)
        self.on_notify = on_notify
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self.connections = 0  # how many times it (re)connected, for tests and logs

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=int(self.connect_timeout),
                    application_name="dnsmesh-controller-listen",
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.connections += 1
                    self.connected.set()
                    backoff = 0.1
                    log.info("notify.listening", extra=fields(channel=CHANNEL))
                    # Anything committed while we were away: the hub reads the revision.
                    self.on_notify(-1)
                    async for notification in connection.notifies():
                        self.on_notify(_revision(notification.payload))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # psycopg.Error, OSError: the database went away
                self.connected.clear()
                log.warning(
                    "notify.disconnected",
                    extra=fields(
                        error=str(error).splitlines()[0] if str(error) else "", retry_in=backoff
                    ),
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)


def _revision(payload: str) -> int:
    try:
        return int(payload)
    except ValueError:
        return -1
