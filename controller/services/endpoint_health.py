"""Endpoint health: storing agents' probe reports, and marking endpoints down by quorum.

Agents report what they measured per endpoint address (dnsmesh.protocol.Report). The latest
report per (agent, address) is kept in ``endpoint_health``, and a bounded history for
``history_s`` seconds in ``endpoint_reports``: a row per pair per window or state change,
its probes summed (controller.services.report_history). ``evaluate`` applies the quorum rule
(dnsmesh.quorum) to the latest reports and, when the resulting down set differs from the
stored one, commits it as a revision of its own: the revision counter is bumped, the
``endpoints_down`` rows are rewritten, a change-log row of operation ``down`` carries the
whole new set (so the feed, LISTEN/NOTIFY and the catch-up poll deliver it to agents like a
policy change) and the audit log records it with actor ``quorum``, all in one transaction.

Several replicas evaluate the same reports: the decision is re-made inside the transaction
that holds the revision row lock (controller.repositories.revision.bump_revision), and the
transaction is discarded when the stored set is already the computed one, so a set change
commits once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from controller.db.models import EndpointHealthRow, EndpointReportRow
from controller.db.session import Database, as_utc
from controller.repositories import drains, health
from controller.repositories.health import ReportValues, read_down
from controller.repositories.history import DOWN, append_audit, append_change
from controller.repositories.policies import policy_endpoints
from controller.repositories.revision import bump_revision, current_revision
from controller.services.health_view import HealthView, endpoint_address
from controller.services.parsed_policies import ParsedPolicies
from controller.services.report_history import HistorySampler
from dnsmesh import quorum
from dnsmesh.protocol import EndpointReport

QUORUM_ACTOR = "quorum"
DOWN_TARGET = "down-set"


@dataclass(frozen=True, slots=True)
class Received:
    """One report message as the controller received it (its clock, not the agent's)."""

    agent_id: str
    at: datetime
    endpoints: Sequence[EndpointReport]


@dataclass(frozen=True, slots=True)
class DownChange:
    """A committed change of the down set."""

    revision: int
    down: frozenset[str]
    marked: frozenset[str]  # went down
    cleared: frozenset[str]  # came back up


@dataclass(frozen=True, slots=True)
class Decision:
    down: frozenset[str]
    verdicts: dict[str, quorum.Verdict]
    streaks: dict[str, int]  # anti-flap: evaluations in a row each address wanted to flip
    held: frozenset[str]  # down by the verdict, kept up by a policy's safety rules


class EndpointHealthService:
    def __init__(
        self,
        db: Database,
        rule: quorum.QuorumRule | None = None,
        *,
        history_s: float = 3600.0,
        history_window_s: float = 30.0,
    ) -> None:
        self.db = db
        self.rule = rule or quorum.QuorumRule()
        self.history_s = history_s  # keep report history this long; 0: keep none
        # At most one history row per (agent, address) per window, or per state change.
        self.sampler = HistorySampler(history_window_s)
        self._policies = ParsedPolicies()
        # Anti-flap counts of this replica (dnsmesh.quorum.settle). In memory: a restarted
        # replica counts again from 0, which delays a flip by at most rise/fall rounds; the
        # stored down set is the state every replica shares.
        self._streaks: dict[str, int] = {}
        self.held: frozenset[str] = frozenset()

    # -- writes ----------------------------------------------------------------------------

    def write_reports(self, batch: Sequence[Received]) -> int:
        """Stores a batch of reports in one transaction; returns how many endpoint rows."""
        latest: dict[tuple[str, str], ReportValues] = {}
        history: list[ReportValues] = []
        reported = 0
        for received in batch:
            for endpoint in received.endpoints:
                row = {
                    "agent_id": received.agent_id,
                    "address": endpoint.address,
                    "latency_ms": endpoint.latency_ms,
                    "loss": endpoint.loss,
                    "state": endpoint.state,
                    "consecutive_failures": endpoint.consecutive_failures,
                    "samples": endpoint.samples,
                    "reported_at": received.at,
                }
                latest[(received.agent_id, endpoint.address)] = row  # the batch's last wins
                reported += 1
                kept = self.sampler.keep(row) if self.history_s > 0 else None
                if kept is not None:
                    history.append(kept)
        if not latest:
            return 0
        with self.db.writing() as transaction:
            session = transaction.session
            health.upsert_latest_reports(session, [latest[key] for key in sorted(latest)])
            if history:
                health.insert_report_history(session, history)
        return reported

    def prune_history(self) -> int:
        """Deletes history older than the retention window (and the latest rows of agents
        silent for as long); returns how many history rows went."""
        cutoff = self.db.clock() - timedelta(seconds=self.history_s)
        self.sampler.forget_before(cutoff - self.sampler.window)
        latest_cutoff = self.db.clock() - timedelta(
            seconds=max(self.history_s, 10 * self.rule.stale_s)
        )
        return self.db.write(
            lambda session: health.delete_reports_before(session, cutoff, latest_cutoff)
        )

    def evaluate(self) -> DownChange | None:
        """Applies the rule; commits and returns the change if the down set moved."""
        streaks = self._streaks
        stored, computed = self.db.read(lambda session: self._decide(session, streaks))
        self._streaks, self.held = computed.streaks, computed.held
        if computed.down == stored:
            return None  # the common case: a read, no lock
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            # Decided again under the revision row lock: another replica may have committed
            # this very change meanwhile (then there is nothing left to do).
            before, decision = self._decide(session, streaks)
            if decision.down == before:
                transaction.discard()
                return None
            return self._mark(session, revision, before, decision)

    # -- reads -----------------------------------------------------------------------------

    def down(self) -> list[str]:
        return self.db.read(read_down)

    def latest(self) -> list[EndpointHealthRow]:
        return self.db.read(health.latest_reports)

    def history(self, address: str | None = None) -> list[EndpointReportRow]:
        return self.db.read(lambda session: health.report_history(session, address))

    def view(self) -> HealthView:
        """Everything /v1/endpoints and /v1/topology show, read in one snapshot."""

        def work(session: Session) -> HealthView:
            now = self.db.clock()
            rows = list(health.latest_reports(session))
            policies = {
                name: [
                    endpoint_address(e.get("address", ""))
                    for e in document.get("spec", {}).get("endpoints", [])
                ]
                for name, document in policy_endpoints(session)
            }
            return HealthView(
                current_revision(session),
                now,
                rows,
                health.down_rows(session),
                health.agent_names(session),
                policies,
                self.rule,
                drains.live(drains.drain_rows(session), now),
            )

        return self.db.read(work)

    # -- internals -------------------------------------------------------------------------

    def _decide(self, session: Session, streaks: dict[str, int]) -> tuple[frozenset[str], Decision]:
        now = self.db.clock()
        stored = frozenset(read_down(session))
        votes: dict[str, list[quorum.Vote]] = defaultdict(list)
        # Only fresh rows can vote: the rest need not leave the database (every replica
        # runs this every second). Addresses without a fresh row but down are judged too.
        fresh_since = now - timedelta(seconds=self.rule.stale_s)
        for address, agent_id, state, loss, reported_at in health.fresh_votes(session, fresh_since):
            age = (now - as_utc(reported_at)).total_seconds()
            votes[address].append(quorum.Vote(agent_id, state, loss, age))
        verdicts = quorum.evaluate(votes, stored, self.rule)
        settled = quorum.settle(
            verdicts,
            stored,
            streaks,
            self._policies.read(session),
            drains.read_drains(session, now),
        )
        return stored, Decision(settled.down, verdicts, settled.streaks, settled.held)

    def _mark(
        self, session: Session, revision: int, before: frozenset[str], decision: Decision
    ) -> DownChange:
        now = self.db.clock()
        marked = decision.down - before
        cleared = before - decision.down
        health.clear_down(session, cleared)
        for address in sorted(marked):
            verdict = decision.verdicts[address]
            health.add_down(
                session,
                address,
                revision=revision,
                since=now,
                voters=verdict.voters,
                failing=verdict.failing,
            )
        document = {"down": sorted(decision.down)}
        append_change(session, revision, "", DOWN, document, now)
        append_audit(
            session,
            at=now,
            actor=QUORUM_ACTOR,
            operation="endpoints.down",
            target=DOWN_TARGET,
            revision=revision,
            before={"down": sorted(before)},
            after={
                **document,
                "marked": sorted(marked),
                "cleared": sorted(cleared),
                "votes": {
                    a: {"voters": v.voters, "failing": v.failing}
                    for a, v in decision.verdicts.items()
                    if a in marked or a in cleared
                },
            },
        )
        session.flush()
        return DownChange(revision, decision.down, frozenset(marked), frozenset(cleared))
