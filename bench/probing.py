"""Coordinated probing at fleet size, simulated: probes per endpoint and time to detect a death.

1,000 simulated agents (three zones) and 100 endpoints, in-process and on a simulated
clock, against the real pure code: the assignment (dnsmesh.probing.assign) and the quorum
rule (dnsmesh.quorum.evaluate). Each agent probes its endpoints every ``--interval``
seconds (a random phase each), ejects after ``--fall`` failures in a row and reports every
``--report-interval`` seconds (a random phase each); the controller evaluates the quorum
every second. At ``--kill-at`` one endpoint dies. Run once with coordination off (every
agent probes every endpoint) and once with ``--probes-per-endpoint`` agents each; the
table shows the probes per second each endpoint receives, the time from the death until the
quorum marks the endpoint down, and what one assignment costs the controller to compute.

    python3 bench/probing.py [--agents 1000] [--endpoints 100] [--probes-per-endpoint 3]

No sockets, no wall-clock waits: the numbers do not depend on the machine's load except
the assignment's compute time.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnsmesh import probing, quorum
from dnsmesh.policy import Policy, parse_policy


@dataclass
class Result:
    mode: str
    probes_per_endpoint_s: float
    detect_s: float | None
    assign_ms: float


def fleet_policy(endpoints: int, per_endpoint: int) -> Policy:
    return parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": "fleet"},
            "spec": {
                "domain": "fleet.bench.test",
                "endpoints": [
                    {"address": f"10.9.{i // 250}.{i % 250 + 1}", "weight": 1}
                    for i in range(endpoints)
                ],
                "health": {
                    "probe": {"type": "tcp", "port": 80, "interval": "1s", "timeout": "1s"},
                    "probes_per_endpoint": per_endpoint,
                },
            },
        }
    )


def simulate(args: argparse.Namespace, per_endpoint: int) -> Result:
    rng = random.Random(args.seed)
    agents = [probing.ProbingAgent(f"agent-{i:04}", f"zone-{i % 3}") for i in range(args.agents)]
    policy = fleet_policy(args.endpoints, per_endpoint)
    addresses = [str(e.address) for e in policy.spec.endpoints]
    started = time.perf_counter()
    assigned = probing.assign([policy], agents, per_endpoint, floor=args.quorum_min_agents)
    assign_ms = (time.perf_counter() - started) * 1000
    dead = addresses[0]
    # Events on the simulated clock: (time, kind, agent index, address).
    events: list[tuple[float, int, int, str]] = []
    for index, agent in enumerate(agents):
        for address in addresses:
            if assigned.get(address) is None or agent.agent_id in assigned[address]:
                heapq.heappush(events, (rng.uniform(0, args.interval), 0, index, address))
        heapq.heappush(events, (rng.uniform(0, args.report_interval), 1, index, ""))
    failures: dict[tuple[int, str], int] = {}
    reported: dict[str, dict[str, tuple[str, float]]] = {a: {} for a in addresses}
    probes = 0
    next_evaluation = 1.0
    detected: float | None = None
    end = args.kill_at + args.seconds
    while events and events[0][0] < end:
        now, kind, index, address = heapq.heappop(events)
        while next_evaluation <= now:
            votes = {
                a: [
                    quorum.Vote(
                        agent_id, state, 1.0 if state == "ejected" else 0.0, next_evaluation - at
                    )
                    for agent_id, (state, at) in by_agent.items()
                ]
                for a, by_agent in ((dead, reported[dead]),)
            }
            verdicts = quorum.evaluate(votes, (), rule(args))
            if detected is None and verdicts[dead].down and next_evaluation >= args.kill_at:
                detected = next_evaluation - args.kill_at
            next_evaluation += 1.0
        if kind == 0:
            probes += 1
            ok = not (address == dead and now >= args.kill_at)
            key = (index, address)
            failures[key] = 0 if ok else failures.get(key, 0) + 1
            heapq.heappush(events, (now + args.interval, 0, index, address))
        else:
            agent_id = agents[index].agent_id
            for a in (dead,):  # only the dead endpoint's votes matter to the result
                key = (index, a)
                if key in failures:
                    state = "ejected" if failures[key] >= args.fall else "healthy"
                    reported[a][agent_id] = (state, now)
            heapq.heappush(events, (now + args.report_interval, 1, index, ""))
    rate = probes / end / args.endpoints
    mode = f"N={per_endpoint}" if per_endpoint else "off (every agent)"
    return Result(mode, rate, detected, assign_ms)


def rule(args: argparse.Namespace) -> quorum.QuorumRule:
    return quorum.QuorumRule(min_agents=args.quorum_min_agents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--probes-per-endpoint", type=int, default=3)
    parser.add_argument("--quorum-min-agents", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0, help="probe interval, s")
    parser.add_argument("--fall", type=int, default=3, help="failures in a row to eject")
    parser.add_argument("--report-interval", type=float, default=2.0)
    parser.add_argument("--kill-at", type=float, default=5.0, help="simulated s")
    parser.add_argument("--seconds", type=float, default=15.0, help="simulated s after")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.agents <= 5000 or not 0 < args.endpoints <= 1000:
        parser.error("--agents 1-5000, --endpoints 1-1000 (bounded: it runs in-process)")
    wall = time.perf_counter()
    results = [simulate(args, 0), simulate(args, args.probes_per_endpoint)]
    print(
        f"{args.agents} agents (3 zones), {args.endpoints} endpoints, probe every "
        f"{args.interval:g} s, fall {args.fall}, reports every {args.report_interval:g} s, "
        f"quorum min {args.quorum_min_agents}"
    )
    print(
        f"{'coordination':<20} {'probes/s per endpoint':>22} {'detect (s)':>11} {'assign (ms)':>12}"
    )
    for r in results:
        detect = "never" if r.detect_s is None else f"{r.detect_s:.1f}"
        print(f"{r.mode:<20} {r.probes_per_endpoint_s:>22.1f} {detect:>11} {r.assign_ms:>12.1f}")
    print(f"(simulated; {time.perf_counter() - wall:.1f} s of wall time)")
    return 0 if all(r.detect_s is not None for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
