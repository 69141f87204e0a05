"""finish_by: parts stop side by side under one deadline, and none can hold the stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from agent.shutdown import finish_by


async def quick(done: list[str]) -> None:
    await asyncio.sleep(0.01)
    done.append("quick")


async def slow(done: list[str]) -> None:
    try:
        await asyncio.sleep(30)
    finally:
        done.append("slow unwound")


async def stubborn() -> None:
    """A part that swallows its first cancellation (as a Python 3.11 wait_for race can)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(30)
    await asyncio.sleep(30)  # a second cancellation (asyncio.run's, at the end) ends it


def test_parts_run_side_by_side_and_the_late_ones_are_cut_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[list[str], list[str], float]:
        done: list[str] = []
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        stuck = await finish_by(
            loop.time() + 0.3, {"a": quick(done), "b": slow(done), "c": slow(done)}
        )
        return stuck, done, time.monotonic() - began

    with caplog.at_level(logging.WARNING):
        stuck, done, took = asyncio.run(main())
    assert stuck == [] and done == ["quick", "slow unwound", "slow unwound"]
    assert 0.3 <= took < 1.0  # one deadline for both slow parts, not 0.3 s each
    cut = [
        r.__dict__["dnsmesh_fields"]
        for r in caplog.records
        if r.getMessage() == "agent.stop_cut_short"
    ]
    assert cut == [{"cancelled": ["b", "c"], "abandoned": []}]


def test_a_part_that_swallows_its_cancellation_is_abandoned_after_the_grace() -> None:
    async def main() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        stuck = await finish_by(loop.time() + 0.1, {"stubborn": stubborn()}, grace=0.2)
        return stuck, time.monotonic() - began

    stuck, took = asyncio.run(main())
    assert stuck == ["stubborn"]
    assert took < 1.0  # 0.1 s deadline + 0.2 s grace, not forever
