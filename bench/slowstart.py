"""What slow start costs the agent's health refresh, beside the refresh without it.

    .venv/bin/python bench/slowstart.py [--rounds 5]

In process, pure (no sockets). For policy sets of a few sizes, one health refresh of the
monitor (agent/probes/monitor.py ``_decide``) is timed four ways in the same run:

* ``decide only``: ``health.decide_weights`` alone, the refresh before slow start existed;
* ``+ track, no window``: with ``slowstart.track`` and ``ramped``, no policy has a window
  (the common case: what every refresh now pays);
* ``+ track, windows``: every policy has ``slow_start`` and nothing ramps;
* ``ramp tick``: one endpoint of one policy ramping: decide, track, ramp and recompile
  that policy (``reweigh``), what the monitor does once a second while it ramps.

In ms per refresh: the best of ``--rounds`` alternating rounds (each round times the four
one after another, so a burst of someone else's load does not land on one only), each
round as many calls as take about 0.2 s.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from dnsmesh.health import decide_weights
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.reweigh import Compiled, reweigh
from dnsmesh.slowstart import NOT_STARTED, ramped, track
from dnsmesh.snapshot import compile_snapshot

SIZES = ((10, 10), (100, 10), (10, 1000))  # (policies, endpoints each)


def policies(count: int, endpoints: int, window: float | None) -> list[Policy]:
    out = []
    for p in range(count):
        spec: dict[str, Any] = {
            "domain": f"p{p}.bench.test",
            "endpoints": [
                {"address": f"10.{p % 250}.{e // 250}.{e % 250 + 1}", "weight": 1 + e % 5}
                for e in range(endpoints)
            ],
        }
        if window is not None:
            spec["health"] = {"slow_start": window}
        document = {"apiVersion": "dnsmesh/v1", "kind": "Policy", "metadata": {"name": f"p{p}"}}
        out.append(parse_policy({**document, "spec": spec}))
    return out


def refresh(policy_set: list[Policy], with_ramps: bool) -> Callable[[], object]:
    ramps = track(NOT_STARTED, policy_set, {}, frozenset(), 0.0)

    def once() -> object:
        decision = decide_weights(policy_set, {})
        if not with_ramps:
            return decision
        after = track(ramps, policy_set, decision.weights, decision.servfail, 1.0)
        return ramped(after, policy_set, decision.weights, 1.0, 1.0)

    return once


def ramp_tick(count: int, endpoints: int) -> Callable[[], object]:
    before = policies(count, endpoints, 60.0)
    added = policies(count, endpoints + 1, 60.0)
    # The last policy gains an endpoint; the others stay as they were.
    after = [*before[:-1], added[-1]]
    ramps = track(track(NOT_STARTED, before, {}, frozenset(), 0.0), after, {}, frozenset(), 0.0)
    base = compile_snapshot(after, 1)
    cache: Compiled = {}
    clock = [0.0]

    def once() -> object:
        clock[0] += 1.0  # a new second: the ramp moves, so the policy is compiled again
        now = clock[0] % 59
        decision = decide_weights(after, {})
        moved = track(ramps, after, decision.weights, decision.servfail, now)
        weights, _ = ramped(moved, after, decision.weights, now, 1.0)
        return reweigh(base, weights, cache)

    return once


def best_ms(calls: list[Callable[[], object]], rounds: int) -> list[float]:
    timers = [timeit.Timer(call) for call in calls]
    numbers = [timer.autorange()[0] for timer in timers]
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, (timer, number) in enumerate(zip(timers, numbers, strict=True)):
            best[i] = min(best[i], timer.timeit(number) / number * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for count, endpoints in SIZES:
        plain = policies(count, endpoints, None)
        windowed = policies(count, endpoints, 60.0)
        calls = [
            refresh(plain, False),
            refresh(plain, True),
            refresh(windowed, True),
            ramp_tick(count, endpoints),
        ]
        rows.append((f"{count} x {endpoints}", *best_ms(calls, args.rounds)))
    print(
        "| policies x endpoints | decide only | + track, no window | + track, windows | ramp tick |"
    )
    print("|---|---|---|---|---|")
    for name, *times in rows:
        print(f"| {name} | " + " | ".join(f"{t:.3f} ms" for t in times) + " |")


if __name__ == "__main__":
    main()
