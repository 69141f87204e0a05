"""One round of a controller engine that writes revisions on its own (the rollout engine,
the slice scaling): decide from what is stored, and commit each step as its own revision."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from controller.db.session import Database
from controller.repositories.revision import bump_revision

T = TypeVar("T")

# A write the round decided on, given the session and the revision it is committed as.
Step = Callable[[Session, int], T]


def commit_plan(db: Database, plan: Callable[[Session], list[Step[T]]]) -> list[T]:
    """Run ``plan``'s steps, each as one revision, in one transaction; what they returned.

    ``plan`` is asked first on a read (the common case: nothing to do, no lock taken), then
    again under the revision lock, since a replica may have acted meanwhile."""
    if not db.read(lambda session: bool(plan(session))):
        return []
    with db.writing() as transaction:
        session = transaction.session
        revision = bump_revision(session)  # the lock first: a replica may have done it
        steps = plan(session)
        if not steps:
            transaction.discard()
            return []
        done = [steps[0](session, revision)]
        done += [step(session, bump_revision(session)) for step in steps[1:]]
        return done
