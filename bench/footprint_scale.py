#!/usr/bin/env python3
"""An agent with many policies: ready time, memory, and one policy change under queries.

    python3 bench/footprint_scale.py                      # 10,000 and 100,000, this tree
    python3 bench/footprint_scale.py --ref c7a93a0 --ref-sizes 10000   # and a commit beside

For each tree and size N it writes N policies (1,000 per file) to a temporary folder, starts
``dnsmesh agent --policies`` on a free loopback port and measures:

* **ready**: seconds from the start of the process to the first right answer for the last
  policy, and the CPU seconds the process used by then (what a loaded machine does not
  inflate); **RSS** (MiB) of the process then;
* **one change**: one query at a time goes to an unchanged policy, without pause, while one
  policy's file is rewritten (its endpoint moves). **apply** is the time from the write to
  the first answer with the new address (**change CPU**: the agent's CPU seconds in that
  time, the answering included); **worst** and **p99** are the latencies of the
  queries to the unchanged policy from the write until 1 s after the apply (a stall of the
  agent's event loop shows here whole); **quiet worst** is the same for the second before the
  write, the machine's own noise.

A second table is a controller delta, in process: the agent's PolicySources holds N
controller policies (served and health-weighed as the agent does) and receives a delta that
changes one. **prepare** is the part that runs in a worker thread (applying the delta,
compiling), **commit** the part on the event loop (the swap, health, answer counts): the
loop is stalled for the commit's time whole. Both are timed by the thread's CPU clock, which
a loaded machine inflates less than the wall clock; the best of 5 changes. **state save** is
the state file's write that follows (a worker thread, wall clock, best of 5), and **longest
loop gap** the worst of 5 of the longest the loop went without running, from the delta to
its state saved, as a task that sleeps 0.5 ms at a time sees it: the stall a query arriving
then would wait out, GIL waits included. **resync** is a snapshot of the N policies (one
changed) received as the agent's channel takes it, from the message's bytes to its state
saved, and its **longest loop gap** (a tree before agent/sync/incoming.py decodes inline).

The ref's tree is exported with ``git archive`` to a temporary folder and run by the same
interpreter. Every loop is bounded in count and time; every agent is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import (
    Server,
    ServerFailed,
    cpu_seconds,
    query_a,
    start,
    wait_answering,
)

ROOT = Path(__file__).resolve().parents[1]
PER_FILE = 1000
QUIET_S = 1.0  # the window before the write whose latencies show the machine's noise
AFTER_S = 1.0  # how long queries go on after the change applied
QUERY_CAP = 200_000  # queries in one measurement, whatever the time


def address_of(index: int, moved: bool = False) -> str:
    """The first endpoint of policy ``index`` (10.255.x.y once the change moved it)."""
    return f"10.{255 if moved else (index >> 16) & 127}.{(index >> 8) & 255}.{index & 255}"


def policy_text(index: int, moved: bool = False) -> str:
    return (
        "apiVersion: dnsmesh/v1\nkind: Policy\n"
        f"metadata: {{name: svc-{index}}}\n"
        f"spec:\n  domain: svc-{index}.mesh.internal\n  ttl: 5\n  endpoints:\n"
        f"    - {{address: {address_of(index, moved)}, weight: 90}}\n"
        f"    - {{address: 10.128.{(index >> 8) & 255}.{index & 255}, weight: 10}}\n"
    )


def write_file(folder: Path, first: int, count: int, moved: int | None = None) -> Path:
    path = folder / f"p{first // PER_FILE:05d}.yaml"
    docs = [policy_text(i, moved=i == moved) for i in range(first, first + count)]
    # Written aside and renamed: the agent never reads half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text("---\n".join(docs))
    tmp.replace(path)
    return path


def write_policies(folder: Path, n: int) -> None:
    for first in range(0, n, PER_FILE):
        write_file(folder, first, min(PER_FILE, n - first))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port: int = udp.getsockname()[1]
    return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Row:
    tree: str
    n: int
    ready_s: float | None = None
    ready_cpu_s: float | None = None
    rss_mib: float | None = None
    apply_s: float | None = None
    apply_cpu_s: float | None = None
    worst_ms: float | None = None
    p99_ms: float | None = None
    quiet_worst_ms: float | None = None
    queries: int = 0
    error: str = ""


@contextlib.contextmanager
def agent(tree: Path, folder: Path, logdir: Path) -> Iterator[Server]:
    port = free_port()
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from cli.main import main; main()"
    cmd = [
        sys.executable,
        "-c",
        code,
        "agent",
        "--policies",
        str(folder),
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        "127.0.0.1:9",  # nothing forwards in this bench
        "--no-probes",
        "--log-level",
        "warning",
        "--reload-interval",
        "0.1",
    ]
    env = {"PYTHONPATH": str(tree)}
    server = start(f"agent-{tree.name}", cmd, port, logdir, None, env=env)
    try:
        yield server
    finally:
        server.stop()


def timed_query(port: int, name: str) -> tuple[float, list[str]]:
    """(seconds, the A answers); a lost query counts as its 1 s timeout."""
    began = time.perf_counter()
    try:
        _, addresses = query_a(port, name, timeout=1.0)
    except TimeoutError:
        addresses = []
    return time.perf_counter() - began, addresses


def quiet_worst(port: int, name: str) -> float:
    worst = 0.0
    deadline = time.monotonic() + QUIET_S
    for _ in range(QUERY_CAP):
        if time.monotonic() >= deadline:
            break
        worst = max(worst, timed_query(port, name)[0])
    return worst


def measure_change(row: Row, server: Server, folder: Path, n: int, limit_s: float) -> None:
    """Rewrite the file of policy n // 2 and query the unchanged svc-0 meanwhile."""
    steady, moved = "svc-0.mesh.internal", n // 2
    row.quiet_worst_ms = quiet_worst(server.port, steady) * 1000
    first = moved // PER_FILE * PER_FILE
    latencies: list[float] = []
    cpu_before = cpu_seconds(server.pid)
    written = time.perf_counter()
    write_file(folder, first, min(PER_FILE, n - first), moved=moved)
    applied: float | None = None
    target = address_of(moved, moved=True)
    for count in range(QUERY_CAP):
        now = time.perf_counter()
        if applied is not None and now - applied > AFTER_S:
            break
        if applied is None and now - written > limit_s:
            break
        latencies.append(timed_query(server.port, steady)[0])
        if applied is None and count % 10 == 0:
            _, answers = timed_query(server.port, f"svc-{moved}.mesh.internal")
            if target in answers:
                applied = time.perf_counter()
                cpu_after = cpu_seconds(server.pid)
                if cpu_before is not None and cpu_after is not None:
                    row.apply_cpu_s = cpu_after - cpu_before
    row.queries = len(latencies)
    latencies.sort()
    if latencies:
        row.worst_ms = latencies[-1] * 1000
        row.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    if applied is None:
        row.error = f"change not applied within {limit_s:g} s"
    else:
        row.apply_s = applied - written


def run_one(tree: Path, label: str, n: int, workdir: Path, limit_s: float) -> Row:
    row = Row(label, n)
    folder = workdir / f"policies-{label}-{n}"
    folder.mkdir()
    try:
        write_policies(folder, n)
        began = time.perf_counter()
        with agent(tree, folder, workdir) as server:
            try:
                last = n - 1
                wait_answering(server, f"svc-{last}.mesh.internal", [address_of(last)], limit_s)
                row.ready_s = time.perf_counter() - began
                row.rss_mib = rss_mib(server.pid)
                row.ready_cpu_s = cpu_seconds(server.pid)
                measure_change(row, server, folder, n, limit_s)
            except ServerFailed as exc:
                row.error = str(exc).splitlines()[0][:120]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return row


# Runs in a child interpreter whose sys.path starts at the tree measured: only APIs that the
# ref and this tree share (PolicySources, ServedSnapshot, HealthMonitor, Delta).
DELTA_CODE = """
import asyncio, json, sys, tempfile, time
from pathlib import Path
from agent.probes.monitor import HealthMonitor
from agent.served import ServedSnapshot
from agent.sync.policy_sources import PolicySources
from agent.sync.state_file import StateDir
from dnsmesh.policy import parse_policy
from dnsmesh.protocol import AppliedState, Delta, PolicyChange, SnapshotMessage
from dnsmesh.protocol import decode_message, encode_message
try:
    from agent.sync.incoming import decode_incoming, release_documents
except ImportError:
    decode_incoming = release_documents = None

n = int(sys.argv[1])
sys.setswitchinterval(0.001)  # as the agent runs (agent/app.py)

def doc(i, moved=0):
    return {"apiVersion": "dnsmesh/v1", "kind": "Policy", "metadata": {"name": f"svc-{i}"},
            "spec": {"domain": f"svc-{i}.mesh.internal", "endpoints": [
                {"address": f"10.{(i >> 16) & 127}.{(i >> 8) & 255}.{moved or i & 255}"},
                {"address": f"10.128.{(i >> 8) & 255}.{i & 255}"}]}}

async def main():
    served = ServedSnapshot()
    health = HealthMonitor(served, probing=False)
    sources = PolicySources(lambda s: served.set_base(s, health.weigh(s)))
    policies = {f"svc-{i}": parse_policy(doc(i)) for i in range(n)}
    sources.start_from(AppliedState(1, policies, mesh_id="m"))
    prepares, commits, saves, gaps = [], [], [], []
    folder = tempfile.TemporaryDirectory(prefix="dnsmesh-delta-")
    state_dir = StateDir(Path(folder.name))
    state_dir.save(sources.running)  # each round's save keeps it as the previous
    for round_ in range(5):
        rev = sources.running.revision
        change = PolicyChange(name=f"svc-{n // 2}", policy=doc(n // 2, moved=round_ + 1))
        delta = Delta(since=rev, revision=rev + 1, changes=[change], mesh_id="m")
        # The loop's longest gap from the delta to its state file written, as the agent's
        # channel does them (agent/sync/channel.py): what a query arriving then waits.
        beats = []
        ticker = asyncio.ensure_future(_heartbeat(beats))
        await asyncio.sleep(0.01)
        prepared = await asyncio.to_thread(_timed_prepare, sources, delta, prepares)
        began = time.thread_time()
        outcomes = sources.commit(prepared)
        commits.append(time.thread_time() - began)
        assert [o.revision for o in outcomes] == [rev + 1], outcomes
        began = time.perf_counter()
        await asyncio.to_thread(state_dir.save, sources.running)
        saves.append(time.perf_counter() - began)
        ticker.cancel()
        gaps.append(max(beats))
    # A resync: the whole set again as a snapshot message (one policy changed), decoded
    # as the agent's channel decodes it (a tree without agent/sync/incoming.py: inline).
    docs = [doc(i) for i in range(n)]
    docs[n // 3] = doc(n // 3, moved=99)
    text = encode_message(SnapshotMessage(revision=sources.running.revision + 1,
                                          policies=docs, mesh_id="m")).encode()
    del docs
    beats = []
    ticker = asyncio.ensure_future(_heartbeat(beats))
    await asyncio.sleep(0.01)
    began = time.perf_counter()
    message = await decode_incoming(text) if decode_incoming else decode_message(text)
    prepared = await asyncio.to_thread(sources.prepare, [message])
    sources.commit(prepared)
    if release_documents:
        release_documents([message])
    del message, prepared
    await asyncio.to_thread(state_dir.save, sources.running)
    resync = time.perf_counter() - began
    await asyncio.sleep(0.3)  # what is freed after it
    ticker.cancel()
    folder.cleanup()
    print(json.dumps({"prepare": min(prepares), "commit": min(commits), "save": min(saves),
                      "gap": max(gaps), "resync": resync, "resync_gap": max(beats)}))

async def _heartbeat(beats):
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.0005)
        now = time.perf_counter()
        beats.append(now - last - 0.0005)
        last = now

def _timed_prepare(sources, delta, out):
    began = time.thread_time()
    prepared = sources.prepare([delta])
    out.append(time.thread_time() - began)
    return prepared

asyncio.run(main())
"""


@dataclass
class DeltaRow:
    tree: str
    n: int
    prepare_ms: float | None = None
    commit_ms: float | None = None
    save_ms: float | None = None
    gap_ms: float | None = None
    resync_s: float | None = None
    resync_gap_ms: float | None = None
    error: str = ""


def run_delta(tree: Path, label: str, n: int, limit_s: float) -> DeltaRow:
    row = DeltaRow(label, n)
    code = f"import sys; sys.path.insert(0, {str(tree)!r})\n{DELTA_CODE}"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(n)],
            capture_output=True,
            text=True,
            timeout=limit_s * 3,
            cwd=tree,
        )
    except subprocess.TimeoutExpired:
        row.error = f"not done in {limit_s * 3:g} s"
        return row
    if done.returncode != 0:
        row.error = done.stderr.strip().splitlines()[-1][:120] if done.stderr else "failed"
        return row
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row.prepare_ms, row.commit_ms = result["prepare"] * 1000, result["commit"] * 1000
    row.save_ms, row.gap_ms = result["save"] * 1000, result["gap"] * 1000
    row.resync_s, row.resync_gap_ms = result["resync"], result["resync_gap"] * 1000
    return row


def export(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(rows: Sequence[Row]) -> None:
    print(
        "| tree | policies | ready s | ready CPU s | RSS MiB | change applied s "
        "| change CPU s | worst ms | p99 ms | quiet worst ms | queries | error |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r.tree} | {r.n:,} | {_number(r.ready_s, 1)} | {_number(r.ready_cpu_s, 1)} "
            f"| {_number(r.rss_mib, 0)} | {_number(r.apply_s, 2)} | {_number(r.apply_cpu_s, 2)} "
            f"| {_number(r.worst_ms, 1)} | {_number(r.p99_ms, 2)} "
            f"| {_number(r.quiet_worst_ms, 1)} | {r.queries:,} | {r.error} |"
        )


def print_delta_table(rows: Sequence[DeltaRow]) -> None:
    print()
    print(
        "one controller delta (one policy of N changed), in process: thread CPU and the state "
        "file's write (wall), best of 5; the loop's longest gap, worst of 5"
    )
    print(
        "| tree | policies | prepare (worker thread) ms | commit (event loop) ms "
        "| state save (worker thread) ms | longest loop gap ms | resync s "
        "| resync: longest loop gap ms | error |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r.tree} | {r.n:,} | {_number(r.prepare_ms, 1)} | {_number(r.commit_ms, 2)} "
            f"| {_number(r.save_ms, 1)} | {_number(r.gap_ms, 1)} | {_number(r.resync_s, 2)} "
            f"| {_number(r.resync_gap_ms, 1)} | {r.error} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="policy counts, this tree")
    parser.add_argument("--ref", help="a commit to run beside this tree")
    parser.add_argument("--ref-sizes", default="10000", help="policy counts for --ref")
    parser.add_argument(
        "--limit", type=float, default=120.0, help="seconds allowed to get ready, and to apply"
    )
    parser.add_argument("--no-delta", action="store_true", help="skip the delta table")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[Row] = []
    deltas: list[DeltaRow] = []
    with tempfile.TemporaryDirectory(prefix="dnsmesh-scale-") as tmp:
        work = Path(tmp)
        trees: list[tuple[Path, str, list[int]]] = []
        if args.ref:
            ref_sizes = [int(s) for s in args.ref_sizes.split(",") if s]
            trees.append((export(args.ref, work / "ref"), args.ref, ref_sizes))
        trees.append((ROOT, "this tree", sizes))
        for n in sorted({n for _, _, ns in trees for n in ns}):
            for tree, label, ns in trees:  # side by side: each size on both trees in turn
                if n in ns:
                    rows.append(run_one(tree, label, n, work, args.limit))
                    if not args.no_delta:
                        deltas.append(run_delta(tree, label, n, args.limit))
                    print(f"# {label} {n}: done", file=sys.stderr, flush=True)
    print_table(rows)
    if deltas:
        print_delta_table(deltas)
    return 0 if all(not r.error for r in [*rows, *deltas]) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
