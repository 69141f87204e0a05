"""Benchmark of the controller's REST API: PUT writes/s, GET one and GET list of 1,000 reads/s.

Runs a real ``dnsmesh controller`` process (uvicorn) on loopback against PostgreSQL and
SQLite, with N concurrent httpx clients. Every phase is bounded in operations and seconds.
It creates its own PostgreSQL database (from the --database URL, used only to CREATE and
DROP it) and its own SQLite file, and removes both.

    python bench/controller_api.py --database postgresql://postgres@127.0.0.1:5432/postgres
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

from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database

# The repository root, so that ``python bench/<script>.py`` finds tests.support.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.controller import ControllerProcess
from tests.support.policies import policy_doc


@dataclass(frozen=True, slots=True)
class Result:
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
            f"| {self.backend:10} | {self.phase:22} | {self.clients:7} | {self.ops:6} "
            f"| {self.errors:6} | {self.seconds:7.2f} | {rate:9.1f} | {p50:7.1f} | {p99:7.1f} |"
        )


HEADER = (
    "| backend    | phase                  | clients |    ops | errors |       s |     ops/s "
    "| p50 ms  | p99 ms  |\n"
    "|------------|------------------------|---------|--------|--------|---------|-----------"
    "|---------|---------|"
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


def prepare(url: str) -> str:
    """Migrates the database and mints an admin token for the clients."""
    engine = build_engine(url)
    try:
        upgrade(engine)
        return TokenStore(Database(engine)).create("bench", "admin", actor="bench")[1]
    finally:
        engine.dispose()


@contextmanager
def controller(url: str, cwd: Path) -> Iterator[str]:
    """A ``dnsmesh controller`` process; yields its base URL (read from its listening log)."""
    with ControllerProcess(url, cwd, stop_timeout=15.0) as process:
        yield process.base_url


async def run_phase(
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
        backend, phase, clients, len(latencies), errors, time.perf_counter() - started, latencies
    )


async def bench_backend(
    backend: str, base: str, token: str, args: argparse.Namespace
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

        async def put_update(c: httpx.AsyncClient, i: int) -> bool:
            name = f"p{i % n:05d}"
            response = await c.put(f"/v1/policies/{name}", json=policy(name, 51 + i))
            return response.status_code == 200

        async def get_one(c: httpx.AsyncClient, i: int) -> bool:
            return (await c.get(f"/v1/policies/p{i % n:05d}")).status_code == 200

        async def get_list(c: httpx.AsyncClient, _i: int) -> bool:
            response = await c.get("/v1/policies")
            return response.status_code == 200 and len(response.json()["items"]) == n

        s = args.max_seconds
        results.append(
            await run_phase(
                backend, f"PUT create ({n})", args.clients, n, 6 * s, put_create, client
            )
        )
        results.append(
            await run_phase(backend, "PUT update", args.clients, args.ops, s, put_update, client)
        )
        results.append(
            await run_phase(backend, "GET one", args.clients, args.ops * 2, s, get_one, client)
        )
        results.append(
            await run_phase(
                backend, f"GET list ({n})", args.clients, args.list_ops, s, get_list, client
            )
        )
    return results


def bench(backend: str, url: str, workdir: Path, args: argparse.Namespace) -> list[Result]:
    token = prepare(url)
    with controller(url, workdir) as base:
        return asyncio.run(bench_backend(backend, base, token, args))


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
    args = parser.parse_args()

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dnsmesh-bench-") as tmp:
        workdir = Path(tmp)
        if not args.no_sqlite:
            results += bench("sqlite", f"sqlite:///{workdir / 'bench.db'}", workdir, args)
        if not args.no_postgres:
            with postgres_database(args.database) as url:
                results += bench("postgresql", url, workdir, args)
    print(HEADER)
    for result in results:
        print(result.row())
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
