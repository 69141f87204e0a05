"""The global revision: the single ``mesh_state`` row every revision-bumping write locks."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.db.models import StateRow


def current_revision(session: Session) -> int:
    return session.execute(select(StateRow.revision).where(StateRow.id == 1)).scalar_one()


def bump_revision(session: Session) -> int:
    """The next revision, taken with the counter row's lock held until the commit.

    Concurrent writers queue here: no two get the same revision, revisions commit in order
    (a reader that sees R has every change up to R), and the checks a service makes after
    this (If-Match, name and domain uniqueness, the down set) cannot race.
    """
    return session.execute(
        update(StateRow)
        .where(StateRow.id == 1)
        .values(revision=StateRow.revision + 1)
        .returning(StateRow.revision)
    ).scalar_one()
