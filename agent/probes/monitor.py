"""Health into weights: per-address health, and the effective weights when they matter.

The monitor produces weights; the holder of what the agent answers (agent/served.py) turns
them into the served snapshot. ``weigh(base)`` decides the weights for a freshly compiled
policy set (the server hands both to the holder at once) and plans its probes. Probe
results only mark the weights dirty; a refresh task decides them again at most
``1 / min_gap`` times a second (dnsmesh.health: ejections, the mesh-wide down set, latency)
and hands them to the holder only when some effective weight actually changed.

Slow start (dnsmesh.slowstart) is applied on top of what health decided: while an endpoint
ramps, the refresh task also runs at every multiple of ``ramp_tick`` seconds, and the ramps
are read at those instants only, so the ramp advances in steps of a second whatever else
makes health decide again, and never per query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from agent.probes.plan import build_plan
from agent.probes.probers import Ping, aioping_ping
from agent.probes.runner import ProbeRunner
from agent.probes.scope import EVERYTHING, ProbeScope
from agent.served import ServedSnapshot
from dnsmesh.health import Decision, EndpointHealth, decide_weights
from dnsmesh.logs import fields
from dnsmesh.protocol import EndpointReport, Report
from dnsmesh.reweigh import Effective, Weights
from dnsmesh.slowstart import NOT_STARTED, Ramps, ramped, track
from dnsmesh.snapshot import Snapshot

log = logging.getLogger(__name__)

RAMP_TICK = 1.0  # seconds between re-weighings while an endpoint ramps (slow start)
_V = TypeVar("_V")


class HealthMonitor:
    """Probes (unless ``probing`` is off), holds health, and decides the served weights."""

    def __init__(
        self,
        served: ServedSnapshot,
        *,
        probing: bool = True,
        min_gap: float = 0.25,
        ramp_tick: float = RAMP_TICK,
        concurrency: int = 64,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        ping: Ping = aioping_ping,
        scope: ProbeScope = EVERYTHING,
    ) -> None:
        self.served = served
        self.probing = probing
        self.scope = scope  # coordinated probing: which addresses are this agent's
        self.min_gap = min_gap
        self.ramp_tick = ramp_tick
        self.clock = clock
        self.health: dict[str, EndpointHealth] = {}
        self.decision = Decision({})
        self.ramps: Ramps = NOT_STARTED  # slow start: the ramps in progress
        # What is served: the decision's weights with the ramps applied, and the fractions
        # of weight the ramping endpoints had then (policy -> address -> fraction).
        self.weights: Weights = {}
        self.ramp_fractions: dict[str, dict[str, float]] = {}
        # What health decided when health.reweighted was last logged.
        self._logged: tuple[Weights, frozenset[str]] = ({}, frozenset())
        self.fail_open_total = 0  # policies that entered fail-open (all endpoints unhealthy)
        self.ejections_total = 0  # endpoint addresses ejected (each ejection once)
        self.all_down_total = 0  # policies that entered any on_all_down answer
        self.recompiles = 0
        self._samples: dict[str, int] = {}  # probes per address since the last report
        self._runner = ProbeRunner(
            self._observe, concurrency=concurrency, rng=rng, clock=clock, ping=ping
        )
        self._dirty = asyncio.Event()
        self._decided: tuple[int, object, object, object] | None = None  # see _inputs
        self._task: asyncio.Task[None] | None = None

    @property
    def runner(self) -> ProbeRunner:
        return self._runner

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())
        self._replan(self.served.base)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._runner.stop()

    # -- inputs ---------------------------------------------------------------------------

    def weigh(self, base: Snapshot) -> Effective:
        """The weights for a new compiled policy set (or a new mesh down set or drains),
        decided now from what is known of health; its probes are planned too.

        A base compiled from the one being served, with the same down set, drains and
        assignment, is decided only for the policies it changed: the others' decision
        stands, and a change of one policy among 100,000 costs one policy's work here.
        """
        served = self.served.base
        changed = base.changed_since(served) if self._decided == self._inputs(served) else None
        if self._decide(base, changed):
            self._reweighted(base)
        if self._task is not None and (changed is None or _probed(changed, served, base)):
            self._replan(base)
        return self.effective

    def _inputs(self, base: Snapshot) -> tuple[int, object, object, object]:
        """What a decision was made from besides health and the policies (compared as
        values; a revision that does not change them keeps the same objects, which compare
        at once)."""
        scoped = self.scope is not EVERYTHING
        return (
            base.serial,
            self.served.down,
            self.served.drains,
            self.scope.assignment() if scoped else None,
        )

    def _replan(self, base: Snapshot) -> None:
        policies = [c.policy for c in base.policies()]
        plan = build_plan(policies) if self.probing else {}
        plan = {a: t for a, t in plan.items() if self.scope.probes(a)}
        self._runner.set_plan(plan)
        for address in list(self.health):
            if address not in plan:  # no policy probes it any more: forget what we knew
                del self.health[address]
                self._samples.pop(address, None)

    def _observe(self, address: str, ok: bool, latency: float | None, now: float) -> None:
        target = self._runner.target(address)
        if target is None:
            return  # a result of a probe whose target was just removed
        before = self.health.get(address, EndpointHealth())
        after = before.observe(ok, latency, now, target.rule)
        self.health[address] = after
        self._samples[address] = self._samples.get(address, 0) + 1
        if after.ejected != before.ejected:
            self.ejections_total += after.ejected
            log.warning(
                "health.ejected" if after.ejected else "health.returned",
                extra=fields(
                    address=address,
                    consecutive_failures=before.consecutive_failures,
                    times_ejected=after.times_ejected,
                ),
            )
            # An ejection or a return is swapped in at once, not at the next refresh: it is
            # what the detection time is measured by, and it is rare (an address changes at
            # most twice per base_ejection), so it cannot drive recompiles hot.
            self._refresh()
            return
        self._dirty.set()

    # -- output ---------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            if self.ramps.active:
                # Until the ramps' next step (dnsmesh.slowstart.ramped reads them at
                # multiples of ramp_tick), or sooner for a probe result.
                step = self.ramp_tick - self.clock() % self.ramp_tick
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), step)
            else:
                await self._dirty.wait()
            self._dirty.clear()
            self._refresh()
            # Bounds recompiles to 1/min_gap a second however many probes finish meanwhile.
            await asyncio.sleep(self.min_gap)

    def _decide(self, base: Snapshot, only: frozenset[str] | None = None) -> bool:
        """Decide the weights for ``base`` (for its policies named in ``only``, keeping the
        last decision for the rest); whether any effective weight changed."""
        if only is None:
            policies = [c.policy for c in base.policies()]
        else:
            policies = [base.by_name[n].policy for n in only if n in base.by_name]
        health = self.health
        if self.scope is not EVERYTHING:
            # What this agent does not probe, its zone's probers measured (latency only).
            addresses = {str(e.address) for p in policies for e in p.spec.endpoints}
            health = {**self.scope.borrowed(addresses - health.keys()), **health}
        decision = decide_weights(
            policies, health, self.served.down, self.decision.levels, self.served.drains
        )
        if only is not None:
            decision = _merged(self.decision, decision, only)
        self._decided = self._inputs(base)
        now = self.clock()
        previous = self.ramps
        self.ramps = track(previous, policies, decision.weights, decision.servfail, now, only)
        # Only the policies with a ramp in progress are ramped: those alone are looked up.
        by_name = base.by_name
        ramping = [by_name[name].policy for name in self.ramps.started if name in by_name]
        weights, self.ramp_fractions = ramped(
            self.ramps, ramping, decision.weights, now, self.ramp_tick
        )
        changed = weights != self.weights or decision.servfail != self.decision.servfail
        self.weights = weights
        before = self.decision.all_down
        self.decision = decision
        begun = {
            name: sorted(set(ramps) - set(previous.started.get(name, {})))
            for name, ramps in self.ramps.started.items()
        }
        begun = {name: addresses for name, addresses in begun.items() if addresses}
        if begun:
            self._dirty.set()  # wakes the refresh task, which then runs every ramp_tick
            log.info("health.slow_start", extra=fields(ramping=begun))
        for name, mode in sorted(decision.all_down.items()):
            if before.get(name) == mode:
                continue
            self.all_down_total += 1
            if mode == "fail-open":
                self.fail_open_total += 1
                log.warning("health.fail_open", extra=fields(policy=name))
            else:
                log.warning("health.all_down", extra=fields(policy=name, answer=mode))
        return changed

    @property
    def effective(self) -> Effective:
        return Effective(self.weights, self.decision.servfail)

    def _refresh(self) -> None:
        """Decide again for the base being served; hand over the weights if they changed."""
        base = self.served.base
        if self._decide(base):
            self._reweighted(base)
            self.served.set_weights(self.effective)

    def _reweighted(self, base: Snapshot) -> None:
        self.recompiles += 1
        decision = self.decision
        if (decision.weights, decision.servfail) == self._logged:
            return  # only a ramp moved (every ramp_tick): health.slow_start told it began
        self._logged = (decision.weights, decision.servfail)
        log.info(
            "health.reweighted",
            extra=fields(
                revision=base.revision,
                policies=len(decision.weights),
                ejected={k: list(v) for k, v in decision.ejected.items()},
            ),
        )

    def report(self) -> Report:
        """What to tell the controller: every probed address, and the probes since last time."""
        endpoints = []
        for address, h in sorted(self.health.items()):
            endpoints.append(
                EndpointReport(
                    address=address,
                    latency_ms=None if h.latency is None else round(h.latency * 1000, 3),
                    loss=round(min(1.0, max(0.0, h.loss)), 4),
                    state=h.state,
                    consecutive_failures=h.consecutive_failures,
                    samples=self._samples.get(address, 0),
                )
            )
        self._samples = {}
        return Report(endpoints=endpoints)


def _probed(names: frozenset[str], before: Snapshot, after: Snapshot) -> bool:
    """Whether a policy of ``names`` probes, before or after: only then can the plan move."""
    for name in names:
        for snapshot in (before, after):
            compiled = snapshot.by_name.get(name)
            if compiled is not None:
                health = compiled.policy.spec.health
                if health is not None and health.probe is not None:
                    return True
    return False


def _merged(last: Decision, some: Decision, names: frozenset[str]) -> Decision:
    """``last`` with the policies in ``names`` decided anew as ``some``."""

    def kept(table: Mapping[str, _V]) -> dict[str, _V]:
        return {name: value for name, value in table.items() if name not in names}

    levels = {key: level for key, level in last.levels.items() if key[0] not in names}
    return Decision(
        kept(last.weights) | dict(some.weights),
        levels | dict(some.levels),
        kept(last.all_down) | dict(some.all_down),
        kept(last.ejected) | dict(some.ejected),
    )
