"""Helpers for the controller tests: throwaway PostgreSQL databases, policies, the CLI."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from tests.support.policies import policy_doc as support_policy_doc

POSTGRES_ENV = "DNSMESH_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_postgres_url() -> str:
    return os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)


def _libpq(url: str) -> str:
    """A SQLAlchemy-style URL as libpq wants it (no +driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def temporary_postgres_database(purpose: str) -> Iterator[str]:
    """CREATE a uniquely named database, yield its URL, DROP it (even if tests failed)."""
    admin = admin_postgres_url()
    name = f"dnsmesh_test_{purpose}_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_backends(url: str) -> int:
    """pg_terminate_backend every other connection to ``url``'s database; returns how many."""
    database = make_url(url).database
    with psycopg.connect(_libpq(admin_postgres_url()), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


def policy_doc(
    name: str = "checkout",
    *,
    domain: str | None = None,
    labels: dict[str, str] | None = None,
    weight: int = 90,
) -> dict[str, Any]:
    """The controller tests' usual policy: two weighted groups and a ``beta`` slice."""
    return support_policy_doc(
        name,
        [
            {"address": "127.0.10.1", "weight": weight, "group": "v1"},
            {"address": "127.0.10.2", "weight": 10, "group": "v2"},
        ],
        domain=domain,
        labels=labels if labels is not None else {"team": "pay"},
        ttl=5,
        slices=[{"id": "beta", "match": {"client_cidrs": ["10.8.0.0/16"]}, "groups": ["v2"]}],
    )


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the real ``dnsmesh`` CLI in a subprocess (with a deadline)."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Api:
    """A TestClient on the controller app with one token per role."""

    def __init__(self, client: Any, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def request(self, method: str, path: str, role: str = "admin", **kwargs: Any) -> Any:
        headers = {**self.auth(role), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, role: str = "admin", **kwargs: Any) -> Any:
        return self.request("GET", path, role, **kwargs)

    def post(self, path: str, role: str = "admin", **kwargs: Any) -> Any:
        return self.request("POST", path, role, **kwargs)

    def put(self, path: str, role: str = "admin", **kwargs: Any) -> Any:
        return self.request("PUT", path, role, **kwargs)

    def delete(self, path: str, role: str = "admin", **kwargs: Any) -> Any:
        return self.request("DELETE", path, role, **kwargs)
