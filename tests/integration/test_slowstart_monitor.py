"""Slow start in the health monitor with real TCP probes: an endpoint back from its ejection
ramps up in the served snapshot, at the ramp tick's cadence, and then has its whole weight."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import pytest

from agent.probes.monitor import HealthMonitor
from agent.served import ServedSnapshot
from dnsmesh.explain import odds
from dnsmesh.policy import parse_policy
from dnsmesh.slowstart import FLOOR
from dnsmesh.snapshot import compile_snapshot
from tests.support.policies import policy_doc

pytestmark = pytest.mark.timeout(60)

UP, BACK = "127.0.0.1", "127.0.0.2"
WINDOW = 2.0
TICK = 0.2


async def until(predicate: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def _accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


def served_share(served: ServedSnapshot, address: str) -> float:
    """The share of answers the served snapshot gives ``address`` (its own pickers)."""
    (compiled,) = served.snapshot.policies()
    picker = compiled.view_of(UP).v4
    assert picker is not None
    return odds(picker, UP).shares.get(address, 0.0)


@pytest.mark.timing
def test_an_endpoint_back_from_ejection_ramps_then_serves_its_whole_weight() -> None:
    served = ServedSnapshot()

    async def main() -> tuple[list[tuple[float, float]], int, float]:
        up = await asyncio.start_server(_accept, UP, 0)
        port = up.sockets[0].getsockname()[1]
        probe = {"type": "tcp", "port": port, "interval": 0.05, "timeout": 0.2}
        health = {"probe": probe, "fall": 2, "rise": 1, "slow_start": WINDOW}
        health["outlier"] = {"base_ejection": "300ms"}
        policy = parse_policy(
            policy_doc("web", [{"address": UP}, {"address": BACK}], health=health)
        )
        monitor = HealthMonitor(served, rng=random.Random(1), min_gap=0.05, ramp_tick=TICK)
        await monitor.start()
        back: asyncio.Server | None = None
        try:
            base = compile_snapshot([policy], 1)
            served.set_base(base, monitor.weigh(base))
            # Nothing listens on BACK's port: ejected; then it listens, and comes back.
            await until(lambda: bool(monitor.decision.ejected), 10)
            assert not monitor.ramps.active
            back = await asyncio.start_server(_accept, BACK, port)
            await until(lambda: monitor.ramps.active, 10)
            returned = time.monotonic()
            before = monitor.recompiles
            seen: list[tuple[float, float]] = []  # (fraction, share served)
            while monitor.ramps.active:
                fraction = monitor.ramp_fractions.get("web", {}).get(BACK, 1.0)
                seen.append((fraction, served_share(served, BACK)))
                assert time.monotonic() - returned < WINDOW + 5, "the ramp never ended"
                await asyncio.sleep(0.05)
            ticks = monitor.recompiles - before
            await until(lambda: "web" not in monitor.weights, 2)
            return seen, ticks, served_share(served, BACK)
        finally:
            await monitor.stop()
            for server in (up, back):
                if server is not None:
                    server.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(server.wait_closed(), 2)

    seen, ticks, final = asyncio.run(main())
    fractions = [f for f, _ in seen]
    assert fractions[0] == pytest.approx(FLOOR, abs=0.15)
    assert fractions == sorted(fractions), "the ramp only goes up"
    assert fractions[-1] > 0.5
    # What the snapshot serves is w*f / (w*f + w): the fraction the monitor tells.
    for fraction, share in seen:
        assert share == pytest.approx(fraction / (fraction + 1), abs=0.01)
    # Re-weighed at the tick's cadence while ramping (min_gap after each), not per probe:
    # the probes finish every 50 ms, twice as often as the monitor may refresh.
    assert 3 <= ticks <= WINDOW / TICK + 3
    assert final == 0.5  # its whole share: the ramp is over
