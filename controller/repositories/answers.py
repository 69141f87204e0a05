"""The ``answer_buckets`` rows: add agents' answer counts to their bucket, sum a window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controller.db.models import AnswerBucketRow

_BUCKETS = cast(Table, AnswerBucketRow.__table__)

BucketKey = tuple[str, str, str, int]  # (policy, slice, endpoint, bucket start)


def add_answers(session: Session, counts: Mapping[BucketKey, int]) -> None:
    """Adds each count to its bucket's row (made at 0 if new). Call with sorted keys so that
    two replicas adding to the same rows lock them in one order."""
    if not counts:
        return
    dialect = session.get_bind().dialect.name
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_BUCKETS)
    statement = upsert.on_conflict_do_update(
        index_elements=["policy", "slice", "endpoint", "bucket"],
        set_={"answers": _BUCKETS.c.answers + upsert.excluded.answers},
    )
    rows = [
        {"policy": p, "slice": s, "endpoint": e, "bucket": b, "answers": n}
        for (p, s, e, b), n in sorted(counts.items())
    ]
    session.execute(statement, rows)


def window_answers(
    session: Session, since: int, policy: str | None = None
) -> dict[str, dict[tuple[str, str], int]]:
    """Answers per policy and (slice, endpoint) in the buckets starting at ``since`` or
    later; of one policy, or of all."""
    query = (
        select(
            AnswerBucketRow.policy,
            AnswerBucketRow.slice,
            AnswerBucketRow.endpoint,
            func.sum(AnswerBucketRow.answers),
        )
        .where(AnswerBucketRow.bucket >= since)
        .group_by(AnswerBucketRow.policy, AnswerBucketRow.slice, AnswerBucketRow.endpoint)
    )
    if policy is not None:
        query = query.where(AnswerBucketRow.policy == policy)
    out: dict[str, dict[tuple[str, str], int]] = {}
    for name, slice_id, endpoint, answers in session.execute(query):
        out.setdefault(name, {})[slice_id, endpoint] = int(answers)
    return out


def delete_buckets_before(session: Session, cutoff: int) -> int:
    result = session.execute(delete(AnswerBucketRow).where(AnswerBucketRow.bucket < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
