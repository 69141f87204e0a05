"""Endpoint health in the database: agents' probe reports, and the quorum's down set.

Agents report what they measured per endpoint address (dnsmesh.protocol.Report). The latest
report per (agent, address) is kept in ``endpoint_health``, every report for
``history_s`` seconds in ``endpoint_reports``. ``evaluate`` applies the quorum rule
(dnsmesh.quorum) to the latest reports and, when the resulting down set differs from the
stored one, commits it as a revision of its own: the revision counter is bumped, the
``endpoints_down`` rows are rewritten, a change-log row of operation ``down`` carries the
whole new set (so the feed, LISTEN/NOTIFY and the catch-up poll deliver it to agents like a
policy change) and the audit log records it with actor ``quorum``, all in one transaction.

Several replicas evaluate the same reports: the decision is re-made inside the transaction
that holds the revision row lock (controller.db.session.write_revision), and nothing is
written when the stored set is already the computed one, so a set change commits once.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Table,
    delete,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controller.db.models import (
    AgentRow,
    AuditRow,
    ChangeRow,
    DownRow,
    EndpointHealthRow,
    EndpointReportRow,
    PolicyRow,
)
from controller.db.session import Database, Rollback, as_utc, current_revision_in, iso
from controller.history import DOWN
from dnsmesh import quorum
from dnsmesh.protocol import EndpointReport

QUORUM_ACTOR = "quorum"
DOWN_TARGET = "down-set"


_LATEST = cast(Table, EndpointHealthRow.__table__)
_HISTORY = cast(Table, EndpointReportRow.__table__)
_MEASURED = ("latency_ms", "loss", "state", "consecutive_failures", "samples", "reported_at")


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


def _address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return str(value)


def read_down(session: Session) -> list[str]:
    """The stored down set, sorted (for snapshots: read in the same snapshot as policies)."""
    return list(session.scalars(select(DownRow.address).order_by(DownRow.address)))


class HealthStore:
    def __init__(
        self, db: Database, rule: quorum.QuorumRule | None = None, *, history_s: float = 3600.0
    ) -> None:
        self.db = db
        self.rule = rule or quorum.QuorumRule()
        self.history_s = history_s  # keep report history this long; 0: keep none

    # -- writes ----------------------------------------------------------------------------

    def write_reports(self, batch: Sequence[Received]) -> int:
        """Stores a batch of reports in one transaction; returns how many endpoint rows."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        history: list[dict[str, Any]] = []
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
                history.append(row)
        if not latest:
            return 0

        def work(session: Session) -> int:
            dialect = session.get_bind().dialect.name
            upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_LATEST)
            statement = upsert.on_conflict_do_update(
                index_elements=["agent_id", "address"],
                set_={name: upsert.excluded[name] for name in _MEASURED},
            )
            # Sorted keys: two replicas upserting overlapping rows lock them in one order.
            session.execute(statement, [latest[key] for key in sorted(latest)])
            if self.history_s > 0:
                session.execute(insert(_HISTORY), history)
            return len(history)

        return self.db.write(work)

    def prune_history(self) -> int:
        """Deletes history older than the retention window (and the latest rows of agents
        silent for as long); returns how many history rows went."""
        cutoff = self.db.clock() - timedelta(seconds=self.history_s)
        latest_cutoff = self.db.clock() - timedelta(
            seconds=max(self.history_s, 10 * self.rule.stale_s)
        )

        def work(session: Session) -> int:
            result = session.execute(
                delete(EndpointReportRow).where(EndpointReportRow.reported_at < cutoff)
            )
            session.execute(
                delete(EndpointHealthRow).where(EndpointHealthRow.reported_at < latest_cutoff)
            )
            return int(getattr(result, "rowcount", 0) or 0)

        return self.db.write(work)

    def evaluate(self) -> DownChange | None:
        """Applies the rule; commits and returns the change if the down set moved."""
        stored, computed = self.db.read(self._decide)
        if computed.down == stored:
            return None  # the common case: a read, no lock

        def work(session: Session, revision: int) -> DownChange:
            # Decided again under the revision row lock: another replica may have committed
            # this very change meanwhile (then there is nothing left to do).
            before, decision = self._decide(session)
            if decision.down == before:
                raise Rollback(None)
            return self._commit(session, revision, before, decision)

        result: DownChange | None = self.db.write_revision(work)
        return result

    # -- reads -----------------------------------------------------------------------------

    def down(self) -> list[str]:
        return self.db.read(read_down)

    def latest(self) -> list[EndpointHealthRow]:
        return self.db.read(
            lambda session: list(
                session.scalars(
                    select(EndpointHealthRow).order_by(
                        EndpointHealthRow.address, EndpointHealthRow.agent_id
                    )
                )
            )
        )

    def history(self, address: str | None = None) -> list[EndpointReportRow]:
        def work(session: Session) -> list[EndpointReportRow]:
            query = select(EndpointReportRow).order_by(EndpointReportRow.id)
            if address is not None:
                query = query.where(EndpointReportRow.address == address)
            return list(session.scalars(query))

        return self.db.read(work)

    def view(self) -> HealthView:
        """Everything /v1/endpoints and /v1/topology show, read in one snapshot."""

        def work(session: Session) -> HealthView:
            now = self.db.clock()
            rows = list(session.scalars(select(EndpointHealthRow)))
            down = {row.address: row for row in session.scalars(select(DownRow))}
            agents = {
                row.agent_id: (row.node_name, dict(row.labels))
                for row in session.scalars(select(AgentRow))
            }
            policies: dict[str, list[str]] = {}
            for name, document in session.execute(select(PolicyRow.name, PolicyRow.document)):
                endpoints = document.get("spec", {}).get("endpoints", [])
                policies[name] = [_address(e.get("address", "")) for e in endpoints]
            revision = current_revision_in(session)
            return HealthView(revision, now, rows, down, agents, policies, self.rule)

        return self.db.read(work)

    # -- internals -------------------------------------------------------------------------

    def _decide(self, session: Session) -> tuple[frozenset[str], Decision]:
        now = self.db.clock()
        stored = frozenset(read_down(session))
        votes: dict[str, list[quorum.Vote]] = defaultdict(list)
        # Only fresh rows can vote: the rest need not leave the database (every replica
        # runs this every second). Addresses without a fresh row but down are judged too.
        fresh_since = now - timedelta(seconds=self.rule.stale_s)
        rows = session.execute(
            select(
                EndpointHealthRow.address,
                EndpointHealthRow.agent_id,
                EndpointHealthRow.state,
                EndpointHealthRow.loss,
                EndpointHealthRow.reported_at,
            ).where(EndpointHealthRow.reported_at >= fresh_since)
        )
        for address, agent_id, state, loss, reported_at in rows:
            age = (now - as_utc(reported_at)).total_seconds()
            votes[address].append(quorum.Vote(agent_id, state, loss, age))
        verdicts = quorum.evaluate(votes, stored, self.rule)
        return stored, Decision(quorum.down_set(verdicts), verdicts)

    def _commit(
        self, session: Session, revision: int, before: frozenset[str], decision: Decision
    ) -> DownChange:
        now = self.db.clock()
        marked = decision.down - before
        cleared = before - decision.down
        if cleared:
            session.execute(delete(DownRow).where(DownRow.address.in_(sorted(cleared))))
        for address in sorted(marked):
            verdict = decision.verdicts[address]
            session.add(
                DownRow(
                    address=address,
                    revision=revision,
                    since=now,
                    voters=verdict.voters,
                    failing=verdict.failing,
                )
            )
        document = {"down": sorted(decision.down)}
        session.add(
            ChangeRow(
                revision=revision, policy_name="", operation=DOWN, document=document, created_at=now
            )
        )
        session.add(
            AuditRow(
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
        )
        session.flush()
        return DownChange(revision, decision.down, frozenset(marked), frozenset(cleared))


@dataclass(frozen=True, slots=True)
class Decision:
    down: frozenset[str]
    verdicts: dict[str, quorum.Verdict]


@dataclass(frozen=True, slots=True)
class HealthView:
    """The latest reports, the down set, the agents and the policies' endpoints, as of ``now``."""

    revision: int
    now: datetime
    rows: list[EndpointHealthRow]
    down: dict[str, DownRow]
    agents: dict[str, tuple[str, dict[str, str]]]  # agent id -> node name, labels
    policies: dict[str, list[str]]  # policy name -> its endpoint addresses
    rule: quorum.QuorumRule

    def age_s(self, row: EndpointHealthRow) -> float:
        return (self.now - as_utc(row.reported_at)).total_seconds()

    def report_json(self, row: EndpointHealthRow) -> dict[str, Any]:
        age = self.age_s(row)
        down = row.address in self.down
        vote = quorum.Vote(row.agent_id, row.state, row.loss, age)
        voting = age <= self.rule.stale_s and row.state != "unknown"
        return {
            "agent_id": row.agent_id,
            "node_name": self.agents.get(row.agent_id, (None, {}))[0],
            "state": row.state,
            "latency_ms": row.latency_ms,
            "loss": row.loss,
            "consecutive_failures": row.consecutive_failures,
            "samples": row.samples,
            "reported_at": iso(row.reported_at),
            "age_s": round(age, 3),
            "stale": age > self.rule.stale_s,
            "failing": voting and quorum.is_failing(vote, self.rule, down=down),
        }
