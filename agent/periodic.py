"""A step the agent runs on its event loop every few seconds until stopped: the watchers of
its policy files (agent/reload.py) and of its cookie secret (agent/cookie_secret.py)."""

from __future__ import annotations

import asyncio
import contextlib


class Periodic:
    """``tick`` every ``interval`` seconds from ``start`` to ``stop``; a subclass says what
    a tick does (it must not raise: an exception would end the task for good)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()

    async def tick(self) -> None:
        raise NotImplementedError
