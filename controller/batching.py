"""A bounded queue that one task drains in batches, and a flush for callers that must wait.

The hub hands work to the database writers (agent events, probe reports) without awaiting
the database; each writer's task drains what queued up in one transaction. This holds the
parts they share: the bound (the oldest items go first while the database is away), the
wait that lets a burst gather, putting a failed batch back in order, and ``flush``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchQueue(Generic[T]):
    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._queued = 0  # items ever queued
        self._done = 0  # items ever handled (or dropped)
        self._progress = asyncio.Condition()

    def put(self, item: T) -> None:
        """Queues ``item`` (no await, no I/O); past the bound the oldest item is dropped."""
        self._items.append(item)
        self._queued += 1
        if len(self._items) > self.max_queued:
            self._items.popleft()
            self._done += 1
        self._ready.set()

    async def gather(self, within_s: float, burst_s: float) -> bool:
        """Waits up to ``within_s`` for an item; if one came, waits ``burst_s`` more so that the
        burst it belongs to (a thousand ACKs of one revision) lands in the same batch."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), max(0.0, within_s))
        if not self._ready.is_set():
            return False
        await asyncio.sleep(burst_s)
        self._ready.clear()
        return True

    def take(self) -> list[T]:
        batch = list(self._items)
        self._items.clear()
        return batch

    def put_back(self, batch: list[T]) -> None:
        """A batch that could not be written goes back in front, in order, to be tried again."""
        self._items.extendleft(reversed(batch))
        self._ready.set()

    async def handled(self, count: int) -> None:
        async with self._progress:
            self._done += count
            self._progress.notify_all()

    async def flush(self, within_s: float = 5.0) -> bool:
        """Waits until everything queued so far is handled; False after ``within_s``."""
        target = self._queued
        self._ready.set()
        async with self._progress:
            try:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._done >= target), within_s
                )
            except TimeoutError:
                return False
        return True
