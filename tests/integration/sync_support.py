"""Helpers for the push tests: a restartable controller process on a fixed port, tokens, REST.

The controller is the real ``dnsmesh controller`` (ControllerProcess) on a migrated SQLite
file; it keeps its port across restarts because agents are configured with its URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import httpx

from agent.config import AgentConfig, HostPort
from agent.sync.config import SyncConfig
from agent.sync.controlled_agent import SyncedAgent
from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database
from tests.integration.fakedns import LoopThread
from tests.support.controller import ControllerProcess
from tests.support.policies import policy_doc
from tests.support.ports import free_port

# Short keepalive and catch-up so that loss and recovery show within a second in tests.
FAST_CONTROLLER = ("--ping-interval", "0.5", "--catch-up-interval", "0.2")


def migrated_sqlite(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'dnsmesh.db'}"
    engine = build_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def mint_tokens(database_url: str) -> dict[str, str]:
    """One token per role, straight in the database (like ``dnsmesh token create``)."""
    engine = build_engine(database_url)
    try:
        store = TokenStore(Database(engine))
        return {
            role: store.create(f"{role}-{os.getpid()}", role, actor="test")[1]
            for role in ("admin", "agent", "viewer")
        }
    finally:
        engine.dispose()


class Controller:
    """``dnsmesh controller`` that a test can kill, pause, and start again on the same port."""

    def __init__(
        self, database_url: str, cwd: Path, port: int | None = None, extra: Sequence[str] = ()
    ) -> None:
        self.extra = tuple(extra)  # more `dnsmesh controller` flags
        self.database_url = database_url
        self.cwd = cwd
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: ControllerProcess | None = None

    def start(self) -> Controller:
        process = ControllerProcess(
            self.database_url,
            self.cwd,
            "--listen",
            f"127.0.0.1:{self.port}",
            *FAST_CONTROLLER,
            *self.extra,
        )
        process.__enter__()
        self.process = process
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.process is not None
        return self.process.process.pid

    def kill(self) -> None:
        """SIGKILL: no goodbye to the agents, like a crashed host."""
        if self.process is not None and self.process.process is not None:
            self.process.process.kill()
            self.process.process.wait(10)
            self.process.__exit__(None, None, None)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.__exit__(None, None, None)
        self.process = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP: the TCP connections stay open but nothing answers (a hung controller)."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)


@contextlib.contextmanager
def running_controller(
    database_url: str, cwd: Path, port: int | None = None, extra: Sequence[str] = ()
) -> Iterator[Controller]:
    controller = Controller(database_url, cwd, port, extra).start()
    try:
        yield controller
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(controller.pid, signal.SIGCONT)  # in case a test left it paused
        controller.stop()


class Rest:
    """The REST API with the admin token."""

    def __init__(self, url: str, token: str, ca_file: Path | None = None) -> None:
        verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
            verify=verify,
        )

    def close(self) -> None:
        self.http.close()

    def put(self, document: dict[str, Any], *, force: bool = False) -> int:
        """PUT a policy; returns the revision it was stored at.

        ``force``: even if a connected agent's local files define its name or domain.
        """
        name = document["metadata"]["name"]
        params = {"force": "true"} if force else {}
        response = self.http.put(f"/v1/policies/{name}", json=document, params=params)
        assert response.status_code in (200, 201), response.text
        revision: int = response.json()["metadata"]["revision"]
        return revision

    def delete(self, name: str) -> int:
        response = self.http.delete(f"/v1/policies/{name}")
        assert response.status_code == 200, response.text
        revision: int = response.json()["revision"]
        return revision

    def agents(self) -> list[dict[str, Any]]:
        response = self.http.get("/v1/agents")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        return next((a for a in self.agents() if a["agent_id"] == agent_id), None)


def policy(
    name: str, addresses: list[str], *, domain: str | None = None, answers: int = 1
) -> dict[str, Any]:
    """A policy answering with ``addresses``, equally weighted."""
    endpoints = [{"address": a, "weight": 1} for a in addresses]
    return policy_doc(name, endpoints, domain=domain, ttl=5, answers=answers)


def resolve(host: str, port: int, name: str, timeout: float = 1.0) -> list[str] | None:
    """The A records a DNS server gives for ``name`` (sorted), or None on no answer/REFUSED.

    NXDOMAIN/SERVFAIL (the name is not a policy and the upstream is a dead port) give [].
    """
    query = dns.message.make_query(name, "A")
    try:
        response = dns.query.udp(query, host, port=port, timeout=timeout)
    except (dns.exception.Timeout, OSError):
        return None
    return sorted(
        item.address
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.A
        for item in rrset
    )


class Synced:
    def __init__(self, agent: SyncedAgent, loop_thread: LoopThread) -> None:
        self.agent = agent
        self.loop_thread = loop_thread
        self.host = agent.server.addresses[0].host
        self.port = agent.server.addresses[0].port

    @property
    def agent_id(self) -> str:
        assert self.agent.sync is not None
        return self.agent.sync.agent_id

    @property
    def transport(self) -> str | None:
        assert self.agent.sync is not None
        return self.agent.sync.transport

    def resolve(self, name: str) -> list[str] | None:
        return resolve(self.host, self.port, name)


class SyncedAgents:
    """Starts SyncedAgents on the test loop with quick sync settings; ``stop_all`` after."""

    def __init__(self, loop_thread: LoopThread, tmp_path: Path) -> None:
        self.loop_thread = loop_thread
        self.tmp_path = tmp_path
        self.started: list[SyncedAgent] = []

    def start(
        self, controller: str, token: str, *, policies: Path | None = None, **sync: Any
    ) -> Synced:
        config = dataclasses.replace(
            AgentConfig(),
            listen=(HostPort("127.0.0.1", 0),),
            upstreams=(),
            resolv_conf=self.tmp_path / "no-resolv.conf",
            policies=policies,
            reload_interval=0.05,
            loop_check=False,
            drain_timeout=0.5,
            admin_listen=None,  # metrics are read from agent.server.metrics directly
        )
        settings: dict[str, Any] = {
            "controller": controller,
            "token": token,
            "state_dir": self.tmp_path / "state",
            "node_name": "test-node",
            "labels": {"zone": "t1"},
            "backoff_base": 0.05,
            "backoff_cap": 0.5,
            "fatal_retry": 0.3,
            "ping_interval": 0.3,
            "ping_timeout": 0.3,
            "open_timeout": 2.0,
            "ws_retry": 0.5,
            "poll_wait": 1.0,
            "report_interval": 1.0,
        }
        settings.update(sync)
        agent = SyncedAgent(config, SyncConfig(**settings))
        self.loop_thread.run(agent.start())
        self.started.append(agent)
        return Synced(agent, self.loop_thread)

    def stop(self, synced: Synced) -> None:
        """Stop one agent now (a restart: start another on the same state folder)."""
        self.started.remove(synced.agent)
        self.loop_thread.run(synced.agent.stop(0.2))

    def stop_all(self) -> None:
        for agent in self.started:
            self.loop_thread.run(agent.stop(0.2))
