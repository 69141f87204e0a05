"""Integration fixtures: a real agent and upstreams on loopback; real controller databases.

PostgreSQL: ``DNSMESH_TEST_POSTGRES_URL`` (default postgresql://postgres@127.0.0.1:5432/postgres)
is the maintenance database; each session CREATEs a uniquely named database, migrates it and
DROPs it at the end, so parallel runs never meet. SQLite: a migrated file copied per test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

from agent.config import AgentConfig, HostPort, parse_host_port, parse_upstream
from agent.server import AgentServer
from controller.api import create_app
from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database
from tests.integration.controller_support import Api, temporary_postgres_database
from tests.integration.fakedns import FakeUpstream, LoopThread
from tests.support.policies import policy_text

# Starlette's TestClient warns that it prefers httpx2 to httpx; httpx is what the project
# depends on, so the deprecation is noted here, once, instead of adding a second client.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
DNSMESH = str(Path(sys.executable).parent / "dnsmesh")


class FakeClock:
    """A clock tests move by hand, so TTL countdown needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def make_upstream(loop_thread: LoopThread) -> Iterator[Callable[..., FakeUpstream]]:
    started: list[FakeUpstream] = []

    def make(host: str = "127.0.0.1", port: int = 0) -> FakeUpstream:
        fake = FakeUpstream(loop_thread, host, port).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def upstream(make_upstream: Callable[..., FakeUpstream]) -> FakeUpstream:
    return make_upstream()


class RunningAgent:
    """An AgentServer running on the test loop; ``host``/``port`` is its first listener."""

    def __init__(self, server: AgentServer, loop_thread: LoopThread) -> None:
        self.server = server
        self.loop_thread = loop_thread
        self.host = server.addresses[0].host
        self.port = server.addresses[0].port

    def query(
        self,
        name: str,
        qtype: str = "A",
        *,
        tcp: bool = False,
        source: str | None = None,
        edns: bool = True,
        payload: int = 1232,
        timeout: float = 3.0,
    ) -> dns.message.Message:
        q = dns.message.make_query(name, qtype, use_edns=0 if edns else False, payload=payload)
        if tcp:
            return dns.query.tcp(q, self.host, timeout=timeout, port=self.port, source=source)
        return dns.query.udp(q, self.host, timeout=timeout, port=self.port, source=source)

    def call(self, fn: Callable[[], Any]) -> Any:
        return self.loop_thread.call(fn)


@pytest.fixture
def start_agent(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """``start_agent(upstreams=[fake], policies=path, **AgentConfig fields)``; stopped after."""
    running: list[AgentServer] = []

    def start(
        upstreams: list[FakeUpstream | str] | None = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> RunningAgent:
        ups = tuple(
            parse_upstream(u if isinstance(u, str) else u.address) for u in (upstreams or [])
        )
        fields: dict[str, Any] = {
            "listen": (HostPort("127.0.0.1", 0),),
            # Given a resolv.conf and no upstreams, the agent reads its upstreams from it.
            "upstreams": None if upstreams is None and "resolv_conf" in overrides else ups,
            "resolv_conf": tmp_path / "no-resolv.conf",
            "attempt_timeout": 0.4,
            "query_timeout": 1.0,
            "down_base": 0.5,
            "loop_check": False,
            "drain_timeout": 1.0,
            "reload_interval": 0.1,
            "admin_listen": None,  # a test that wants one asks (127.0.0.1 port 0)
        }
        fields.update(overrides)
        config = dataclasses.replace(AgentConfig(), **fields)
        server = AgentServer(config, clock=clock) if clock else AgentServer(config)
        loop_thread.run(server.start())
        running.append(server)
        return RunningAgent(server, loop_thread)

    yield start
    for server in running:
        loop_thread.run(server.stop(0.5))


# -- policies -------------------------------------------------------------------------------


def policy_yaml(
    name: str,
    domain: str,
    endpoints: list[dict[str, Any]],
    *,
    strategy: str = "weighted",
    ttl: int = 5,
    answers: int = 1,
    slices: list[dict[str, Any]] | None = None,
) -> str:
    """A policy file's text with every field this folder's tests rely on spelled out."""
    extra: dict[str, Any] = {"slices": slices} if slices else {}
    return policy_text(
        name, endpoints, domain=domain, ttl=ttl, strategy=strategy, answers=answers, **extra
    )


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- subprocess agents ----------------------------------------------------------------------


class AgentProcess:
    """A real ``dnsmesh agent`` process with JSON logs collected from stderr."""

    def __init__(self, args: list[str], prefix: tuple[str, ...] = ()) -> None:
        """``prefix`` runs it through another command (``ip netns exec NS``)."""
        # Its own admin port (a later --admin-listen in args wins): never 9153 shared.
        self.args = [
            *prefix,
            DNSMESH,
            "agent",
            "--log-format",
            "json",
            "--admin-listen",
            "127.0.0.1:0",
            *args,
        ]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.logs: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.raw.append(line)
                with contextlib.suppress(ValueError):
                    self.logs.append(json.loads(line))

    def events(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [entry for entry in self.logs if entry.get("event") == event]

    def wait_event(self, event: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(event)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} in time; stderr:\n{''.join(self.raw)}")

    @property
    def addresses(self) -> list[HostPort]:
        return [parse_host_port(e["address"]) for e in self.events("agent.listening")]

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


@pytest.fixture
def spawn_agent() -> Iterator[Callable[..., AgentProcess]]:
    """``spawn_agent(*flags)`` starts ``dnsmesh agent`` and waits until it has started."""
    procs: list[AgentProcess] = []

    def spawn(*args: str, wait: bool = True) -> AgentProcess:
        proc = AgentProcess(list(args))
        procs.append(proc)
        if wait:
            proc.wait_event("agent.started")
        return proc

    yield spawn
    for proc in procs:
        proc.stop()


# -- controller databases ------------------------------------------------------------------

CONTROLLER_TABLES = (
    "policies",
    "changes",
    "audit_log",
    "api_tokens",
    "agents",
    "endpoint_health",
    "endpoint_reports",
    "endpoints_down",
    "agent_certificates",
    "endpoint_drains",
    "answer_buckets",
    "rollouts",
    "slice_scales",
    "probe_assignments",
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database for this test session (dropped afterwards)."""
    with temporary_postgres_database("session") as url:
        engine = build_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("controller-template") / "dnsmesh.db"
    engine = build_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
        with engine.connect() as connection:  # fold the WAL into the file before copying it
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return path


def reset_postgres(url: str) -> None:
    """Empty the session database between tests (cheaper than a database per test)."""
    engine = build_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {', '.join(CONTROLLER_TABLES)} RESTART IDENTITY"))
            connection.execute(text("UPDATE mesh_state SET revision = 0 WHERE id = 1"))
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "dnsmesh.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def clean_postgres_url(postgres_url: str) -> str:
    reset_postgres(postgres_url)
    return postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty controller database on each backend."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("clean_postgres_url")
    return url


@pytest.fixture
def controller_db(database_url: str) -> Iterator[Database]:
    engine = build_engine(database_url)
    try:
        yield Database(engine)
    finally:
        engine.dispose()


@pytest.fixture
def api(controller_db: Database) -> Iterator[Api]:
    """The controller app in a TestClient (ASGI, no socket), with a token for every role."""
    tokens = TokenStore(controller_db)
    secrets = {
        role: tokens.create(f"{role}-token", role, actor="test")[1]
        for role in ("admin", "editor", "viewer", "agent")
    }
    with TestClient(create_app(controller_db)) as client:
        yield Api(client, secrets)
