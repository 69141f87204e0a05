"""End-to-end push helpers: a controller process and ``dnsmesh agent --controller`` processes.

Everything is real: the controller is ``dnsmesh controller`` on a SQLite file, the agent is
``dnsmesh agent`` (AgentProcess, JSON logs), DNS is asked with dnspython over loopback.
Upstreams are a free loopback port nobody serves, so nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.conftest import AgentProcess
from tests.integration.sync_support import (
    Controller,
    Rest,
    migrated_sqlite,
    mint_tokens,
    resolve,
    running_controller,
)
from tests.support.ports import free_port

# Quick reconnects and keepalive so that recovery shows within a second.
FAST_SYNC = (
    "--sync-backoff-base",
    "0.05",
    "--sync-backoff-cap",
    "0.5",
    "--sync-ping-interval",
    "0.5",
    "--sync-ping-timeout",
    "0.5",
)


@dataclass
class Mesh:
    """A controller, its admin REST client and the tokens; agents are started per test."""

    tmp: Path
    database_url: str
    controller: Controller
    rest: Rest
    tokens: dict[str, str]
    dead_upstream: int

    def agent_args(self, state: str = "state", *extra: str) -> list[str]:
        token_file = self.tmp / "agent-token"
        token_file.write_text(self.tokens["agent"] + "\n")
        return [
            "--controller",
            self.controller.url,
            "--token-file",
            str(token_file),
            "--state-dir",
            str(self.tmp / state),
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"127.0.0.1:{self.dead_upstream}",
            "--no-loop-check",
            "--query-timeout",
            "0.3",
            *FAST_SYNC,
            *extra,
        ]


@contextlib.contextmanager
def mesh(tmp: Path, *controller_args: str) -> Iterator[Mesh]:
    url = migrated_sqlite(tmp / "db")
    tokens = mint_tokens(url)
    with running_controller(url, tmp, extra=controller_args) as controller:
        rest = Rest(controller.url, tokens["admin"])
        try:
            yield Mesh(tmp, url, controller, rest, tokens, free_port())
        finally:
            rest.close()


@contextlib.contextmanager
def agent_process(args: list[str]) -> Iterator[AgentProcess]:
    process = AgentProcess(args)
    try:
        process.wait_event("agent.started")
        yield process
    finally:
        process.stop()


def ask(agent: AgentProcess, name: str, timeout: float = 1.0) -> list[str] | None:
    address = agent.addresses[0]
    return resolve(address.host, address.port, name, timeout)


def agent_id(agent: AgentProcess) -> str:
    connected: dict[str, Any] = agent.wait_event("sync.connected")[0]
    value: str = connected["agent_id"]
    return value
