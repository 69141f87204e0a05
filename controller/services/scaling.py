"""Demand-driven slices: the scaling engine's rounds and the scale view.

``tick`` (run in the served-share monitor's round, after the answer counts it wrote) reads
every policy's slices with ``scale``, their query rates from the answer buckets (every
agent's answers for the slice, divided by ``spec.answers``: a response names that many
endpoints) and their stored counts (no row: ``scale.min``), and moves each count as the
pure ``dnsmesh.scaling.decide`` says. Every change is one revision with a change-log row of
operation ``scale`` carrying every scaled slice's count (so the feed pushes it like the
rollouts' shares) and an audit row (actor ``scale``) with the reason and the rate. The row
of a slice that no longer scales (or whose policy is gone) is dropped the same way.
Replicas run the same rounds: the plan is made again under the revision row's lock and the
transaction discarded when nothing is left to do, as the rollouts' are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy.orm import Session

from controller.db.models import SliceScaleRow
from controller.db.session import Database, as_utc, iso
from controller.repositories import policies
from controller.repositories import scaling as repo
from controller.repositories.history import SCALE, append_audit, append_change
from controller.services.engine_round import commit_plan
from controller.services.parsed_policies import ParsedPolicies
from dnsmesh import scaling
from dnsmesh.policy import Policy, Scale, Slice, scalable_endpoints
from dnsmesh.scaling import Demand, ScaleDecision, ScaleRule

ENGINE_ACTOR: Final = "scale"

SliceKey = tuple[str, str]  # (policy name, slice id)


@dataclass(frozen=True, slots=True)
class ScaleChange:
    policy: str
    slice: str
    revision: int
    count: int | None  # None: the row was dropped
    reason: str


Step = Callable[[Session, int], ScaleChange]


@dataclass(frozen=True, slots=True)
class _Scaled:
    policy: Policy
    slice_: Slice
    scale: Scale

    @property
    def slice_id(self) -> str:
        return self.slice_.id


class ScaleService:
    def __init__(self, db: Database, rule: ScaleRule, bucket_s: int) -> None:
        self.db = db
        self.rule = rule
        self.bucket_s = bucket_s
        self._parsed = ParsedPolicies()

    # -- reads -----------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        """GET /v1/policies/{name}/scale: each scaled slice's count, bounds and demand now."""

        def work(session: Session) -> dict[str, Any]:
            policies.require_policy(session, name)
            policy = next(p for p in self._parsed.read(session) if p.name == name)
            now = self.db.clock()
            buckets = repo.slice_buckets(session, self._since(now))
            out = []
            for scaled in _scaled_slices([policy]):
                key = (name, scaled.slice_id)
                row = repo.find_scale(session, *key)
                demand = self._demand(scaled, buckets.get(key, {}), now)
                count = row.count if row is not None else scaled.scale.min
                members = scalable_endpoints(policy.spec.endpoints, scaled.slice_.groups)
                out.append(
                    {
                        "slice": scaled.slice_id,
                        "count": count,
                        "min": scaled.scale.min,
                        "max": scaled.scale.max,
                        "target_qps_per_endpoint": scaled.scale.target_qps_per_endpoint,
                        "endpoints": [str(e.address) for e in members[:count]],
                        "qps": round(demand.qps, 3),
                        "peak_qps": round(demand.peak_qps, 3),
                        "revision": row.revision if row is not None else None,
                        "updated_at": iso(row.updated_at) if row is not None else None,
                        "reason": row.reason if row is not None else "at min: never scaled",
                    }
                )
            return {
                "policy": name,
                "slices": out,
                "rule": {
                    "window_s": self.rule.window_s,
                    "hold_s": self.rule.hold_s,
                    "headroom": self.rule.headroom,
                    "step_up": self.rule.step_up,
                    "step_down": self.rule.step_down,
                },
            }

        return self.db.read(work)

    # -- the engine ------------------------------------------------------------------------

    def tick(self) -> list[ScaleChange]:
        """One engine round; the changes it committed (none: no write at all)."""
        return commit_plan(self.db, self._plan)

    def _since(self, now: datetime) -> int:
        """The first bucket any decision looks at: the hold and a window before it."""
        oldest = now.timestamp() - self.rule.hold_s - self.rule.window_s - 2 * self.bucket_s
        return int(oldest) // self.bucket_s * self.bucket_s

    def _demand(self, scaled: _Scaled, answers: Mapping[int, int], now: datetime) -> Demand:
        per_response = scaled.policy.spec.answers
        queries = {bucket: n / per_response for bucket, n in answers.items()}
        return scaling.demand_of(queries, now.timestamp(), self.bucket_s, self.rule)

    def _plan(self, session: Session) -> list[Step]:
        now = self.db.clock()
        wanted = {
            (s.policy.name, s.slice_id): s for s in _scaled_slices(self._parsed.read(session))
        }
        rows = {(row.policy_name, row.slice_id): row for row in repo.scale_rows(session)}
        plan: list[Step] = [self._ender(key) for key in rows if key not in wanted]
        buckets = repo.slice_buckets(session, self._since(now))
        for key, scaled in sorted(wanted.items()):
            row = rows.get(key)
            count = row.count if row is not None else scaled.scale.min
            since_change = (
                math.inf if row is None else (now - as_utc(row.updated_at)).total_seconds()
            )
            demand = self._demand(scaled, buckets.get(key, {}), now)
            decision = scaling.decide(scaled.scale, count, demand, since_change, self.rule)
            if decision is not None:
                plan.append(self._mover(key, count, decision, demand))
        return plan

    def _mover(self, key: SliceKey, count: int, decision: ScaleDecision, demand: Demand) -> Step:
        def write(session: Session, revision: int) -> ScaleChange:
            row = repo.find_scale(session, *key)
            before = _row_json(row) if row is not None else {"count": count}
            if row is None:
                row = SliceScaleRow(policy_name=key[0], slice_id=key[1])
                session.add(row)
            row.count, row.qps, row.reason = decision.count, demand.qps, decision.reason
            row.revision, row.updated_at = revision, self.db.clock()
            session.flush()
            operation = "scale.up" if decision.count > count else "scale.down"
            after = {**_row_json(row), "peak_qps": demand.peak_qps}
            self._log(session, revision, key, operation, before, after)
            return ScaleChange(key[0], key[1], revision, decision.count, decision.reason)

        return write

    def _ender(self, key: SliceKey) -> Step:
        def write(session: Session, revision: int) -> ScaleChange:
            row = repo.find_scale(session, *key)
            assert row is not None
            before = _row_json(row)
            session.delete(row)
            session.flush()
            reason = "ended: the slice no longer scales"
            self._log(session, revision, key, "scale.end", before, {"reason": reason})
            return ScaleChange(key[0], key[1], revision, None, reason)

        return write

    def _log(
        self,
        session: Session,
        revision: int,
        key: SliceKey,
        operation: str,
        before: dict[str, Any],
        after: dict[str, Any],
    ) -> None:
        now = self.db.clock()
        counts = repo.read_counts(session)
        document = {
            "slice_scale": [
                {"policy": p, "slice": s, "count": counts[p][s]}
                for p in sorted(counts)
                for s in sorted(counts[p])
            ]
        }
        append_change(session, revision, "", SCALE, document, now)
        append_audit(
            session,
            at=now,
            actor=ENGINE_ACTOR,
            operation=operation,
            target=f"{key[0]}/{key[1]}",
            revision=revision,
            before=before,
            after=after,
        )
        session.flush()


def _scaled_slices(policies_: list[Policy]) -> list[_Scaled]:
    return [
        _Scaled(policy, slice_, slice_.scale)
        for policy in policies_
        for slice_ in policy.spec.slices
        if slice_.scale is not None
    ]


def _row_json(row: SliceScaleRow) -> dict[str, Any]:
    return {"count": row.count, "qps": row.qps, "reason": row.reason}
