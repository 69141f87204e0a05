"""Benchmark of the controller's REST API: PUT writes/s, GET one and GET list of 1,000 reads/s.

Runs a real ``dnsmesh controller`` process (uvicorn) on loopback against PostgreSQL and
SQLite, with N concurrent httpx clients. Every phase is bounded in operations and seconds.
It creates its own PostgreSQL database (from the --database URL, used only to CREATE and
DROP it) and its own SQLite file, and removes both. With ``--ref COMMIT`` the same phases
run against that commit's controller too (exported to a temporary folder, its own
migrations and token), before this build's, on fresh databases: one run prints both.

    python bench/controller_api.py --database postgresql://postgres@127.0.0.1:5432/postgres
    python bench/controller_api.py --no-sqlite --ref c7a93a0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url

# This folder (for _reftree) and the repository root (for tests.support).
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _reftree import Tree, trees

from tests.support.controller import ControllerProcess
from tests.support.policies import policy_doc


@dataclass(frozen=True, slots=True)
class Result:
    tree: str
    backend: str
    phase: str
    clients: int
    ops: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    def row(self) -> str:
        rate = self.ops / self.seconds if self.seconds else 0.0
        ordered = sorted(self.latencies_ms) or [0.0]
        p50 = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"| {self.tree:18} | {self.backend:10} | {self.phase:22} | {self.clients:7} "
            f"| {self.ops:6} | {self.errors:6} | {self.seconds:7.2f} | {rate:9.1f} "
            f"| {p50:7.1f} | {p99:7.1f} |"
        )


HEADER = (
    "| tree               | backend    | phase                  | clients |    ops | errors "
    "|       s |     ops/s | p50 ms  | p99 ms  |\n"
    "|--------------------|------------|------------------------|---------|--------|--------"
    "|---------|-----------|---------|---------|"
)


def policy(name: str, weight: int) -> dict[str, Any]:
    return policy_doc(
        name,
        [
            {"address": "127.0.20.1", "weight": weight, "group": "v1"},
            {"address": "127.0.20.2", "weight": 10, "group": "v2"},
        ],
        domain=f"{name}.bench.mesh.internal",
        labels={"team": "bench", "shard": name[-1]},
        ttl=5,
        slices=[{"id": "beta", "match": {"client_cidrs": ["10.8.0.0/16"]}, "groups": ["v2"]}],
    )


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    name = f"dnsmesh_bench_{os.getpid()}_{secrets.token_hex(3)}"
    libpq = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def controller(tree: Tree, url: str) -> Iterator[str]:
    """That tree's ``dnsmesh controller`` process; yields its base URL."""
    with ControllerProcess(url, tree.path, stop_timeout=15.0) as process:
        yield process.base_url


async def run_phase(
    tree: str,
    backend: str,
    phase: str,
    clients: int,
    max_ops: int,
    max_seconds: float,
    operation: Callable[[httpx.AsyncClient, int], Awaitable[bool]],
    client: httpx.AsyncClient,
) -> Result:
    counter = iter(range(max_ops))
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal errors
        for index in counter:
            if time.perf_counter() > deadline:
                return
            begun = time.perf_counter()
            ok = await operation(client, index)
            latencies.append((time.perf_counter() - begun) * 1000)
            if not ok:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(clients)))
    return Result(
        tree,
        backend,
        phase,
        clients,
        len(latencies),
        errors,
        time.perf_counter() - started,
        latencies,
    )


async def bench_backend(
    tree: str, backend: str, base: str, token: str, args: argparse.Namespace
) -> list[Result]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    results: list[Result] = []
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=30
    ) as client:
        n = args.policies

        async def put_create(c: httpx.AsyncClient, i: int) -> bool:
            name = f"p{i:05d}"
            return (await c.put(f"/v1/policies/{name}", json=policy(name, 50))).status_code == 201

        # How many the create phase made within its time bound (on a loaded machine, fewer
        # than n): the later phases work on those.
        created = n

        async def put_update(c: httpx.AsyncClient, i: int) -> bool:
            name = f"p{i % created:05d}"
            response = await c.put(f"/v1/policies/{name}", json=policy(name, 51 + i))
            return response.status_code == 200

        async def get_one(c: httpx.AsyncClient, i: int) -> bool:
            return (await c.get(f"/v1/policies/p{i % created:05d}")).status_code == 200

        async def get_list(c: httpx.AsyncClient, _i: int) -> bool:
            response = await c.get("/v1/policies")
            return response.status_code == 200 and len(response.json()["items"]) == created

        s = args.max_seconds
        results.append(
            await run_phase(
                tree, backend, f"PUT create ({n})", args.clients, n, 6 * s, put_create, client
            )
        )
        created = max(1, results[-1].ops - results[-1].errors)
        results.append(
            await run_phase(
                tree, backend, "PUT update", args.clients, args.ops, s, put_update, client
            )
        )
        results.append(
            await run_phase(
                tree, backend, "GET one", args.clients, args.ops * 2, s, get_one, client
            )
        )
        results.append(
            await run_phase(
                tree, backend, "GET list (all)", args.clients, args.list_ops, s, get_list, client
            )
        )
    return results


def bench(tree: Tree, backend: str, url: str, args: argparse.Namespace) -> list[Result]:
    token = tree.prepare(url)
    with controller(tree, url) as base:
        return asyncio.run(bench_backend(tree.label, backend, base, token, args))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        default=os.environ.get(
            "DNSMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL URL used to create (and drop) a scratch database",
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--clients", type=int, default=8, help="concurrent httpx clients")
    parser.add_argument("--policies", type=int, default=1000, help="policies to create and list")
    parser.add_argument("--ops", type=int, default=2000, help="max operations per update phase")
    parser.add_argument("--list-ops", type=int, default=200, help="max list requests")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="time bound per phase")
    parser.add_argument("--ref", help="also measure this commit's controller (e.g. c7a93a0)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"controller API bench: {os.cpu_count()} CPUs, {args.clients} clients, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dnsmesh-bench-") as tmp, trees(args.ref) as measured:
        for number, tree in enumerate(measured):
            if not args.no_sqlite:
                sqlite = f"sqlite:///{Path(tmp) / f'bench-{number}.db'}"
                results += bench(tree, "sqlite", sqlite, args)
            if not args.no_postgres:
                with postgres_database(args.database) as url:
                    results += bench(tree, "postgresql", url, args)
    print(HEADER)
    for result in results:
        print(result.row())
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
