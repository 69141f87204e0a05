"""Restart a child that died, with a backoff, for ``dnsmesh up``.

Each child is watched on its own: a controller that dies is started again while the agent
goes on answering from its state (its policies, forwarding) and reconnects by itself; an
agent that dies is started again against the running controller. The wait before a
restart doubles from ``BACKOFF_BASE`` up to ``BACKOFF_CAP`` while the child keeps dying
young (within ``STABLE_AFTER`` of its start), and starts over once it has run that long.
A child that dies young ``GIVE_UP_AFTER`` times in a row is broken (a port taken, a bad
flag), not unlucky: the supervisor gives up and ``up`` exits 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.up")

BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
STABLE_AFTER = 30.0
GIVE_UP_AFTER = 5


class Process(Protocol):
    name: str

    def alive(self) -> bool: ...

    def returncode(self) -> int | None: ...

    def stop(self) -> int: ...


class GaveUp(Exception):
    """A child kept dying right after its start."""


class Supervised:
    """One child and its restarts: ``check()`` now and then; ``child`` is the current one."""

    def __init__(
        self,
        start: Callable[[], Process],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._start = start
        self._clock = clock
        self.child = start()
        self.started_at = clock()
        self.restarts = 0
        self.young_deaths = 0  # in a row
        self.restart_at: float | None = None

    def check(self) -> None:
        """Notices a death and schedules the restart; restarts once the wait is over."""
        now = self._clock()
        if self.restart_at is None:
            if self.child.alive():
                return
            lived = now - self.started_at
            self.young_deaths = self.young_deaths + 1 if lived < STABLE_AFTER else 1
            if self.young_deaths >= GIVE_UP_AFTER:
                raise GaveUp(
                    f"the {self.child.name} exited {self.young_deaths} times in a row within "
                    f"{STABLE_AFTER:.0f}s of its start (last status {self.child.returncode()})"
                )
            wait = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self.young_deaths - 1))
            self.restart_at = now + wait
            log.error(
                "up.child_exited",
                extra=fields(
                    child=self.child.name,
                    status=self.child.returncode(),
                    lived_s=round(lived, 1),
                    restart_in_s=wait,
                ),
            )
            return
        if now < self.restart_at:
            return
        self.restart_at = None
        self.child = self._start()
        self.started_at = now
        self.restarts += 1
        log.warning(
            "up.child_restarted", extra=fields(child=self.child.name, restarts=self.restarts)
        )
