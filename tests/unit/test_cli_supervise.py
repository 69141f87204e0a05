"""cli.supervise: the restart backoff of ``dnsmesh up``'s children, on a clock we move."""

from __future__ import annotations

import pytest

from cli.supervise import BACKOFF_BASE, BACKOFF_CAP, GIVE_UP_AFTER, STABLE_AFTER, GaveUp, Supervised


class Exited:
    """A child whose life we decide: ``die()`` ends it with a status."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status: int | None = None

    def alive(self) -> bool:
        return self.status is None

    def returncode(self) -> int | None:
        return self.status

    def stop(self) -> int:
        self.status = 0
        return 0

    def die(self, status: int = -9) -> None:
        self.status = status


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_dead_child_is_restarted_after_a_doubling_wait_that_resets_once_stable() -> None:
    clock, started = Clock(), []

    def start() -> Exited:
        started.append(Exited("controller"))
        return started[-1]

    supervised = Supervised(start, clock=clock)
    waits = []
    for _ in range(3):
        supervised.child.die()
        supervised.check()  # noticed: the restart is scheduled
        assert supervised.restart_at is not None
        waits.append(supervised.restart_at - clock.now)
        clock.now = supervised.restart_at - 0.01
        supervised.check()
        assert len(started) == len(waits)  # not yet
        clock.now += 0.01
        supervised.check()
        assert len(started) == len(waits) + 1 and supervised.child.alive()
    assert waits == [BACKOFF_BASE, BACKOFF_BASE * 2, BACKOFF_BASE * 4]

    clock.now += STABLE_AFTER  # it ran long enough: the next death waits the least again
    supervised.child.die()
    supervised.check()
    assert supervised.restart_at == clock.now + BACKOFF_BASE
    assert supervised.restarts == 3


def test_a_child_that_dies_at_every_start_is_given_up_on() -> None:
    clock = Clock()
    supervised = Supervised(lambda: Exited("agent"), clock=clock)
    with pytest.raises(GaveUp, match="the agent exited 5 times in a row"):
        for _ in range(GIVE_UP_AFTER):
            supervised.child.die(2)
            supervised.check()
            assert supervised.restart_at is not None
            assert supervised.restart_at - clock.now <= BACKOFF_CAP
            clock.now = supervised.restart_at
            supervised.check()
