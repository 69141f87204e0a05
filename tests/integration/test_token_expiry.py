"""Tokens that expire (``ttl``), and the token commands: create --ttl, list, revoke.

The API side runs the app in-process on a database whose clock the test moves; the CLI and
the agents' stream run against the real controller process and the real clock (a token of
a couple of seconds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from controller.api import create_app
from controller.auth import TokenStore, token_digest
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database, iso
from tests.integration.controller_support import run_cli
from tests.integration.sync_support import migrated_sqlite, mint_tokens
from tests.support.controller import ControllerProcess
from tests.support.polling import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[TestClient, Clock, str]]:
    """The app on a fresh SQLite file whose clock the test moves, and an admin token."""
    engine = build_engine(migrated_sqlite(tmp_path / "db"))
    clock = Clock()
    db = Database(engine, clock=clock)
    try:
        admin = TokenStore(db).create("root", "admin", actor="test")[1]
        with TestClient(create_app(db)) as client:
            yield client, clock, admin
    finally:
        engine.dispose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_with_a_ttl_works_until_then_and_is_401_expired_after(
    clocked: tuple[TestClient, Clock, str],
) -> None:
    client, clock, admin = clocked
    created = client.post(
        "/v1/tokens", json={"name": "ci", "role": "viewer", "ttl": "1h"}, headers=_bearer(admin)
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["expires_at"] == iso(clock.now + timedelta(hours=1))
    secret = body["token"]
    assert client.get("/v1/policies", headers=_bearer(secret)).status_code == 200

    clock.now += timedelta(minutes=59, seconds=59)
    assert client.get("/v1/policies", headers=_bearer(secret)).status_code == 200
    clock.now += timedelta(seconds=1)
    expired = client.get("/v1/policies", headers=_bearer(secret))
    assert expired.status_code == 401
    assert expired.json()["error"]["message"] == "the token has expired"
    assert expired.headers["www-authenticate"].startswith("Bearer")
    # The token without a TTL is not touched by time.
    clock.now += timedelta(days=3650)
    listing = client.get("/v1/tokens", headers=_bearer(admin)).json()["items"]
    assert {t["name"]: t["expires_at"] for t in listing} == {
        "ci": body["expires_at"],
        "root": None,
    }


@pytest.mark.parametrize("ttl", ["1", "1y", "0h", "-1h", "1.5h", "h", 3600, "3651d", ""])
def test_a_bad_ttl_is_422_and_creates_nothing(
    clocked: tuple[TestClient, Clock, str], ttl: object
) -> None:
    client, _clock, admin = clocked
    refused = client.post(
        "/v1/tokens", json={"name": "ci", "role": "viewer", "ttl": ttl}, headers=_bearer(admin)
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["fields"][0]["path"] == "ttl"
    names = [t["name"] for t in client.get("/v1/tokens", headers=_bearer(admin)).json()["items"]]
    assert names == ["root"]


def test_revoked_and_expired_tokens_over_the_cli_and_the_real_controller(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path / "db")
    mint_tokens(url)
    made = run_cli("token", "create", "--database", url, "--role", "viewer", "--name", "ci",
                   "--ttl", "1h", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "expires 20" in made.stderr
    ci = made.stdout.strip()

    listed = run_cli("token", "list", "--database", url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert listed.stdout.split()[:6] == ["NAME", "ROLE", "PREFIX", "CREATED", "EXPIRES", "BY"]
    assert rows["ci"][1] == "viewer" and rows["ci"][2] == ci[:12]
    assert rows["ci"][4].startswith("20") and rows[f"admin-{os.getpid()}"][4] == "never"
    assert ci not in listed.stdout  # never the secrets

    bad = run_cli("token", "create", "--database", url, "--role", "viewer", "--name", "x",
                  "--ttl", "forever", cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 1 and "--ttl" in bad.stderr and "e.g. 1h" in bad.stderr
    assert " x " not in run_cli("token", "list", "--database", url, cwd=tmp_path).stdout

    with ControllerProcess(url, tmp_path) as controller:
        base = controller.base_url
        assert httpx.get(f"{base}/v1/policies", headers=_bearer(ci)).status_code == 200
        revoked = run_cli("token", "revoke", "--database", url, "ci", cwd=tmp_path)
        assert revoked.returncode == 0 and "revoked token 'ci'" in revoked.stderr
        after = httpx.get(f"{base}/v1/policies", headers=_bearer(ci))
        assert after.status_code == 401
        assert after.json()["error"]["message"] == "the token is unknown or revoked"
        again = run_cli("token", "revoke", "--database", url, "ci", cwd=tmp_path)
        assert again.returncode == 1 and "no token named 'ci'" in again.stderr

        # A short token: accepted on the agents' stream at first, refused once expired.
        short = run_cli("token", "create", "--database", url, "--role", "agent",
                        "--name", "brief", "--ttl", "3s", cwd=tmp_path)  # fmt: skip
        assert short.returncode == 0, short.stderr
        brief = short.stdout.strip()
        stream = base.replace("http://", "ws://") + "/v1/agents/stream"
        assert _stream_refusal(stream, brief) is None
        wait_until(
            lambda: _stream_refusal(stream, brief) is not None,
            timeout=10,
            what="the token expired",
        )
        assert _stream_refusal(stream, brief) == "the token has expired"
        rest = httpx.get(f"{base}/v1/changes", params={"since": 0}, headers=_bearer(brief))
        assert rest.status_code == 401
        assert rest.json()["error"]["message"] == "the token has expired"


def test_the_migration_keeps_existing_tokens_valid_until_revoked(tmp_path: Path) -> None:
    engine = build_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(engine, "0004")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO api_tokens (name, role, digest, prefix, created_at, created_by)"
                    " VALUES ('old', 'viewer', :digest, 'dnsm_old', '2026-01-01 00:00:00', 't')"
                ),
                {"digest": token_digest("dnsm_" + "o" * 43)},
            )
        upgrade(engine)
        store = TokenStore(Database(engine))
        principal = store.authenticate("dnsm_" + "o" * 43)
        assert principal is not None and principal.name == "old"
        assert principal.expires_at is None
        assert [t.expires_at for t in store.list()] == [None]
    finally:
        engine.dispose()


def _stream_refusal(url: str, token: str) -> str | None:
    """The message of a refused upgrade, or None when the stream was opened."""
    try:
        with connect(url, additional_headers=_bearer(token), open_timeout=5):
            pass
    except InvalidStatus as refused:
        assert refused.response.status_code == 401
        message: str = json.loads(refused.response.body or b"{}")["error"]["message"]
        return message
    return None
