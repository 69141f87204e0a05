#!/usr/bin/env python3
"""Instructions per query on the agent's hot path, this tree against a git ref, by callgrind.

    python3 bench/hotpath.py                 # against the previous commit (HEAD~1)
    python3 bench/hotpath.py --ref d0a1c4a   # against any commit, tag or branch
    python3 bench/hotpath.py --queries 20000
    python3 bench/hotpath.py --log           # this tree only: the query log's cost per query
    python3 bench/hotpath.py --ecs           # slices and EDNS Client Subnet instead

Wall-clock benchmarks (bench/dns.py) swing by tens of percent on a shared machine; valgrind's
callgrind counts the instructions the CPU executes, which is the same on every run of the
same code and inputs, whatever else the machine does. So this is the check that a change did
not make the per-query path slower.

Each scenario feeds datagrams to the agent's real UDP listener (``datagram_received``, the
function the socket reader calls) with a stand-in socket whose ``sendto`` only counts, so
the count is the agent's own work: parse, pipeline, pre-encoded answer, send call. Each tree
runs three times under callgrind (no queries, N policy hits, N cache hits) and the per-query
figure is (run - empty run) / N, which takes away the interpreter's start and the imports.
The ref's tree is exported with ``git archive`` to a temporary folder and imported from
there, with this tree's copy of this script doing the measuring.

``--ecs`` measures two other scenarios the same way: a hit on a policy with a slice the
client is not in (``slice``), and a policy hit whose query carries an ECS option from a
forwarder the agent trusts (``ecs``: a tree without ECS support answers it as if the
option were not there, so the change is what honouring it costs).

``--log`` prices the query log (``--query-log``) in this tree: the same scenarios with the
log on and every query admitted (no sampling, no rate bound), once counting only the loop's
part (admission and the queued tuple: ``+log-loop``) and once with the writer's part too
(formatting every queued line and writing it to /dev/null: ``+log``), run in one thread so
the count is exact: the queue is taken every 200 queries, as the writer thread takes it
every 0.2 s at the default line rate. Every scenario runs with the agent process's garbage
collector settings (``gc.freeze()``, young collections every 10 000 net allocations),
which queued lines, outliving their query, are the only thing here to trigger. It also
times each scenario without valgrind (microseconds per query, the best of five runs in each
of three rounds over the scenarios), which says what the counts mean on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("hit", "cached")
ECS_SCENARIOS = ("slice", "ecs")
# The writer takes what is queued every 0.2 s: 200 lines at the default --query-log-max-rate.
_LOG_BATCH = 200
LOG_SCENARIOS = ("hit", "hit+log-loop", "hit+log", "cached", "cached+log-loop", "cached+log")
_COLLECTED = re.compile(r"Collected : (\d+)")


def _inner(scenario: str, count: int, timed: bool = False) -> None:
    """Run ``count`` queries of ``scenario`` through the UDP listener of the tree on sys.path;
    ``timed``: print the microseconds per query (best of five runs) instead."""
    import dataclasses
    import gc
    import time

    import dns.edns
    import dns.message
    import dns.rrset

    from agent.config import AgentConfig, HostPort
    from agent.listeners import UdpListener
    from agent.server import AgentServer
    from dnsmesh.dnsforward import build_question, build_upstream_query, parse_upstream_response
    from dnsmesh.dnswire import name_to_wire
    from dnsmesh.policy import parse_policy
    from dnsmesh.snapshot import compile_snapshot

    config = dataclasses.replace(AgentConfig(), listen=(HostPort("127.0.0.1", 0),), probes=False)
    if scenario == "ecs" and hasattr(config, "trust_ecs_from"):
        from dnsmesh.admission import LOOPBACK

        config = dataclasses.replace(config, trust_ecs_from=LOOPBACK)
    base, _, log_part = scenario.partition("+")
    if log_part:
        from agent.querylog_config import QueryLogConfig

        every_query = QueryLogConfig(path=os.devnull, max_rate=0)
        config = dataclasses.replace(config, query_log=every_query)
    server = AgentServer(config)
    query_log = getattr(server, "query_log", None)
    if query_log is not None:
        query_log.queue_limit = _LOG_BATCH
        query_log.open()  # no writer thread: the writer's part runs below, in this thread
    policy = parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": "hit"},
            "spec": {
                "domain": "hit.mesh.internal",
                "ttl": 5,
                "endpoints": [
                    {"address": "127.0.10.1", "weight": 90},
                    {"address": "127.0.10.2", "weight": 10},
                ],
            },
        }
    )
    sliced = parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": "slice"},
            "spec": {
                "domain": "slice.mesh.internal",
                "ttl": 5,
                "endpoints": [
                    {"address": "127.0.10.1", "weight": 90, "group": "v1"},
                    {"address": "127.0.10.2", "weight": 10, "group": "v2"},
                ],
                "slices": [{"id": "beta", "match": {"client_cidrs": ["10.8.0.0/16"]}}],
            },
        }
    )
    server.apply_snapshot(compile_snapshot([policy, sliced]))
    qname = name_to_wire("cached.bench.test")
    upstream_query = build_upstream_query(qname, 1, 1, 4242)
    response = dns.message.make_response(dns.message.from_wire(upstream_query))
    response.answer.append(dns.rrset.from_text("cached.bench.test.", 3600, "IN", "A", "127.0.0.1"))
    answer = parse_upstream_response(response.to_wire(), 4242, build_question(qname, 1, 1))
    server.cache.put((qname, 1, 1), answer, answer.cache_ttl)

    class Socket:
        sent = 0

        def fileno(self) -> int:
            return -1

        def setblocking(self, flag: bool) -> None:
            pass

        def sendto(self, data: bytes, addr: object) -> int:
            Socket.sent += 1
            return len(data)

    class Loop:
        def add_reader(self, fd: int, callback: object) -> None:
            pass

    # The shared query state is ``entry`` since the one query entry, ``service`` before.
    shared = getattr(server, "entry", None) or server.service  # type: ignore[attr-defined]
    listener = UdpListener(shared, Socket(), Loop())  # type: ignore[arg-type]
    names = {"hit": "hit.mesh.internal", "slice": "slice.mesh.internal", "ecs": "hit.mesh.internal"}
    name = names.get(base, "cached.bench.test")
    options = [dns.edns.ECSOption("10.8.3.0", 24)] if base == "ecs" else []
    wire = dns.message.make_query(name, "A", use_edns=0, options=options).to_wire()
    client = ("127.0.0.1", 40000)
    received = listener.datagram_received
    # As the agent process runs (agent/app.py): what was built so far frozen, young
    # collections every 10 000 net allocations. Only queued log lines outlive a query.
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)

    def run() -> int:
        """The queries, the queued lines taken in batches as the writer thread does."""
        lines = 0
        if query_log is None:  # the loop the comparisons with --ref have always measured
            for _ in range(count):
                received(wire, client)
            return lines
        for done in range(1, count + 1):
            received(wire, client)
            if done % _LOG_BATCH == 0 or done == count:
                if log_part == "log":
                    lines += query_log.write_pending()
                else:  # +log-loop: the loop's part alone
                    query_log.queue.clear()
        return lines

    if timed:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        print(f"{best / count * 1e6:.3f}")
        return
    lines = run()
    if Socket.sent != count:
        raise SystemExit(f"{scenario}: {Socket.sent} answers sent for {count} queries")
    if log_part == "log" and lines != count:
        raise SystemExit(f"{scenario}: {lines} lines written for {count} queries")


def _python() -> Path:
    """The project's venv (it has dnspython and the rest), else this interpreter."""
    venv = ROOT / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def _callgrind(tree: Path, scenario: str, count: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        str(_python()),
        "-B",
        str(Path(__file__).resolve()),
        "--inner",
        scenario,
        str(count),
        "--tree",
        str(tree),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed ({scenario}, {tree}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def _per_query(tree: Path, count: int, scenarios: tuple[str, ...]) -> dict[str, float]:
    empty = _callgrind(tree, "hit", 0)
    return {s: (_callgrind(tree, s, count) - empty) / count for s in scenarios}


def _timed(scenario: str, count: int) -> float:
    """Microseconds per query of ``scenario`` in this tree, without valgrind."""
    command = [str(_python()), "-B", str(Path(__file__).resolve()), "--inner", scenario]
    command += [str(count), "--tree", str(ROOT), "--timed"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"timed run failed ({scenario}):\n{done.stderr[-2000:]}")
    return float(done.stdout.strip())


def _log_cost(count: int, rounds: int = 3) -> None:
    """The --log table: each scenario with the log off and on, counted and timed. The timed
    runs go round the scenarios ``rounds`` times and keep each one's best, so a burst of
    someone else's load lands on all of them alike rather than on one."""
    counted = {
        s: (_callgrind(ROOT, s, count) - _callgrind(ROOT, s, 0)) / count for s in LOG_SCENARIOS
    }
    timed = dict.fromkeys(LOG_SCENARIOS, float("inf"))
    for _ in range(rounds):
        for scenario in LOG_SCENARIOS:
            timed[scenario] = min(timed[scenario], _timed(scenario, count))
    print(f"the query log's cost per query (this tree), {count} queries per run")
    print("| scenario | instructions | vs log off | us per query (timed) | vs log off |")
    print("|---|---:|---:|---:|---:|")
    for scenario in LOG_SCENARIOS:
        base = scenario.partition("+")[0]
        if base == scenario:
            print(f"| {scenario} | {counted[scenario]:,.0f} | | {timed[scenario]:.2f} | |")
            continue
        extra, slower = counted[scenario] - counted[base], timed[scenario] - timed[base]
        print(
            f"| {scenario} | {counted[scenario]:,.0f} | {extra:+,.0f} | {timed[scenario]:.2f} "
            f"| {slower:+.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD~1", help="the commit to compare with")
    parser.add_argument("--queries", type=int, default=20000, help="queries per run (N)")
    parser.add_argument(
        "--log", action="store_true", help="the query log's cost per query, in this tree only"
    )
    parser.add_argument(
        "--ecs", action="store_true", help="a policy hit with slices, and one with ECS, instead"
    )
    parser.add_argument("--inner", nargs=2, metavar=("SCENARIO", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        # The measured tree first on the path, ahead of an editable install of this one, and
        # in place of this script's folder, whose dns.py would shadow dnspython.
        sys.path[0] = args.tree
        _inner(args.inner[0], int(args.inner[1]), args.timed)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    if args.log:
        _log_cost(args.queries)
        return
    with tempfile.TemporaryDirectory(prefix="dnsmesh-hotpath-") as tmp:
        before = Path(tmp)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.ref], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
        scenarios = ECS_SCENARIOS if args.ecs else SCENARIOS
        rows = {
            "before": _per_query(before, args.queries, scenarios),
            "after": _per_query(ROOT, args.queries, scenarios),
        }
    print(f"instructions per query (callgrind), {args.queries} queries per run")
    print(f"| scenario | before ({args.ref}) | after (this tree) | change |")
    print("|---|---:|---:|---:|")
    for scenario in scenarios:
        old, new = rows["before"][scenario], rows["after"][scenario]
        print(f"| {scenario} | {old:,.0f} | {new:,.0f} | {100 * (new - old) / old:+.1f} % |")


if __name__ == "__main__":
    main()
