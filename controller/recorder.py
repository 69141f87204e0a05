"""Writes agent events (hello, ACK, NACK, gone, seen) to the agents table in batches.

The hub must never wait on the database per agent: it hands events to ``record`` (no await,
no I/O) and one task writes whatever has queued up, in order, in one transaction, every
``batch_delay`` at most. The same task refreshes ``last_seen`` of this replica's connected
agents every heartbeat (see controller.services.agent_state).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from controller.agent_events import Event
from controller.batching import BatchQueue
from controller.errors import DatabaseUnavailable
from controller.services.agent_state import AgentStateService
from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.controller.recorder")

# Events kept while the database is away; past this the oldest are dropped (an agent's row
# is rewritten on its next hello or ACK anyway).
MAX_QUEUED = 200_000


class AgentRecorder:
    def __init__(
        self,
        agents: AgentStateService,
        *,
        replica: str,
        heartbeat_s: float,
        batch_delay_s: float = 0.02,
        retry_s: float = 1.0,
    ) -> None:
        self.agents = agents
        self.replica = replica
        self.heartbeat_s = heartbeat_s
        self.batch_delay_s = batch_delay_s
        self.retry_s = retry_s
        self._events: BatchQueue[Event] = BatchQueue(MAX_QUEUED)

    def record(self, event: Event) -> None:
        """Queues ``event``; written within ``batch_delay`` (later while the database is down)."""
        self._events.put(event)

    async def flush(self, within_s: float = 5.0) -> bool:
        """Waits until everything queued so far is written; False after ``within_s``."""
        return await self._events.flush(within_s)

    async def run(
        self,
        *,
        has_agents: Callable[[], bool],
        written: Callable[[list[Event]], None] | None = None,
    ) -> None:
        """Writes batches until cancelled; heartbeats only while ``has_agents()``;
        ``written(batch)`` after each batch is stored."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat_s
        while True:
            woke = await self._events.gather(next_beat - loop.time(), self.batch_delay_s)
            if loop.time() >= next_beat:
                next_beat = loop.time() + self.heartbeat_s
                if has_agents():
                    await self._guarded(self.agents.heartbeat, self.replica)
            batch = self._events.take() if woke else []
            if not batch:
                continue
            if not await self._guarded(self.agents.apply, batch):
                self._events.put_back(batch)  # keep the order; try again
                await asyncio.sleep(self.retry_s)
                continue
            if written is not None:
                written(batch)
            await self._events.handled(len(batch))

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
