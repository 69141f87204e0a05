"""``dnsmesh controller`` as a real process on loopback, driven with httpx."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.controller_support import policy_doc, run_cli, temporary_postgres_database
from tests.support.controller import ControllerProcess


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for a controller process to migrate (--migrate)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    with temporary_postgres_database("server") as url:
        yield url.replace("postgresql+psycopg://", "postgresql://")


def wait_healthy(client: httpx.Client) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("controller never became healthy")


def test_controller_process_serves_the_api(fresh_url: str, tmp_path: Path) -> None:
    with ControllerProcess(fresh_url, tmp_path, "--migrate") as controller:
        created = run_cli(
            "token",
            "create",
            "--database",
            fresh_url,
            "--role",
            "editor",
            "--name",
            "ed",
            cwd=tmp_path,
        )
        assert created.returncode == 0, created.stderr
        auth = {"Authorization": f"Bearer {created.stdout.strip()}"}
        with httpx.Client(base_url=controller.base_url, headers=auth, timeout=10) as client:
            wait_healthy(client)
            assert client.get("/readyz").json() == {"status": "ready", "revision": 0}
            put = client.put("/v1/policies/checkout", json=policy_doc("checkout"))
            assert put.status_code == 201 and put.headers["etag"] == '"1"'

            # Two editors race with the same If-Match over real connections: one wins.
            barrier = threading.Barrier(2)
            statuses: list[int] = []

            def edit(weight: int) -> None:
                with httpx.Client(base_url=controller.base_url, headers=auth, timeout=10) as c:
                    barrier.wait(timeout=10)
                    response = c.put(
                        "/v1/policies/checkout",
                        json=policy_doc("checkout", weight=weight),
                        headers={"If-Match": '"1"'},
                    )
                    statuses.append(response.status_code)

            threads = [threading.Thread(target=edit, args=(w,)) for w in (11, 22)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert sorted(statuses) == [200, 412]
            listing = client.get("/v1/policies?label=team=pay").json()
            assert listing["revision"] == 2
            assert listing["items"][0]["spec"]["endpoints"][0]["weight"] in (11, 22)
            unauthorised = httpx.get(f"{controller.base_url}/v1/policies", timeout=10)
            assert unauthorised.status_code == 401
            assert unauthorised.json()["error"]["code"] == "unauthorized"
        assert controller.process is not None
        controller.process.send_signal(signal.SIGTERM)
        assert controller.process.wait(timeout=15) == 0


def test_controller_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    with pytest.raises(AssertionError, match="is not migrated"), ControllerProcess(url, tmp_path):
        pass
