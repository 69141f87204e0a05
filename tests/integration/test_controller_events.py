"""GET /v1/events: revision events over server-sent events, from a real controller process.

The stream is read with httpx as the UI reads it with fetch(): the token in the
Authorization header. A write through the REST API (the change notification's in-process
path) must reach an open stream; the controller must still stop promptly with streams open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.api import create_app
from controller.api.events import revision_events
from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database
from controller.services.policies import PolicyService
from tests.integration.controller_support import temporary_postgres_database
from tests.integration.sync_support import (
    Controller,
    Rest,
    migrated_sqlite,
    mint_tokens,
    policy,
    running_controller,
)
from tests.support.controller import ControllerProcess

EVENT_TIMEOUT_S = 10.0  # a wake-up is milliseconds; this only bounds a broken run


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Controller, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("events")
    url = migrated_sqlite(tmp / "db")
    tokens = mint_tokens(url)
    with running_controller(url, tmp) as controller:
        yield controller, tokens


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, object]]]:
    """(event type, data) of each event of an SSE response, as they arrive."""
    kind, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data = line.partition(":")[2].strip()
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


@contextlib.contextmanager
def stream(base_url: str, token: str) -> Iterator[httpx.Response]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    timeout = httpx.Timeout(5.0, read=EVENT_TIMEOUT_S)
    with httpx.stream("GET", f"{base_url}/v1/events", headers=headers, timeout=timeout) as r:
        yield r


def test_a_write_reaches_an_open_stream(served: tuple[Controller, dict[str, str]]) -> None:
    controller, tokens = served
    rest = Rest(controller.url, tokens["admin"])
    try:
        with stream(controller.url, tokens["viewer"]) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "no-store" in response.headers["cache-control"]
            received = events(response)
            kind, data = next(received)
            assert kind == "revision"  # the revision now, at once: the UI knows it is live
            before = data["revision"]
            assert isinstance(before, int)
            written = rest.put(policy(f"events-{before}", ["127.0.0.1"]))
            kind, data = next(received)
            assert (kind, data) == ("revision", {"revision": written})
    finally:
        rest.close()


@pytest.mark.postgres
def test_a_write_through_another_replica_reaches_the_stream(tmp_path: Path) -> None:
    """Replica B polls the revision only every 30 s: an event within seconds of a write
    through replica A can only have come by LISTEN/NOTIFY."""
    with temporary_postgres_database("events") as url:
        engine = build_engine(url)
        try:
            upgrade(engine)
            store = TokenStore(Database(engine))
            viewer = store.create("viewer-token", "viewer", actor="test")[1]
            editor = store.create("editor-token", "editor", actor="test")[1]
        finally:
            engine.dispose()
        quiet = ("--catch-up-interval", "30")
        with (
            ControllerProcess(url, tmp_path, "--replica-id", "a", *quiet) as a,
            ControllerProcess(url, tmp_path, "--replica-id", "b", *quiet) as b,
            stream(b.base_url, viewer) as response,
        ):
            received = events(response)
            assert next(received) == ("revision", {"revision": 0})
            started = time.monotonic()
            written = Rest(a.base_url, editor)
            try:
                revision = written.put(policy("across", ["127.0.0.1"]))
            finally:
                written.close()
            assert next(received) == ("revision", {"revision": revision})
            assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), ("dnsm_not-a-token", 401), ("agent", 403)]
)
def test_a_stream_needs_an_operator_token_in_the_header(
    served: tuple[Controller, dict[str, str]], token: str | None, status: int
) -> None:
    controller, tokens = served
    secret = tokens.get(token or "", token)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    response = httpx.get(f"{controller.url}/v1/events", headers=headers, timeout=5.0)
    assert response.status_code == status
    assert response.json()["error"]["code"] == ("unauthorized" if status == 401 else "forbidden")


def test_a_token_in_the_url_is_not_accepted(served: tuple[Controller, dict[str, str]]) -> None:
    controller, tokens = served
    for query in (f"token={tokens['admin']}", f"access_token={tokens['admin']}"):
        response = httpx.get(f"{controller.url}/v1/events?{query}", timeout=5.0)
        assert response.status_code == 401


def test_the_controller_stops_promptly_with_a_stream_open(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path / "db")
    tokens = mint_tokens(url)
    controller = Controller(url, tmp_path).start()
    try:
        with stream(controller.url, tokens["viewer"]) as response:
            received = events(response)
            assert next(received)[0] == "revision"
            started = time.monotonic()
            process = controller.process
            assert process is not None and process.process is not None
            process.process.terminate()
            # The stream ends (the server closes it) instead of holding the shutdown.
            assert list(received) == []
            assert process.process.wait(timeout=10) == 0
            assert time.monotonic() - started < 5.0
    finally:
        controller.stop()


def test_a_stream_ends_once_its_token_is_no_longer_good(sqlite_url: str) -> None:
    """The generator behind the route, on a real hub: revisions as they commit, then a
    goodbye naming why once the token check fails (the route checks every 15 s)."""
    engine = build_engine(sqlite_url)
    db = Database(engine)
    app = create_app(db)
    hub = app.state.hub
    verdicts: list[str | None] = [None]

    async def still_allowed() -> str | None:
        return verdicts[-1]

    async def run() -> list[tuple[str | None, str]]:
        await hub.start()
        seen: list[tuple[str | None, str]] = []
        stream = revision_events(hub.feed, still_allowed, recheck_s=0.05)
        try:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                seen.append(_event(await anext(stream)))
                await asyncio.to_thread(
                    PolicyService(db).put_policy, "web", policy("web", ["127.0.0.1"]), actor="t"
                )
                seen.append(_event(await anext(stream)))
                verdicts.append("the token is unknown or revoked")
                seen.extend([_event(e) async for e in stream])
        finally:
            await hub.stop()
        return seen

    try:
        seen = asyncio.run(run())
    finally:
        engine.dispose()
    assert seen == [
        ("revision", '{"revision": 0}'),
        ("revision", '{"revision": 1}'),
        ("goodbye", '{"reason": "the token is unknown or revoked"}'),
    ]


def _event(event: object) -> tuple[str | None, str]:
    from sse_starlette import ServerSentEvent

    assert isinstance(event, ServerSentEvent)
    return event.event, str(event.data)
