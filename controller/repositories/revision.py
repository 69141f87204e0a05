"""The global revision: the single ``mesh_state`` row every revision-bumping write locks."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.db.models import StateRow

PENDING_REVISION = "dnsmesh.pending_revision"  # the session.info key


def current_revision(session: Session) -> int:
    return session.execute(select(StateRow.revision).where(StateRow.id == 1)).scalar_one()


def current_mesh_id(session: Session) -> str:
    """The mesh's id, made with the database (migration 0006); it never changes."""
    return session.execute(select(StateRow.mesh_id).where(StateRow.id == 1)).scalar_one()


def bump_revision(session: Session) -> int:
    """The next revision, taken with the counter row's lock held until the commit.

    Concurrent writers queue here: no two get the same revision, revisions commit in order
    (a reader that sees R has every change up to R), and the checks a service makes after
    this (If-Match, name and domain uniqueness, the down set) cannot race.
    """
    revision = session.execute(
        update(StateRow)
        .where(StateRow.id == 1)
        .values(revision=StateRow.revision + 1)
        .returning(StateRow.revision)
    ).scalar_one()
    # What a commit that ends in doubt reports (controller.db.session.Database.writing).
    session.info[PENDING_REVISION] = revision
    return revision
