"""A write's outcome when the database connection drops: before COMMIT, during it, after.

A real ``dnsmesh controller`` process reaches PostgreSQL through a loopback proxy
(tests/support/tcp_proxy.py) that cuts the write's connection at an exact message:

- before COMMIT (at the revision bump): nothing landed, 503 ``database_unavailable``;
- at COMMIT, not delivered: nothing landed, but the controller cannot know that;
- at COMMIT, delivered and answered, the answer dropped: the write landed.

Both COMMIT cases are 503 ``commit_unknown`` naming the revision the write would have, and
a re-read tells them apart. A 2xx write is durable: it survives ``kill -9`` of the
controller right after the response.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.session import Database
from tests.integration.controller_support import policy_doc
from tests.support.controller import ControllerProcess
from tests.support.tcp_proxy import PG_COMMIT, TcpProxy

pytestmark = pytest.mark.postgres

# The statement every revision-taking write starts with (controller/repositories/revision.py),
# so the cut falls on the write's own COMMIT, not on that of the token check before it.
BUMP = b"UPDATE mesh_state"
CUT_WITHIN_S = 10.0


@pytest.fixture
def proxy(clean_postgres_url: str) -> Iterator[TcpProxy]:
    real = make_url(clean_postgres_url)
    relay = TcpProxy(real.host or "127.0.0.1", real.port or 5432).start()
    yield relay
    relay.stop()


def via(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


@pytest.fixture
def admin(clean_postgres_url: str) -> dict[str, str]:
    engine = build_engine(clean_postgres_url)
    try:
        secret = TokenStore(Database(engine)).create("admin-t", "admin", actor="test")[1]
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def client(clean_postgres_url: str, proxy: TcpProxy, tmp_path: Path) -> Iterator[httpx.Client]:
    with (
        ControllerProcess(via(clean_postgres_url, proxy), tmp_path) as process,
        httpx.Client(base_url=process.base_url, timeout=30) as http,
    ):
        yield http


def revision(client: httpx.Client) -> int:
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    value: int = ready.json()["revision"]
    return value


def cut_write(
    client: httpx.Client, proxy: TcpProxy, admin: dict[str, str], marker: bytes, *, deliver: bool
) -> httpx.Response:
    """PUT policy ``a`` (weight 40) with the write's connection cut at ``marker``."""
    done = proxy.cut_at(marker, deliver=deliver, after=BUMP)
    response = client.put("/v1/policies/a", json=policy_doc("a", weight=40), headers=admin)
    assert done.wait(CUT_WITHIN_S), "the proxy never saw the write's " + marker.decode()
    return response


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


def weight_of_a(client: httpx.Client, admin: dict[str, str]) -> int:
    stored = client.get("/v1/policies/a", headers=admin)
    assert stored.status_code == 200, stored.text
    weight: int = stored.json()["spec"]["endpoints"][0]["weight"]
    return weight


@pytest.fixture
def seeded(client: httpx.Client, admin: dict[str, str]) -> httpx.Client:
    assert client.put("/v1/policies/a", json=policy_doc("a"), headers=admin).status_code == 201
    assert revision(client) == 1
    return client


def test_a_drop_before_commit_is_unavailable_and_nothing_landed(
    seeded: httpx.Client, proxy: TcpProxy, admin: dict[str, str]
) -> None:
    response = cut_write(seeded, proxy, admin, BUMP, deliver=False)
    error_of(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "1"
    assert revision(seeded) == 1 and weight_of_a(seeded, admin) == 90


def test_a_commit_that_landed_unseen_is_commit_unknown_and_the_reread_shows_it(
    seeded: httpx.Client, proxy: TcpProxy, admin: dict[str, str]
) -> None:
    response = cut_write(seeded, proxy, admin, PG_COMMIT, deliver=True)
    # Before: 503 database_unavailable, "nothing was written", Retry-After: a change that
    # had landed, hidden behind an error that says it had not.
    error = error_of(response, 503, "commit_unknown")
    assert "may have landed" in error["message"] and "revision 2" in error["message"]
    assert response.headers["dnsmesh-unknown-revision"] == "2"
    assert "retry-after" not in response.headers  # a blind retry could write twice
    # The re-read says it landed: revision 2 is the PUT.
    assert revision(seeded) == 2 and weight_of_a(seeded, admin) == 40
    assert seeded.get("/v1/policies/a", headers=admin).headers["etag"] == '"2"'


def test_a_commit_that_never_arrived_is_commit_unknown_too_and_the_reread_shows_it(
    seeded: httpx.Client, proxy: TcpProxy, admin: dict[str, str]
) -> None:
    response = cut_write(seeded, proxy, admin, PG_COMMIT, deliver=False)
    # The controller cannot tell this from the case above: the same answer.
    error_of(response, 503, "commit_unknown")
    assert response.headers["dnsmesh-unknown-revision"] == "2"
    assert revision(seeded) == 1 and weight_of_a(seeded, admin) == 90
    # And the write can be made again, once, now that the re-read said it did not land.
    again = seeded.put("/v1/policies/a", json=policy_doc("a", weight=40), headers=admin)
    assert again.status_code == 200 and again.headers["etag"] == '"2"'


def test_a_2xx_write_survives_kill_9_right_after_the_response(
    clean_postgres_url: str, admin: dict[str, str], tmp_path: Path
) -> None:
    with ControllerProcess(clean_postgres_url, tmp_path) as process:
        assert process.process is not None
        with httpx.Client(base_url=process.base_url, timeout=30) as http:
            written = http.put("/v1/policies/a", json=policy_doc("a", weight=7), headers=admin)
            assert written.status_code == 201, written.text
            process.process.send_signal(signal.SIGKILL)  # no shutdown, no flush, nothing
            assert process.process.wait(timeout=10) == -signal.SIGKILL
    with (
        ControllerProcess(clean_postgres_url, tmp_path) as fresh,
        httpx.Client(base_url=fresh.base_url, timeout=30) as http,
    ):
        stored = http.get("/v1/policies/a", headers=admin)
        assert stored.status_code == 200, stored.text
        assert stored.headers["etag"] == written.headers["etag"] == '"1"'
        assert stored.json()["spec"]["endpoints"][0]["weight"] == 7
