"""The probe tasks: one per endpoint address, jittered, bounded in concurrency, off the DNS path.

Each address has its own task that probes it every ``interval`` (±10 % jitter, and a
random first offset in [0, interval), so the probes of many agents, or of many endpoints
of one agent, do not fall on the same instant). A probe that takes longer than the
interval delays the next one, never stacks: the period is max(interval, timeout). At most
``concurrency`` probes are in flight at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from agent.probes.plan import Target
from agent.probes.probers import (
    IcmpUnavailable,
    Ping,
    ProbeFailed,
    aioping_ping,
    probe_http,
    probe_icmp,
    probe_kind,
    probe_tcp,
)
from dnsmesh.logs import fields
from dnsmesh.policy import ProbeType

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

JITTER = 0.1  # each wait is interval x uniform(0.9, 1.1)

# (address, ok, latency seconds or None, when) -> None
Observer = Callable[[str, bool, float | None, float], None]


class ProbeRunner:
    """Keeps one task per target in ``plan``; ``observe`` gets every result."""

    def __init__(
        self,
        observe: Observer,
        *,
        concurrency: int = 64,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        ping: Ping = aioping_ping,
    ) -> None:
        self.observe = observe
        self.rng = rng or random.Random()
        self.clock = clock
        self.ping = ping
        self.icmp_ok = True  # until the first refused ICMP socket
        self.probes_sent = 0
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, tuple[Target, asyncio.Task[None]]] = {}
        self._client: httpx.AsyncClient | None = None

    @property
    def targets(self) -> dict[str, Target]:
        return {address: target for address, (target, _) in self._tasks.items()}

    def target(self, address: str) -> Target | None:
        """The target being probed at ``address`` (one dict probe: called per result)."""
        entry = self._tasks.get(address)
        return entry[0] if entry is not None else None

    def set_plan(self, plan: Mapping[str, Target]) -> None:
        """Start, restart (spec changed) or stop tasks so that exactly ``plan`` is probed."""
        loop = asyncio.get_running_loop()
        for address, (target, task) in list(self._tasks.items()):
            if plan.get(address) != target:
                task.cancel()
                del self._tasks[address]
        for address, target in plan.items():
            if address not in self._tasks:
                task = loop.create_task(self._run(target), name=f"probe-{address}")
                self._tasks[address] = (target, task)

    async def stop(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # No proxies from the environment: probes go straight to the endpoint; no
            # keep-alive, so each probe measures a fresh connection as a client would.
            import httpx  # here: ~80 ms to import, for agents that probe over HTTP only

            self._client = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._client

    async def _run(self, target: Target) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, target.interval))
        while True:
            began = self.clock()
            async with self._limit:
                ok, latency = await self.probe_once(target)
            self.probes_sent += 1
            self.observe(target.address, ok, latency, self.clock())
            wait = target.interval * self.rng.uniform(1.0 - JITTER, 1.0 + JITTER)
            await asyncio.sleep(max(0.0, began + wait - self.clock()))

    async def probe_once(self, target: Target) -> tuple[bool, float | None]:
        kind = probe_kind(target, self.icmp_ok)
        try:
            if kind is ProbeType.ICMP:
                try:
                    return True, await probe_icmp(target, self.ping)
                except IcmpUnavailable as exc:
                    self._icmp_refused(target, exc)
                    kind = ProbeType.TCP
            if kind is ProbeType.TCP:
                return True, await probe_tcp(target)
            return True, await probe_http(target, self._http())
        except ProbeFailed as exc:
            log.debug("probe.failed", extra=fields(address=target.address, error=str(exc)))
            return False, None

    def _icmp_refused(self, target: Target, exc: IcmpUnavailable) -> None:
        if self.icmp_ok:  # said once, loudly: the agent then probes ICMP targets over TCP
            log.warning(
                "probe.icmp_unavailable",
                extra=fields(
                    error=str(exc),
                    fallback="tcp",
                    port=target.tcp_port,
                    hint="run the agent with CAP_NET_RAW or in net.ipv4.ping_group_range",
                ),
            )
        self.icmp_ok = False
