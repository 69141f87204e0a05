"""The served-share monitor: writes agents' answer reports in batches, keeps the drift
gauges current and logs when a policy's served share starts or stops drifting.

Like controller.quorum_monitor, the hub hands reports over without awaiting the database
(``record``). Only counts that name a policy this replica serves, one of its slices (or
``_default``) and one of its endpoints are kept, so what an agent sends cannot grow the
table or the gauges beyond the policy set. Each evaluation also runs the scaling engine of
demand-driven slices (controller.services.scaling) on the counts written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

from prometheus_client import Gauge

from controller.batching import BatchQueue
from controller.db.session import Database
from controller.errors import DatabaseUnavailable
from controller.services.scaling import ScaleService
from controller.services.served_share import (
    DEFAULT_WINDOW_S,
    ReceivedAnswers,
    ServedShareService,
    ShareSettings,
)
from dnsmesh import protocol
from dnsmesh.logs import fields
from dnsmesh.protocol import Document
from dnsmesh.share import DEFAULT_SLICE

log = logging.getLogger("dnsmesh.controller.share")

T = TypeVar("T")
MAX_QUEUED = 50_000

# policy -> (its slice ids with _default, its endpoint addresses)
Declared = Mapping[str, tuple[frozenset[str], frozenset[str]]]
KnownPolicies = Callable[[], tuple[int, list[Document]] | None]


def declared_keys(documents: list[Document]) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """What answer counts may name, from the stored policy documents (valid JSON already)."""
    out: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    for document in documents:
        spec = document.get("spec", {})
        slices = frozenset([DEFAULT_SLICE, *(s["id"] for s in spec.get("slices", []))])
        endpoints = frozenset(str(e["address"]) for e in spec.get("endpoints", []))
        out[str(document["metadata"]["name"])] = (slices, endpoints)
    return out


class ShareMonitor:
    def __init__(
        self,
        db: Database,
        settings: ShareSettings,
        known: KnownPolicies,
        drift_gauge: Gauge,
    ) -> None:
        self.settings = settings
        self.service = ServedShareService(db, settings)
        self.scaling = ScaleService(db, settings.scale, settings.bucket_s)
        self.scale_changes = 0  # slice-scale revisions this replica committed
        self.db = db
        self._known = known
        self._declared: tuple[int, Declared] | None = None
        self._gauge = drift_gauge
        self._reports: BatchQueue[ReceivedAnswers] = BatchQueue(MAX_QUEUED)
        self.flagged: dict[str, float] = {}  # policy -> drift, while flagged
        self._gauged: set[str] = set()  # the policies the drift gauge has a series of

    def record(self, agent_id: str, report: protocol.AnswerReport) -> None:
        """Queues the counts of one report that name what is served, stamped now."""
        declared = self._declared_now()
        if declared is None:
            return  # the policy set is being read again: a few seconds of counts at most
        kept = [
            count
            for count in report.counts
            if (known := declared.get(count.policy)) is not None
            and count.slice in known[0]
            and count.endpoint in known[1]
        ]
        if kept:
            self._reports.put(ReceivedAnswers(agent_id, self.db.clock(), kept))

    def _declared_now(self) -> Declared | None:
        known = self._known()
        if known is None:
            return None
        revision, documents = known
        cached = self._declared
        if cached is None or cached[0] != revision:
            cached = self._declared = (revision, declared_keys(documents))
        return cached[1]

    async def flush(self, within_s: float = 5.0) -> bool:
        return await self._reports.flush(within_s)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_prune = next_evaluate = loop.time()
        while True:
            wait = max(0.0, min(next_evaluate, next_prune) - loop.time())
            await self._reports.gather(wait, self.settings.batch_delay_s)
            batch = self._reports.take()
            if batch:
                if not await self._write(batch):
                    self._reports.put_back(batch)  # the database is away: again later
                    await asyncio.sleep(1.0)
                    continue
                await self._reports.handled(len(batch))
            if loop.time() >= next_evaluate:
                next_evaluate = loop.time() + self.settings.evaluate_s
                await self.evaluate()
                await self.scale()
            if loop.time() >= next_prune:
                next_prune = loop.time() + self.settings.prune_s
                await self._guarded(self.service.prune)

    async def _write(self, batch: list[ReceivedAnswers]) -> bool:
        try:
            await asyncio.to_thread(self.service.write, batch)
        except DatabaseUnavailable as error:
            log.warning("share.write_failed", extra=fields(error=str(error)))
            return False
        except Exception:
            # Not the database being away: retrying would fail alike forever.
            log.exception("share.write_dropped")
        return True

    async def evaluate(self) -> None:
        """The drift gauge of every policy over the default window, and a log line when a
        policy becomes flagged or stops being flagged."""
        window = min(DEFAULT_WINDOW_S, self.settings.retention_s)
        shares = await self._guarded(self.service.shares, window)
        if shares is None:
            return
        for name in list(self.flagged):
            if name not in shares:
                del self.flagged[name]
        for name, result in shares.items():
            share = result.policy
            self._gauge.labels(name).set(share.drift)
            if share.flagged and name not in self.flagged:
                log.warning(
                    "share.drift_flagged",
                    extra=fields(
                        policy=name,
                        drift=round(share.drift, 4),
                        answers=share.answers,
                        window_s=window,
                        threshold=self.settings.rule.drift_threshold,
                    ),
                )
            elif not share.flagged and name in self.flagged:
                log.info("share.drift_cleared", extra=fields(policy=name, drift=share.drift))
            if share.flagged:
                self.flagged[name] = share.drift
            else:
                self.flagged.pop(name, None)
        for name in self._gauged - shares.keys():  # a deleted policy's series ends
            self._gauge.remove(name)
        self._gauged = set(shares)

    async def scale(self) -> None:
        """One round of the scaling engine (controller.services.scaling), after the counts
        this round wrote, so a burst scales up within about ``evaluate_s``."""
        for change in await self._guarded(self.scaling.tick) or []:
            self.scale_changes += 1
            log.info(
                "scale.changed",
                extra=fields(
                    policy=change.policy,
                    slice=change.slice,
                    revision=change.revision,
                    count=change.count,
                    reason=change.reason,
                ),
            )

    async def _guarded(self, work: Callable[..., T], *args: object) -> T | None:
        try:
            return await asyncio.to_thread(work, *args)
        except DatabaseUnavailable as error:
            log.warning("share.database_unavailable", extra=fields(error=str(error)))
        except Exception:
            log.exception("share.failed")
        return None
