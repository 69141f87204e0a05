"""Policy reads while PostgreSQL is unreachable: served stale from the push hub's copy.

A real ``dnsmesh controller`` process reaches PostgreSQL through a loopback TCP proxy the
test cuts (connections reset, new ones refused). An agent's poll starts the push hub; the
changes after it reach the hub's copy through its window (not a new snapshot), so the copy
read during the outage is the one agents are served.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.session import Database
from tests.integration.controller_support import policy_doc
from tests.support.controller import ControllerProcess
from tests.support.polling import wait_until
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

STALE = '110 - "stale: database unavailable"'


@pytest.fixture
def proxy(clean_postgres_url: str) -> Iterator[TcpProxy]:
    real = make_url(clean_postgres_url)
    relay = TcpProxy(real.host or "127.0.0.1", real.port or 5432).start()
    yield relay
    relay.stop()


@pytest.fixture
def controller(clean_postgres_url: str, proxy: TcpProxy, tmp_path: Path) -> Iterator[str]:
    via_proxy = (
        make_url(clean_postgres_url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )
    with ControllerProcess(via_proxy, tmp_path) as process:
        yield process.base_url


@pytest.fixture
def tokens(clean_postgres_url: str) -> dict[str, dict[str, str]]:
    engine = build_engine(clean_postgres_url)
    try:
        store = TokenStore(Database(engine))
        secrets = {
            role: store.create(f"{role}-t", role, actor="test")[1]
            for role in ("admin", "agent", "viewer")
        }
    finally:
        engine.dispose()
    return {role: {"Authorization": f"Bearer {s}"} for role, s in secrets.items()}


def test_policy_reads_are_served_stale_while_the_database_is_away(
    controller: str, proxy: TcpProxy, tokens: dict[str, dict[str, str]]
) -> None:
    admin, agent, viewer = tokens["admin"], tokens["agent"], tokens["viewer"]
    with httpx.Client(base_url=controller, timeout=10) as client:
        assert client.put("/v1/policies/a", json=policy_doc("a"), headers=admin).status_code == 201
        assert (
            client.put(
                "/v1/policies/c", json=policy_doc("c", domain="c.mesh.internal"), headers=admin
            ).status_code
            == 201
        )
        # An agent's first poll starts the hub: its snapshot is at revision 2.
        first = client.get("/v1/changes", params={"since": 0}, headers=agent)
        assert first.status_code == 200 and first.json()["revision"] == 2
        # Three more changes, which the hub learns as changes (its window), not a snapshot.
        client.put("/v1/policies/a", json=policy_doc("a", weight=40), headers=admin)
        labelled = policy_doc("b", domain="b.mesh.internal", labels={"team": "search"})
        client.put("/v1/policies/b", json=labelled, headers=admin)
        assert client.delete("/v1/policies/c", headers=admin).status_code == 200

        def hub_at_5() -> bool:
            delta = client.get("/v1/changes", params={"since": 2, "wait": 1}, headers=agent)
            return bool(delta.json()["type"] == "delta" and delta.json()["revision"] == 5)

        wait_until(hub_at_5, timeout=10, what="the hub at revision 5")
        fresh = client.get("/v1/policies", headers=viewer)
        assert fresh.status_code == 200 and "x-dnsmesh-stale" not in fresh.headers
        fresh_a = client.get("/v1/policies/a", headers=viewer)

        proxy.stop()  # PostgreSQL is now unreachable for the controller

        listing = client.get("/v1/policies", headers=viewer)
        assert listing.status_code == 200, listing.text
        assert listing.json() == fresh.json()  # exactly what the database said, at 5
        assert listing.headers["warning"] == STALE
        assert listing.headers["x-dnsmesh-stale"] == "true"
        assert listing.headers["x-dnsmesh-stale-revision"] == "5"
        one = client.get("/v1/policies/a", headers=agent)
        assert one.status_code == 200 and one.json() == fresh_a.json()
        assert one.headers["etag"] == fresh_a.headers["etag"] == '"3"'
        assert one.headers["x-dnsmesh-stale"] == "true"
        filtered = client.get("/v1/policies", params={"label": "team=search"}, headers=viewer)
        assert [p["metadata"]["name"] for p in filtered.json()["items"]] == ["b"]
        assert client.get("/v1/policies/c", headers=viewer).status_code == 404  # deleted at 5
        # Writes and every other read still say the database is away.
        write = client.put("/v1/policies/a", json=policy_doc("a", weight=7), headers=admin)
        assert write.status_code == 503 and write.json()["error"]["code"] == "database_unavailable"
        assert client.get("/v1/audit", headers=viewer).status_code == 503
        assert client.get("/readyz").status_code == 503
        # A token the controller never verified is not taken on trust.
        unknown = client.get("/v1/policies", headers={"Authorization": "Bearer dnsm_x"})
        assert unknown.status_code == 503

        proxy.start()
        back = client.get("/v1/policies", headers=viewer)
        assert back.status_code == 200 and "x-dnsmesh-stale" not in back.headers


def test_without_a_copy_policy_reads_are_still_503(
    controller: str, proxy: TcpProxy, tokens: dict[str, dict[str, str]]
) -> None:
    admin, viewer = tokens["admin"], tokens["viewer"]
    with httpx.Client(base_url=controller, timeout=10) as client:
        assert client.put("/v1/policies/a", json=policy_doc("a"), headers=admin).status_code == 201
        assert client.get("/v1/policies", headers=viewer).status_code == 200
        proxy.stop()  # no agent ever started the hub: there is no copy to serve
        for path in ("/v1/policies", "/v1/policies/a"):
            response = client.get(path, headers=viewer)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
