"""The health monitor: writes agents' reports in batches and keeps the quorum's verdict current.

Like controller.recorder, the hub hands reports over without awaiting the database
(``record``); one task writes whatever queued up in one transaction, then evaluates the
quorum rule (controller.services.endpoint_health). It also evaluates every ``evaluate_s``
without new reports, because reports going stale can change the verdict too, prunes the
history, ends the drains whose time is up (controller.services.drains), so a drain's
``for`` ends within about ``evaluate_s`` of its time, runs the canary engine
(controller.services.rollouts) after the quorum, so a report that breaks a canary's bounds
rolls it back in the round that wrote it, and keeps the probe assignment in step with the
agents (controller.services.probe_assignment).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from controller.batching import BatchQueue
from controller.db.session import Database
from controller.errors import DatabaseUnavailable
from controller.services.drains import DrainService
from controller.services.endpoint_health import EndpointHealthService, Received
from controller.services.probe_assignment import ProbeAssignmentService, ProbingSettings
from controller.services.rollouts import RolloutService
from dnsmesh import protocol, quorum
from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.controller.health")

T = TypeVar("T")

# Reports kept while the database is away; past this the oldest are dropped (every agent
# reports again within seconds anyway).
MAX_QUEUED = 50_000


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Knobs of the feedback loop (``dnsmesh controller --quorum-*``/``--report-*`` flags)."""

    rule: quorum.QuorumRule = field(default_factory=quorum.QuorumRule)
    history_s: float = 3600.0  # keep report history this long; 0: keep only the latest
    history_window_s: float = 30.0  # a history row per (agent, address) per window at most
    evaluate_s: float = 1.0  # re-apply the rule this often even without new reports
    prune_s: float = 60.0
    batch_delay_s: float = 0.05
    probing: ProbingSettings = field(default_factory=ProbingSettings)


class QuorumMonitor:
    def __init__(self, db: Database, settings: HealthSettings | None = None) -> None:
        self.settings = settings or HealthSettings()
        self.db = db
        self.service = EndpointHealthService(
            db,
            self.settings.rule,
            history_s=self.settings.history_s,
            history_window_s=self.settings.history_window_s,
        )
        self.drains = DrainService(db)
        self.rollouts = RolloutService(db, stale_s=self.settings.rule.stale_s)
        self.probing = ProbeAssignmentService(db, self.settings.probing)
        self._reports: BatchQueue[Received] = BatchQueue(MAX_QUEUED)
        self.changes = 0  # down-set revisions this replica committed (for tests and logs)
        self.assignments = 0  # probe-assignment revisions this replica committed

    def record(self, agent_id: str, report: protocol.Report) -> None:
        """Queues one agent's report, stamped with the controller's clock."""
        self._reports.put(Received(agent_id, self.db.clock(), report.endpoints))

    async def flush(self, within_s: float = 5.0) -> bool:
        """Waits until everything queued so far is written and evaluated; False on timeout."""
        return await self._reports.flush(within_s)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            # Evaluated every evaluate_s even without reports: reports going stale can
            # change the verdict too.
            await self._reports.gather(self.settings.evaluate_s, self.settings.batch_delay_s)
            batch = self._reports.take()
            if batch and not await self._write(batch):
                self._reports.put_back(batch)  # the database is away: again later
                await asyncio.sleep(1.0)
                continue
            if batch:
                self.probing.reported()  # zone latency may have moved
            await self._expire_drains()
            await self._evaluate()
            await self._roll()
            await self._reassign(loop.time())
            if batch:
                await self._reports.handled(len(batch))
            if loop.time() >= next_prune:
                next_prune = loop.time() + self.settings.prune_s
                await self._guarded(self.service.prune_history)

    async def _write(self, batch: list[Received]) -> bool:
        try:
            await asyncio.to_thread(self.service.write_reports, batch)
        except DatabaseUnavailable as error:
            log.warning("health.write_failed", extra=fields(error=str(error)))
            return False
        except Exception:
            # Not the database being away: retrying would fail alike forever, so the batch
            # is dropped (the agents report again within seconds).
            log.exception("health.write_dropped")
        return True

    async def _evaluate(self) -> None:
        change = await self._guarded(self.service.evaluate)
        if change is not None:
            self.changes += 1
            log.info(
                "endpoints.down_set_changed",
                extra=fields(
                    revision=change.revision,
                    down=sorted(change.down),
                    marked=sorted(change.marked),
                    cleared=sorted(change.cleared),
                ),
            )

    async def _roll(self) -> None:
        for moved in await self._guarded(self.rollouts.tick) or []:
            log.info(
                "rollout.transition",
                extra=fields(
                    policy=moved.policy,
                    revision=moved.revision,
                    state=moved.state,
                    share=moved.share,
                    reason=moved.reason,
                ),
            )

    async def _reassign(self, now: float) -> None:
        change = await self._guarded(self.probing.reconcile, now)
        if change is not None:
            self.assignments += 1
            log.info(
                "endpoints.probers_changed",
                extra=fields(revision=change.revision, moved=change.moved[:50]),
            )

    async def _expire_drains(self) -> None:
        revision = await self._guarded(self.drains.expire)
        if revision is not None:
            log.info("endpoints.drains_expired", extra=fields(revision=revision))

    async def _guarded(self, work: Callable[..., T], *args: object) -> T | None:
        try:
            return await asyncio.to_thread(work, *args)
        except DatabaseUnavailable as error:
            log.warning("health.evaluate_failed", extra=fields(error=str(error)))
        except Exception:
            log.exception("health.evaluate_failed")
        return None
