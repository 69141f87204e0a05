"""PostgreSQL going away under the API: fast 503s, nothing half-written, recovery on its own.

The shared PostgreSQL server is never stopped: connections are killed with
pg_terminate_backend, and "unreachable" is a port where nothing listens or a TCP proxy
that the test stops and starts again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

from controller.api import create_app
from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.models import AuditRow, ChangeRow
from controller.db.session import Database
from controller.services.policies import PolicyService
from tests.integration.conftest import TestClient
from tests.integration.controller_support import (
    admin_postgres_url,
    policy_doc,
    terminate_backends,
)
from tests.support.ports import free_port
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

FAST_S = 5.0  # a 503 must come at least this quickly (connect timeout is 3 s)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def admin_secret(clean_postgres_url: str) -> str:
    engine = build_engine(clean_postgres_url)
    try:
        return TokenStore(Database(engine)).create("admin", "admin", actor="test")[1]
    finally:
        engine.dispose()


def _client(url: str) -> tuple[Any, Database]:
    db = Database(build_engine(url))
    return TestClient(create_app(db)), db


@pytest.fixture
def pg_api(
    clean_postgres_url: str, admin_secret: str
) -> Iterator[tuple[Any, Database, dict[str, str]]]:
    client, db = _client(clean_postgres_url)
    with client:
        yield client, db, {"Authorization": f"Bearer {admin_secret}"}
    db.engine.dispose()


def assert_unavailable(response: Any, started: float) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert "database" in response.json()["error"]["message"]
    assert response.headers["retry-after"] == "1"
    assert time.monotonic() - started < FAST_S


def test_requests_survive_terminated_connections(
    pg_api: tuple[Any, Database, dict[str, str]], clean_postgres_url: str
) -> None:
    client, _db, auth = pg_api
    for index in range(3):
        response = client.put(f"/v1/policies/p{index}", json=policy_doc(f"p{index}"), headers=auth)
        assert response.status_code == 201
    assert terminate_backends(clean_postgres_url) >= 1
    # pool_pre_ping finds the dead connections and replaces them: no request fails.
    assert client.get("/v1/policies", headers=auth).json()["revision"] == 3
    assert client.put("/v1/policies/p9", json=policy_doc("p9"), headers=auth).status_code == 201
    assert client.get("/readyz").status_code == 200


def test_connection_killed_mid_write_is_503_and_writes_nothing(
    pg_api: tuple[Any, Database, dict[str, str]],
) -> None:
    client, db, auth = pg_api
    assert client.post("/v1/policies", json=policy_doc("a"), headers=auth).status_code == 201
    armed = {"kill": True}

    # Kill this very connection just before the audit row, after the policy row and the
    # change log row were written in the same transaction.
    @event.listens_for(db.engine, "before_cursor_execute")
    def kill_before_audit(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if armed["kill"] and statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG"):
            armed["kill"] = False
            pid = conn.connection.dbapi_connection.info.backend_pid
            with psycopg.connect(_libpq(admin_postgres_url()), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    started = time.monotonic()
    response = client.post("/v1/policies", json=policy_doc("b"), headers=auth)
    assert_unavailable(response, started)
    assert not armed["kill"]
    event.remove(db.engine, "before_cursor_execute", kill_before_audit)

    store = PolicyService(db)
    assert store.current_revision() == 1
    assert [c.revision for c in store.changes_since(0)] == [1]
    assert db.read(lambda s: s.scalar(select(func.count()).select_from(ChangeRow))) == 1
    policy_audits = db.read(
        lambda s: s.scalar(select(func.count()).select_from(AuditRow).where(AuditRow.target == "b"))
    )
    assert policy_audits == 0
    assert client.get("/v1/policies/b", headers=auth).status_code == 404
    # The same request now succeeds, without restarting anything.
    assert client.post("/v1/policies", json=policy_doc("b"), headers=auth).status_code == 201
    assert store.current_revision() == 2


def test_unreachable_database_is_a_fast_503_in_the_error_shape(admin_secret: str) -> None:
    url = make_url(admin_postgres_url()).set(host="127.0.0.1", port=free_port())
    client, db = _client(url.render_as_string(hide_password=False))
    with client:
        assert client.get("/healthz").status_code == 200
        for path in ("/readyz", "/v1/policies", "/v1/audit"):
            started = time.monotonic()
            response = client.get(path, headers={"Authorization": f"Bearer {admin_secret}"})
            assert_unavailable(response, started)
        started = time.monotonic()
        response = client.put(
            "/v1/policies/a",
            json=policy_doc("a"),
            headers={"Authorization": f"Bearer {admin_secret}"},
        )
        assert_unavailable(response, started)
    db.engine.dispose()


def test_database_away_then_back_through_a_proxy(
    clean_postgres_url: str, admin_secret: str
) -> None:
    real = make_url(clean_postgres_url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432).start()
    try:
        via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        )
        client, db = _client(via_proxy)
        auth = {"Authorization": f"Bearer {admin_secret}"}
        with client:
            assert (
                client.put("/v1/policies/a", json=policy_doc("a"), headers=auth).status_code == 201
            )
            proxy.stop()
            for method, path in (("GET", "/v1/policies"), ("GET", "/readyz")):
                started = time.monotonic()
                assert_unavailable(client.request(method, path, headers=auth), started)
            started = time.monotonic()
            down = client.put("/v1/policies/a", json=policy_doc("a", weight=3), headers=auth)
            assert_unavailable(down, started)
            proxy.start()  # the same port: the controller's URL is unchanged
            assert client.get("/readyz").status_code == 200
            listing = client.get("/v1/policies", headers=auth).json()
            assert listing["revision"] == 1
            assert listing["items"][0]["spec"]["endpoints"][0]["weight"] == 90
            again = client.put("/v1/policies/a", json=policy_doc("a", weight=3), headers=auth)
            assert again.status_code == 200 and again.json()["metadata"]["revision"] == 2
        db.engine.dispose()
    finally:
        proxy.stop()
