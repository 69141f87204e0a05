"""An agent driven by a controller: the AgentServer, its state folder, local files and sync.

Start order matters: the state file is read and swapped in before the listeners open, so
the first query after a restart is answered from the last applied policies even when the
controller is away; local files are then loaded beside them, shadowing any controller policy
they clash with (agent/sync/policy_sources.py);
only then does the sync client start talking to the controller. The sync stack
(httpx, websockets, and cryptography for an mTLS agent: ~0.3 s of imports) is imported only
then too, so the cold start to the first answer does without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import random
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from agent.answer_reports import AnswerReports
from agent.config import AgentConfig
from agent.gcwindow import build_without_collection
from agent.probes.scope import ProbeScope
from agent.server import AgentServer
from agent.sync.config import IDENTITY_FILE, SyncConfig
from agent.sync.policy_sources import LocalPolicyWatcher, PolicySources
from agent.sync.state_file import StateDir
from dnsmesh.drains import DrainSet
from dnsmesh.probing import Assignment
from dnsmesh.protocol import prepare_messages
from dnsmesh.snapshot import CompileContext

if TYPE_CHECKING:
    from agent.metrics.collector import SyncState
    from agent.sync.client import AgentSync


class SyncedAgent:
    """``await start()``, ``await stop()``; ``server`` is the DNS side, ``sync`` the channel."""

    def __init__(
        self, config: AgentConfig, sync: SyncConfig, *, rng: random.Random | None = None
    ) -> None:
        # Which endpoints it probes: the controller's assignment, once its id is known.
        self.scope = ProbeScope(self._probers, dict(sync.labels))
        # The server must not watch the files itself: every load is checked for clashes.
        self.server = AgentServer(
            dataclasses.replace(config, policies=None),
            down=self._mesh_down,
            sync_state=self._sync_state,
            drains=self._drains,
            scope=self.scope,
        )
        self.sources = PolicySources(
            self.server.apply_snapshot,
            self._local_changed,
            CompileContext(config.labels or sync.labels),
        )
        self.state_dir = StateDir(sync.state_dir)
        self.sync_config = sync
        self.rng = rng
        self.watcher = (
            LocalPolicyWatcher(config.policies, self.sources, interval=config.reload_interval)
            if config.policies is not None
            else None
        )
        self.sync: AgentSync | None = None

    def _mesh_down(self) -> frozenset[str]:
        """The controller's mesh-wide down set travels with each revision it sends."""
        return self.sources.running.down

    def _sync_state(self) -> SyncState | None:
        """For /metrics: the channel to the controller (None before the sync starts)."""
        if self.sync is None:
            return None
        from agent.metrics.collector import SyncState  # imported by the scrape already

        context = self.sync.context
        return SyncState(
            context.transport, context.last_ack_at, context.last_nack_at, context.nacks
        )

    def _drains(self) -> DrainSet:
        """So do the operators' drains."""
        return self.sources.running.drains

    def _probers(self) -> Assignment:
        """And who probes which endpoint."""
        return self.sources.running.probers

    def _local_changed(self) -> None:
        """A local reload took effect: the sync client reports what is shadowed now."""
        if self.sync is not None:
            self.sync.local_changed()

    async def start(self) -> None:
        self.state_dir.ensure()
        # A certificate (or a join token to get one) makes the node name the agent id, as
        # Credentials.agent_id says; known here without loading the certificate, which
        # needs cryptography, so that the first answer does not wait for it.
        mtls = (self.state_dir.path / IDENTITY_FILE).exists() or bool(self.sync_config.join_token)
        agent_id = self.sync_config.node_name if mtls else self.state_dir.agent_id()
        self.scope.agent_id = agent_id  # before the state file's assignment is planned
        # Built without the cyclic collector, as every snapshot (agent/gcwindow.py).
        state = build_without_collection(self.state_dir.load)  # logs which file, or why none
        if state is not None:
            build_without_collection(self.sources.start_from, state)
        if self.watcher is not None:
            self.watcher.load()
        await self.server.start()
        if self.watcher is not None:
            self.watcher.start()
        # Imported in a thread: answering has begun, and on the loop the imports (0.3 s,
        # seconds on a loaded machine) would hold every query that arrives meanwhile.
        await asyncio.to_thread(_import_sync_stack, mtls)
        from agent.sync.client import AgentSync
        from agent.sync.credentials import Credentials

        identity_file = None
        if mtls:
            from agent.sync.identity import IdentityFile

            identity_file = IdentityFile(self.state_dir.path)
        credentials = Credentials(self.sync_config, identity_file)
        self.sync = AgentSync(
            self.sync_config,
            self.sources,
            self.state_dir,
            agent_id,
            credentials=credentials,
            rng=self.rng,
            probe_report=self.server.health.report if self.server.config.probes else None,
            probe_report_interval=self.server.config.probe_report_interval,
            answer_reports=AnswerReports(self.server.served),
        )
        await self.sync.start()

    async def stop(self, drain_timeout: float | None = None, *, linger: float = 0.0) -> None:
        """The sync client (its close handshake with a hung controller may take seconds)
        and the local files stop side by side with the server, within its drain timeout."""
        parts: dict[str, Coroutine[Any, Any, None]] = {}
        if self.sync is not None:
            parts["sync"] = self.sync.stop()
        if self.watcher is not None:
            parts["local files"] = self.watcher.stop()
        await self.server.stop(drain_timeout, also=parts, linger=linger)


def _import_sync_stack(mtls: bool) -> None:
    """The modules the sync client needs, with httpx and websockets; cryptography only
    for an agent that speaks mTLS (a token agent never needs it). The messages' validators
    are built here too, off the loop (dnsmesh.protocol defers them)."""
    names = ["agent.sync.client", "agent.sync.credentials"]
    if mtls:
        names.append("agent.sync.identity")
    for name in names:
        importlib.import_module(name)
    prepare_messages()
