"""Writes agent events (hello, ACK, NACK, gone, seen) to the agents table in batches.

The hub must never wait on the database per agent: it hands events to ``record`` (no await,
no I/O) and one task writes whatever has queued up, in order, in one transaction, every
``batch_delay`` at most. The same task refreshes ``last_seen`` of this replica's connected
agents every heartbeat (see controller.agents).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from controller.agents import AgentRegistry, Event
from controller.errors import DatabaseUnavailable
from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.controller.recorder")

# Events kept while the database is away; past this the oldest are dropped (an agent's row
# is rewritten on its next hello or ACK anyway).
MAX_QUEUED = 200_000


class AgentRecorder:
    def __init__(
        self,
        registry: AgentRegistry,
        *,
        replica: str,
        heartbeat_s: float,
        has_agents: Callable[[], bool],
        batch_delay_s: float = 0.02,
        retry_s: float = 1.0,
    ) -> None:
        self.registry = registry
        self.replica = replica
        self.heartbeat_s = heartbeat_s
        self.has_agents = has_agents
        self.batch_delay_s = batch_delay_s
        self.retry_s = retry_s
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._queued = 0  # events ever queued
        self._written = 0  # events ever written (or dropped)
        self._progress = asyncio.Condition()

    def record(self, event: Event) -> None:
        """Queues ``event``; written within ``batch_delay`` (later while the database is down)."""
        self._queue.append(event)
        self._queued += 1
        if len(self._queue) > MAX_QUEUED:
            self._queue.popleft()
            self._written += 1
        self._ready.set()

    async def flush(self, within_s: float = 5.0) -> bool:
        """Waits until everything queued so far is written; False after ``within_s``."""
        target = self._queued
        self._ready.set()
        async with self._progress:
            try:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._written >= target), within_s
                )
            except TimeoutError:
                return False
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), max(0.0, next_beat - loop.time()))
            if loop.time() >= next_beat:
                next_beat = loop.time() + self.heartbeat_s
                if self.has_agents():
                    await self._guarded(self.registry.heartbeat, self.replica)
            if not self._ready.is_set():
                continue
            # Let the burst that woke us (a thousand ACKs of one revision) gather first.
            await asyncio.sleep(self.batch_delay_s)
            self._ready.clear()
            batch = list(self._queue)
            self._queue.clear()
            if not batch:
                continue
            if not await self._guarded(self.registry.apply, batch):
                self._queue.extendleft(reversed(batch))  # keep the order; try again
                self._ready.set()
                await asyncio.sleep(self.retry_s)
                continue
            async with self._progress:
                self._written += len(batch)
                self._progress.notify_all()

    async def _guarded(self, work: Callable[..., None], *args: object) -> bool:
        try:
            await asyncio.to_thread(work, *args)
        except DatabaseUnavailable as error:
            log.warning("agents.write_failed", extra=fields(error=str(error)))
            return False
        except Exception:
            # Not the database being away: retrying would fail the same way forever, so the
            # batch is dropped (each agent's row is rewritten on its next hello or ACK).
            log.exception("agents.write_dropped")
        return True
