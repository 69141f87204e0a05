"""Stopping under one deadline: every part of the agent gets the same drain budget, at once.

A stop used to run its parts one after another, each with its own bound (the controller
connection's close handshake, the forwards' drain, each listener's close), so the bounds
added up: under load with a hung controller an agent took its drain timeout plus 3 s and
more. Here the parts run side by side until one deadline; whatever is still running is then
cancelled, given a short grace, and abandoned (logged) if it does not finish even so, so a
part that swallows its cancellation cannot hold the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from dnsmesh.logs import fields

log = logging.getLogger(__name__)

# How long a part may take to unwind once cancelled (its finally blocks, a last fsync;
# cancelling 4096 forwards took 0.25 s on a loaded 2-core machine).
CANCEL_GRACE = 0.5


async def finish_by(
    deadline: float,
    parts: Mapping[str, Coroutine[Any, Any, Any]],
    grace: float = CANCEL_GRACE,
) -> list[str]:
    """Run ``parts`` side by side until ``deadline`` (loop time); cancel what is left, wait
    ``grace`` more, and return the names of those that did not finish (logged)."""
    loop = asyncio.get_running_loop()
    tasks = {loop.create_task(coro, name=f"stop-{name}"): name for name, coro in parts.items()}
    if not tasks:
        return []
    await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
    late = [task for task in tasks if not task.done()]
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=grace)
    stuck = []
    for task, name in tasks.items():
        if not task.done():
            stuck.append(name)
        elif not task.cancelled() and task.exception() is not None:
            log.error("agent.stop_failed", exc_info=task.exception(), extra=fields(part=name))
    if late:
        log.warning(
            "agent.stop_cut_short",
            extra=fields(cancelled=sorted(tasks[t] for t in late), abandoned=sorted(stuck)),
        )
    return stuck
