"""Rollouts: the canary engine's rounds and the operators' rollout commands.

A rollout row exists for every policy with ``spec.canary``. ``tick`` (run in the quorum
monitor's round, right after the reports it wrote) starts a rollout at its first step when a
policy with a canary is new or its canary block or canary group's endpoints changed (the
row's fingerprint), drops the rows of policies that lost their canary, and moves each
watched rollout as the pure ``dnsmesh.rollout.decide`` says from the latest probe reports
and the quorum's down set. Every transition, the engine's or an operator's, is one revision
with a change-log row of operation ``rollout`` carrying every policy's share (so the feed
pushes it like the drains) and an audit row with its reason (actor ``rollout`` for the
engine). Replicas run the same rounds: the decision is made again under the revision row's
lock and the transaction discarded when nothing is left to do, as the quorum's writes are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from controller.db.models import RolloutRow
from controller.db.session import Database, as_utc, iso
from controller.errors import Conflict, NotFound
from controller.repositories import health, policies
from controller.repositories import rollouts as repo
from controller.repositories.health import read_down
from controller.repositories.history import ROLLOUT, append_audit, append_change
from controller.repositories.revision import bump_revision
from controller.services.engine_round import commit_plan
from controller.services.parsed_policies import ParsedPolicies
from controller.services.policies import PolicyService
from controller.services.policy_rules import content
from dnsmesh import rollout
from dnsmesh.policy import Canary, Policy
from dnsmesh.rollout import Current, Decision, Figures, Reading, RolloutState

ENGINE_ACTOR = "rollout"
DEFAULT_STALE_S = 30.0  # the quorum's: older reports say nothing about now


def fingerprint(policy: Policy) -> str:
    """What, when it changes, starts a policy's rollout again: its canary block and the
    endpoints of its canary group."""
    canary = policy.spec.canary
    assert canary is not None
    members = [e.model_dump(mode="json") for e in policy.spec.endpoints if e.group == canary.group]
    text = json.dumps([canary.model_dump(mode="json"), members], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Transition:
    policy: str
    revision: int
    state: str
    share: int
    reason: str


# One write of a round: given the session and the revision it commits as.
Step = Callable[[Session, int], "Transition"]


def _current(row: RolloutRow) -> Current:
    due = as_utc(row.next_step_at) if row.next_step_at is not None else None
    return Current(row.step, row.share, RolloutState(row.state), due)


class RolloutService:
    def __init__(
        self,
        db: Database,
        policy_service: PolicyService | None = None,
        *,
        stale_s: float = DEFAULT_STALE_S,
    ) -> None:
        self.db = db
        self.policies = policy_service or PolicyService(db)
        self.stale_s = stale_s
        self._parsed = ParsedPolicies()

    # -- reads -----------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        """GET /v1/policies/{name}/rollout: where it is and the figures a decision would use."""

        def work(session: Session) -> dict[str, Any]:
            policy = self._policy(session, name)
            row = repo.find_rollout(session, name)
            canary = policy.spec.canary
            if row is None or canary is None:
                raise Conflict("no_rollout", f"policy {name!r} has no rollout")
            now = self.db.clock()
            figures = self._figures(session, policy, canary, now)
            due = as_utc(row.next_step_at) if row.next_step_at is not None else None
            return {
                "policy": name,
                "group": row.group_name,
                "step": row.step + 1,
                "steps": list(canary.steps),
                "share": row.share,
                "state": row.state,
                "next_step_at": iso(due) if due is not None else None,
                "next_step_in_s": max(0.0, (due - now).total_seconds()) if due else None,
                "revision": row.revision,
                "updated_at": iso(row.updated_at),
                "reason": row.reason,
                "decided_with": row.figures,
                "health": figures.as_json(),
                "bounds": {
                    "max_loss": canary.max_loss,
                    "max_latency_ms": canary.max_latency_ms,
                    "min_reports": canary.reports_needed,
                },
            }

        return self.db.read(work)

    # -- the engine ------------------------------------------------------------------------

    def tick(self) -> list[Transition]:
        """One engine round; the transitions it committed (none: no write at all)."""
        return commit_plan(self.db, self._plan)

    def _plan(self, session: Session) -> list[Step]:
        """The writes this round needs, decided from what is stored now."""
        now = self.db.clock()
        by_name = {p.name: p for p in self._parsed.read(session)}
        rows = {row.policy_name: row for row in repo.rollout_rows(session)}
        plan: list[Step] = []
        for name, row in rows.items():
            policy = by_name.get(name)
            if policy is None or policy.spec.canary is None:
                plan.append(self._ender(row))
        for name, policy in sorted(by_name.items()):
            canary = policy.spec.canary
            if canary is None:
                continue
            stored = rows.get(name)
            print_ = fingerprint(policy)
            if stored is None or stored.fingerprint != print_:
                why = "policy created" if stored is None else "canary group or canary changed"
                plan.append(self._starter(policy, canary, print_, f"started: {why}"))
                continue
            figures = self._figures(session, policy, canary, now)
            decision = rollout.decide(canary, _current(stored), figures, now)
            if decision is not None:
                plan.append(self._mover(name, decision))
        return plan

    def _figures(self, session: Session, policy: Policy, canary: Canary, now: datetime) -> Figures:
        addresses = rollout.canary_addresses(policy.spec)
        wanted = set(addresses)
        readings = [
            Reading(
                r.agent_id,
                r.address,
                r.loss,
                r.latency_ms,
                r.state,
                (now - as_utc(r.reported_at)).total_seconds(),
            )
            for r in health.latest_reports(session)
            if r.address in wanted
        ]
        return rollout.measure(
            canary, addresses, readings, frozenset(read_down(session)), self.stale_s
        )

    def _starter(self, policy: Policy, canary: Canary, print_: str, reason: str) -> Step:
        def write(session: Session, revision: int) -> Transition:
            now = self.db.clock()
            begun = rollout.start(canary, now)
            row = repo.find_rollout(session, policy.name)
            if row is None:
                row = RolloutRow(policy_name=policy.name)
                session.add(row)
            row.group_name, row.fingerprint = canary.group, print_
            return self._commit(
                session, revision, row, begun, reason, None, ENGINE_ACTOR, "rollout.start"
            )

        return write

    def _mover(self, name: str, decision: Decision) -> Step:
        def write(session: Session, revision: int) -> Transition:
            row = repo.find_rollout(session, name)
            assert row is not None
            moved = Current(decision.step, decision.share, decision.state, decision.next_step_at)
            operation = (
                "rollout.rollback" if decision.state is RolloutState.ROLLED_BACK else "rollout.step"
            )
            return self._commit(
                session,
                revision,
                row,
                moved,
                decision.reason,
                decision.figures,
                ENGINE_ACTOR,
                operation,
            )

        return write

    def _ender(self, row: RolloutRow) -> Step:
        name = row.policy_name

        def write(session: Session, revision: int) -> Transition:
            stored = repo.find_rollout(session, name)
            assert stored is not None
            before = _row_json(stored)
            session.delete(stored)
            session.flush()
            reason = "ended: the policy has no canary any more"
            self._log(session, revision, name, ENGINE_ACTOR, "rollout.end", before, None, reason)
            return Transition(name, revision, "ended", 0, reason)

        return write

    # -- the operators' commands -----------------------------------------------------------

    def pause(self, name: str, *, actor: str) -> Transition:
        return self._operate(name, actor, "pause", self._paused)

    def resume(self, name: str, *, actor: str) -> Transition:
        return self._operate(name, actor, "resume", self._resumed)

    def promote(self, name: str, *, actor: str) -> Transition:
        return self._operate(name, actor, "promote", self._promoted)

    def abort(self, name: str, *, actor: str) -> Transition:
        return self._operate(name, actor, "abort", self._aborted)

    def undo(self, name: str, *, actor: str) -> int:
        """Puts back the policy's document before its last write; the revision written."""
        before = self.db.read(lambda session: self._previous(session, name))
        written = self.policies.put_policy(name, content(before), actor=actor)
        return written.policy.revision

    def _previous(self, session: Session, name: str) -> dict[str, Any]:
        policies.require_policy(session, name)
        before = repo.previous_document(session, name)
        if before is None:
            raise Conflict("no_previous_revision", f"policy {name!r} has no earlier revision")
        return before

    def _operate(
        self,
        name: str,
        actor: str,
        action: str,
        move: Callable[[Canary, Current, datetime], Current | str],
    ) -> Transition:
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            policy = self._policy(session, name)
            row = repo.find_rollout(session, name)
            canary = policy.spec.canary
            if row is None or canary is None:
                raise Conflict("no_rollout", f"policy {name!r} has no rollout")
            moved = move(canary, _current(row), self.db.clock())
            if isinstance(moved, str):
                raise Conflict("rollout_state", moved)
            reason = f"{action} by {actor}"
            operation = f"rollout.{action}"
            return self._commit(session, revision, row, moved, reason, None, actor, operation)

    @staticmethod
    def _paused(canary: Canary, current: Current, now: datetime) -> Current | str:
        if current.state is not RolloutState.PROGRESSING:
            return f"a rollout that is {current.state.value} cannot be paused"
        return Current(current.step, current.share, RolloutState.PAUSED, None)

    @staticmethod
    def _resumed(canary: Canary, current: Current, now: datetime) -> Current | str:
        if current.state is RolloutState.PAUSED:
            due = now + timedelta(seconds=canary.interval)
            return Current(current.step, current.share, RolloutState.PROGRESSING, due)
        if current.state in (RolloutState.ROLLED_BACK, RolloutState.ABORTED):
            return rollout.start(canary, now)  # again from the first step
        return f"a rollout that is {current.state.value} cannot be resumed"

    @staticmethod
    def _promoted(canary: Canary, current: Current, now: datetime) -> Current | str:
        return Current(len(canary.steps) - 1, 100, RolloutState.PROMOTED, None)

    @staticmethod
    def _aborted(canary: Canary, current: Current, now: datetime) -> Current | str:
        return Current(current.step, 0, RolloutState.ABORTED, None)

    # -- internals -------------------------------------------------------------------------

    def _policy(self, session: Session, name: str) -> Policy:
        policies.require_policy(session, name)
        for policy in self._parsed.read(session):
            if policy.name == name:
                return policy
        raise NotFound(f"policy {name!r} does not exist")

    def _commit(
        self,
        session: Session,
        revision: int,
        row: RolloutRow,
        moved: Current,
        reason: str,
        figures: Figures | None,
        actor: str,
        operation: str,
    ) -> Transition:
        before = _row_json(row) if row.state else None
        row.step, row.share, row.state = moved.step, moved.share, moved.state.value
        row.next_step_at, row.reason = moved.next_step_at, reason
        row.figures = figures.as_json() if figures is not None else None
        row.revision, row.updated_at = revision, self.db.clock()
        session.flush()
        self._log(session, revision, row.policy_name, actor, operation, before, row, reason)
        return Transition(row.policy_name, revision, row.state, row.share, reason)

    def _log(
        self,
        session: Session,
        revision: int,
        name: str,
        actor: str,
        operation: str,
        before: dict[str, Any] | None,
        after: RolloutRow | None,
        reason: str,
    ) -> None:
        now = self.db.clock()
        shares = repo.read_shares(session)
        document = {"rollouts": [{"policy": p, "share": s} for p, s in sorted(shares.items())]}
        append_change(session, revision, "", ROLLOUT, document, now)
        append_audit(
            session,
            at=now,
            actor=actor,
            operation=operation,
            target=name,
            revision=revision,
            before=before,
            after={**(_row_json(after) if after is not None else {}), "reason": reason},
        )
        session.flush()


def _row_json(row: RolloutRow) -> dict[str, Any]:
    return {
        "step": row.step,
        "share": row.share,
        "state": row.state,
        "figures": row.figures,
    }
