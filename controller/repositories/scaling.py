"""Slice-scale rows and the answer rates they are decided from, read and written."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db.models import AnswerBucketRow, SliceScaleRow


def scale_rows(session: Session) -> list[SliceScaleRow]:
    query = select(SliceScaleRow).order_by(SliceScaleRow.policy_name, SliceScaleRow.slice_id)
    return list(session.scalars(query))


def find_scale(session: Session, policy: str, slice_id: str) -> SliceScaleRow | None:
    return session.get(SliceScaleRow, (policy, slice_id))


def read_counts(session: Session) -> dict[str, dict[str, int]]:
    """Every scaled slice's count by policy and slice: what a snapshot carries as
    ``slice_scale``."""
    out: dict[str, dict[str, int]] = {}
    for row in scale_rows(session):
        out.setdefault(row.policy_name, {})[row.slice_id] = row.count
    return out


def slice_buckets(session: Session, since: int) -> dict[tuple[str, str], dict[int, int]]:
    """Answers per (policy, slice) and bucket start, every endpoint and agent summed, in the
    buckets starting at ``since`` or later."""
    query = (
        select(
            AnswerBucketRow.policy,
            AnswerBucketRow.slice,
            AnswerBucketRow.bucket,
            func.sum(AnswerBucketRow.answers),
        )
        .where(AnswerBucketRow.bucket >= since)
        .group_by(AnswerBucketRow.policy, AnswerBucketRow.slice, AnswerBucketRow.bucket)
    )
    out: dict[tuple[str, str], dict[int, int]] = {}
    for policy, slice_id, bucket, answers in session.execute(query):
        out.setdefault((policy, slice_id), {})[int(bucket)] = int(answers)
    return out
