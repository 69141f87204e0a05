"""Benchmark of the push path: N WebSocket agents on one controller, one change, convergence.

For each N it starts a real ``dnsmesh controller`` process on loopback (a fresh SQLite file
by default, or a fresh PostgreSQL database made from --database and dropped afterwards),
opens N simulated agents (``websockets`` clients spread over a few worker processes; each
says hello at revision 0, gets the snapshot and ACKs it), then makes one policy change via
REST and measures, at the clients, when each agent received the delta and when it had
ACKed it, relative to the moment the PUT was sent; then it checks /v1/revisions/{r} until
the controller reports all N agents converged. Memory per agent is the controller's RSS
(/proc/PID/status) after connecting minus before, over N. Every phase has a deadline.

``--replicas 2`` (PostgreSQL only): two controllers on the one fresh database, the agents
split evenly between them (each client process talks to one replica), the change made
through the first, and the percentiles taken over all agents: the second replica learns of
the commit by NOTIFY. Memory per agent is then the RSS growth of both over N.

    python bench/controller_push.py --agents 100,1000,5000 [--rounds 3] [--workers 2]
    python bench/controller_push.py --agents 10000 --replicas 2 --database postgresql://...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# The helper modules beside this script, and the repository root for tests.support.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _push_agents import ROUND_DEADLINE_S, run_worker

from tests.support.controller import ControllerProcess
from tests.support.policies import policy_doc


def raise_fd_limit() -> int:
    """Each agent is one socket here and one in the controller (which inherits this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the driver ---------------------------------------------------------------------------------


@dataclass
class Controller:
    process: subprocess.Popen[str]
    base_url: str
    lines: list[str]

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match.group(1)) if match else 0


@contextlib.contextmanager
def database(url: str | None, folder: Path) -> Iterator[str]:
    """A fresh migrated database with no policies: SQLite in ``folder`` or a new PostgreSQL."""
    from controller.db.engine import build_engine
    from controller.db.migrate import upgrade

    if url is None or url.startswith("sqlite"):
        fresh = f"sqlite:///{folder / f'push-{secrets.token_hex(3)}.db'}"
        engine = build_engine(fresh)
        upgrade(engine)
        engine.dispose()
        yield fresh
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(url).set(drivername="postgresql")
    name = f"dnsmesh_bench_push_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    fresh = admin.set(database=name).render_as_string(hide_password=False)
    try:
        engine = build_engine(fresh)
        upgrade(engine)
        engine.dispose()
        yield fresh
    finally:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def client_shares(size: int, workers: int) -> list[int]:
    return [size // workers + (1 if i < size % workers else 0) for i in range(workers)]


@contextlib.contextmanager
def controller(url: str, folder: Path, *extra: str) -> Iterator[Controller]:
    with ControllerProcess(url, folder, *extra, stop_timeout=30.0) as process:
        assert process.process is not None
        yield Controller(process.process, process.base_url, process.stderr_lines)


def tokens(url: str) -> dict[str, str]:
    from controller.auth import TokenStore
    from controller.db.engine import build_engine
    from controller.db.session import Database

    engine = build_engine(url)
    try:
        store = TokenStore(Database(engine))
        return {
            role: store.create(f"bench-{role}", role, actor="bench")[1]
            for role in ("agent", "editor", "viewer")
        }
    finally:
        engine.dispose()


def policy(weight: int) -> dict[str, Any]:
    return policy_doc(
        "checkout",
        [
            {"address": "127.0.10.1", "weight": weight, "group": "v1"},
            {"address": "127.0.10.2", "weight": 100 - weight, "group": "v2"},
        ],
        labels={"team": "bench"},
        ttl=5,
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@dataclass
class Row:
    agents: int
    round: int
    recv_p50: float
    recv_p99: float
    ack_p50: float
    ack_p99: float
    ack_max: float
    confirmed: float
    missing: int
    kib_per_agent: float
    connect_s: float


def run_size(args: argparse.Namespace, size: int, folder: Path) -> list[Row]:
    rows: list[Row] = []
    extra = (["--ws-deflate"] if args.deflate else []) + args.controller_arg
    with database(args.database, folder) as url, contextlib.ExitStack() as replicas:
        controllers = [
            replicas.enter_context(controller(url, folder, *extra, "--replica-id", f"bench-{i}"))
            for i in range(args.replicas)
        ]
        ctl = controllers[0]  # the changes go through the first replica
        secret = tokens(url)
        # Idle for most of a round: a kept-alive connection the controller has closed by the
        # next change (uvicorn's keep-alive is 5 s) would be reset, so none is kept that long.
        http = httpx.Client(
            base_url=ctl.base_url,
            trust_env=False,
            timeout=30,
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        editor = {"Authorization": f"Bearer {secret['editor']}"}
        viewer = {"Authorization": f"Bearer {secret['viewer']}"}
        assert http.put("/v1/policies/checkout", json=policy(90), headers=editor).status_code == 201
        rss_before = sum(c.rss_kib() for c in controllers)
        workers = []
        started = time.monotonic()
        env = {**os.environ, "DNSMESH_BENCH_TOKEN": secret["agent"]}
        for index, count in enumerate(client_shares(size, args.workers)):
            target = controllers[index % len(controllers)]
            command = [
                sys.executable,
                __file__,
                "--worker",
                "--url",
                target.base_url.replace("http://", "ws://") + "/v1/agents/stream",
                "--worker-agents",
                str(count),
                "--worker-prefix",
                f"w{index}",
                "--connect-deadline",
                str(args.connect_deadline),
            ]
            if args.deflate:
                command.append("--deflate")
            workers.append(
                subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
                )
            )
        try:
            for worker in workers:
                assert worker.stdout is not None
                answer = json.loads(worker.stdout.readline() or '{"error": "worker died"}')
                if "error" in answer:
                    raise RuntimeError(f"a worker failed to connect its agents: {answer['error']}")
            connect_s = time.monotonic() - started
            time.sleep(args.settle)  # let the hellos and ACKs of the snapshots be written
            rss_after = sum(c.rss_kib() for c in controllers)
            per_agent = (rss_after - rss_before) / size
            for round_number in range(1, args.rounds + 1):
                sent = time.monotonic()
                response = http.put(
                    "/v1/policies/checkout", json=policy(90 - round_number), headers=editor
                )
                assert response.status_code == 200, response.text
                revision = response.json()["metadata"]["revision"]
                times: list[tuple[float, float]] = []
                missing = 0
                for worker in workers:
                    assert worker.stdin is not None and worker.stdout is not None
                    worker.stdin.write(json.dumps({"expect": revision}) + "\n")
                    worker.stdin.flush()
                for worker in workers:
                    assert worker.stdout is not None
                    answer = json.loads(worker.stdout.readline())
                    times.extend((r, a) for r, a in answer["times"])
                    missing += answer["missing"]
                confirmed = float("nan")
                deadline = time.monotonic() + ROUND_DEADLINE_S
                while time.monotonic() < deadline:
                    state = http.get(f"/v1/revisions/{revision}", headers=viewer).json()
                    if state["converged"] >= size:
                        confirmed = time.monotonic() - sent
                        break
                    time.sleep(0.02)
                received = [(r - sent) * 1000 for r, _ in times] or [float("nan")]
                acked = [(a - sent) * 1000 for _, a in times] or [float("nan")]
                rows.append(
                    Row(
                        size,
                        round_number,
                        percentile(received, 0.5),
                        percentile(received, 0.99),
                        percentile(acked, 0.5),
                        percentile(acked, 0.99),
                        max(acked),
                        confirmed * 1000,
                        missing,
                        per_agent,
                        connect_s,
                    )
                )
                print(format_row(rows[-1]), flush=True)
                time.sleep(0.5)
        finally:
            for worker in workers:
                with contextlib.suppress(Exception):
                    assert worker.stdin is not None
                    worker.stdin.write(json.dumps({"quit": True}) + "\n")
                    worker.stdin.flush()
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            http.close()
    return rows


HEADER = (
    "| agents | round | recv p50 ms | recv p99 ms | ack p50 ms | ack p99 ms | ack 100% ms "
    "| /v1/revisions all ms | missing | KiB/agent | connect s |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def format_row(row: Row) -> str:
    return (
        f"| {row.agents} | {row.round} | {row.recv_p50:.1f} | {row.recv_p99:.1f} | "
        f"{row.ack_p50:.1f} | {row.ack_p99:.1f} | {row.ack_max:.1f} | {row.confirmed:.1f} | "
        f"{row.missing} | {row.kib_per_agent:.1f} | {row.connect_s:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--agents", default="100,1000", help="comma-separated sizes (e.g. 100,1000,5000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="changes per size")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds between connecting and the change"
    )
    parser.add_argument(
        "--database", help="a PostgreSQL URL to create a database from (default: SQLite)"
    )
    parser.add_argument(
        "--deflate", action="store_true", help="permessage-deflate (controller --ws-deflate)"
    )
    parser.add_argument(
        "--controller-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to every controller (repeat: --controller-arg=--probes-per-endpoint "
        "--controller-arg=0)",
    )
    parser.add_argument(
        "--connect-deadline",
        type=float,
        default=600.0,
        help="seconds for every agent to connect (10,000 on a loaded 2-core machine: minutes)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="controllers sharing the database, agents split across them (PostgreSQL)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--worker-agents", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    limit = raise_fd_limit()
    if args.worker:
        asyncio.run(run_worker(args))
        return 0
    sizes = [int(s) for s in args.agents.split(",")]
    postgres = bool(args.database and args.database.startswith("postgres"))
    if args.replicas > 1 and not postgres:
        parser.error("--replicas needs --database postgresql://... (replicas share it)")
    args.workers = max(args.workers, args.replicas)  # each client process has one replica
    if max(sizes) * 2 + 200 > limit * max(1, args.workers):
        print(f"warning: RLIMIT_NOFILE is {limit}", file=sys.stderr)
    load = os.getloadavg()
    print(
        f"controller push bench: {os.cpu_count()} CPUs, {args.workers} client processes, "
        f"{'PostgreSQL' if postgres else 'SQLite'}, {args.replicas} replica(s), "
        f"permessage-deflate {'on' if args.deflate else 'off'}, RLIMIT_NOFILE {limit}, "
        f"controller args {' '.join(args.controller_arg) or '(none)'}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="dnsmesh-bench-push-") as folder:
        for size in sizes:
            run_size(args, size, Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
