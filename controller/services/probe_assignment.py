"""Coordinated probing: keeping the stored probe assignment in step with the agents.

Every round of the health monitor (controller.quorum_monitor) computes the assignment
(dnsmesh.probing) from the policies and the connected agents, with the latency each zone
measured of the addresses of latency-weighted policies, and compares it with the stored
one. A difference is committed as a revision of its own (operation ``probers``, actor
``probing``) once it has been there for ``delay_s``: a connect storm (a restart of the
fleet, a replica's agents moving to another) is one revision per ``delay_s``, not one per
agent. The wait is per replica, in memory; the commit is decided again under the revision
row lock, so two replicas commit one change once.

A zone's latency is the median of the fresh latest reports of that zone's agents; it
counts as changed when it moves by more than ``LATENCY_MOVE`` of itself (and at least
1 ms), so the figures agents borrow are refreshed without a revision per report.

Reading every live agent's row each round is O(fleet): at 10,000 agents it was a fifth
of the controller's CPU. So a round looks only when something it depends on may have
moved: the hub calls ``touch`` when its agents' rows changed (connects, disconnects,
shadowed names) and when the feed moved (policies, other replicas' commits); reports
touch it only while some assignment uses zone latency. A difference waiting out
``delay_s`` is looked at every round, and every ``refresh_s`` a round looks anyway, for
what no event tells this replica of (agents of a replica that died going stale). Without
any budget (``--probes-per-endpoint 0`` and no policy asking) the agents are not read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median

from sqlalchemy.orm import Session

from controller.db.session import Database, as_utc
from controller.repositories import agents, health
from controller.repositories.history import PROBERS, append_audit, append_change
from controller.repositories.probers import read_probers, replace_probers
from controller.repositories.revision import bump_revision
from controller.services.parsed_policies import ParsedPolicies
from dnsmesh import probing
from dnsmesh.policy import Policy, Strategy
from dnsmesh.probing import Assignment, ProbingAgent
from dnsmesh.protocol import prober_entries

PROBING_ACTOR = "probing"
PROBERS_TARGET = "probers"
LATENCY_MOVE = 0.25  # a zone's latency this much off the stored figure is news


@dataclass(frozen=True, slots=True)
class ProbingSettings:
    """``dnsmesh controller --probes-per-endpoint/--probe-spread-label/--probe-reassign-delay``."""

    per_endpoint: int = probing.DEFAULT_PROBES_PER_ENDPOINT  # 0: every agent probes
    spread_label: str = probing.DEFAULT_SPREAD_LABEL
    delay_s: float = 2.0  # a difference waits this long before it is committed
    agent_stale_s: float = 60.0  # an agent not seen for this long is not connected
    report_stale_s: float = 30.0  # reports older than this give no zone latency
    min_agents: int = 1  # the quorum's: no address gets fewer probers than this
    refresh_s: float = 10.0  # look this often even when nothing said the fleet changed


@dataclass(frozen=True, slots=True)
class ProbersChange:
    revision: int
    moved: list[str]  # addresses whose probers changed


class ProbeAssignmentService:
    def __init__(self, db: Database, settings: ProbingSettings | None = None) -> None:
        self.db = db
        self.settings = settings or ProbingSettings()
        self._policies = ParsedPolicies()
        self._pending_since: float | None = None  # when this replica first saw a difference
        # The last assignment computed and what from: a round whose agents and policies
        # are the same objects' (ParsedPolicies keeps unchanged ones) reuses it, since
        # 1,000 agents x 100 endpoints is 100,000 hashes (bench/probing.py: ~0.1 s).
        self._memo: tuple[tuple[object, ...], dict[str, tuple[str, ...]]] | None = None
        # Set by touch() on the event loop, cleared by reconcile() in a worker thread before
        # it reads: a touch during the read makes the next round look again.
        self._dirty = True
        self._uses_latency = False  # the last assignment had latency-weighted addresses
        self._next_look: float | None = None  # monotonic time of the next unasked look
        self.looks = 0  # rounds that read the stored state (for tests and the bench)

    def touch(self) -> None:
        """Something the assignment depends on may have changed: the next round looks."""
        self._dirty = True

    def reported(self) -> None:
        """Reports were written: news only when zone latency is part of the assignment."""
        if self._uses_latency:
            self._dirty = True

    def _should_look(self, monotonic_now: float) -> bool:
        if self._dirty or self._pending_since is not None:
            return True
        return self._next_look is None or monotonic_now >= self._next_look

    def wanted(self, session: Session) -> Assignment:
        """The assignment the stored state asks for now."""
        now = self.db.clock()
        settings = self.settings
        policies = self._policies.read(session)
        if not probing.coordinated(policies, settings.per_endpoint):
            self._uses_latency = False
            return Assignment({}, {}, settings.spread_label)
        live = agents.live_agents(session, now - timedelta(seconds=settings.agent_stale_s))
        zones = {agent_id: labels.get(settings.spread_label, "") for agent_id, labels, _ in live}
        connected = [
            ProbingAgent(
                agent_id,
                zones[agent_id],
                frozenset(str(s.get("name", "")) for s in shadowed or []),
            )
            for agent_id, _, shadowed in live
        ]
        key = (*connected, *policies)  # the same objects compare by identity first
        if self._memo is not None and self._memo[0] == key:
            probers = self._memo[1]
        else:
            probers = probing.assign(
                policies, connected, settings.per_endpoint, floor=settings.min_agents
            )
            self._memo = (key, probers)
        fresh_since = now - timedelta(seconds=settings.report_stale_s)
        latency = _zone_latency(session, policies, probers, zones, fresh_since)
        self._uses_latency = any(
            p.spec.strategy is Strategy.LATENCY_WEIGHTED for p in policies
        ) and bool(probers)
        return Assignment(probers, latency, settings.spread_label)

    def reconcile(self, monotonic_now: float) -> ProbersChange | None:
        """One round: commits the wanted assignment once it differed for ``delay_s``."""
        if not self._should_look(monotonic_now):
            return None
        self._dirty = False
        self._next_look = monotonic_now + self.settings.refresh_s
        self.looks += 1
        try:
            return self._reconcile(monotonic_now)
        except BaseException:
            self._dirty = True  # the database was away: look again next round
            raise

    def _reconcile(self, monotonic_now: float) -> ProbersChange | None:
        stored, wanted = self.db.read(lambda session: (read_probers(session), self.wanted(session)))
        if same(stored, wanted):
            self._pending_since = None
            return None
        if self._pending_since is None:
            self._pending_since = monotonic_now
        if monotonic_now - self._pending_since < self.settings.delay_s:
            return None
        self._pending_since = None
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            before, after = read_probers(session), self.wanted(session)
            if same(before, after):  # another replica committed it meanwhile
                transaction.discard()
                return None
            return _commit(session, revision, before, after, self.db.clock())


def same(stored: Assignment, wanted: Assignment) -> bool:
    """Whether committing ``wanted`` would tell agents nothing new."""
    if stored.spread_label != wanted.spread_label or stored.probers != wanted.probers:
        return False
    if stored.zone_latency_ms.keys() != wanted.zone_latency_ms.keys():
        return False
    for address, zones in wanted.zone_latency_ms.items():
        old = stored.zone_latency_ms[address]
        if old.keys() != zones.keys():
            return False
        for zone, value in zones.items():
            if abs(value - old[zone]) > max(1.0, LATENCY_MOVE * old[zone]):
                return False
    return True


def _zone_latency(
    session: Session,
    policies: list[Policy],
    probers: Mapping[str, tuple[str, ...]],
    zones: Mapping[str, str],
    fresh_since: datetime,
) -> dict[str, dict[str, float]]:
    """address -> zone -> median latency (ms) of its probers' fresh healthy reports, for the
    coordinated addresses of latency-weighted policies (the only ones that use it)."""
    weighted = {
        str(e.address)
        for p in policies
        if p.spec.strategy is Strategy.LATENCY_WEIGHTED
        for e in p.spec.endpoints
    } & set(probers)
    if not weighted:
        return {}
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in health.latest_reports(session):
        if (
            row.address in weighted
            and row.state == "healthy"
            and row.latency_ms is not None
            and row.agent_id in zones
            and as_utc(row.reported_at) >= fresh_since
        ):
            found[row.address][zones[row.agent_id]].append(row.latency_ms)
    return {
        address: {zone: round(median(values), 3) for zone, values in sorted(by_zone.items())}
        for address, by_zone in sorted(found.items())
    }


def _commit(
    session: Session, revision: int, before: Assignment, after: Assignment, now: datetime
) -> ProbersChange:
    replace_probers(session, after, revision)
    document = {"probers": prober_entries(after).model_dump(mode="json")}
    append_change(session, revision, "", PROBERS, document, now)
    moved = probing.moved(before.probers, after.probers)
    append_audit(
        session,
        at=now,
        actor=PROBING_ACTOR,
        operation="endpoints.probers",
        target=PROBERS_TARGET,
        revision=revision,
        before={"moved": {a: list(before.probers.get(a, ())) for a in moved}},
        after={"moved": {a: list(after.probers.get(a, ())) for a in moved}},
    )
    session.flush()
    return ProbersChange(revision, moved)
