"""What every sync channel shares: who the agent is, and applying and persisting updates.

The WebSocket and the polling transports each take one ``ChannelContext``; the reconnect
loop (agent/sync/client.py) owns it. Through all of it the agent keeps answering from its
last good snapshot: an update only ever swaps in a complete, valid one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from importlib import metadata

from agent.answer_reports import AnswerReports
from agent.gcwindow import build_without_collection
from agent.sync.config import SyncConfig
from agent.sync.credentials import Credentials
from agent.sync.incoming import release_documents
from agent.sync.policy_sources import Applied, Outcome, PolicySources, Refused, local_policies
from agent.sync.state_file import StateDir
from dnsmesh.logs import fields
from dnsmesh.protocol import AppliedState, Delta, Hello, Report, SnapshotMessage

log = logging.getLogger(__name__)


def software_version() -> str:
    try:
        return f"dnsmesh/{metadata.version('dnsmesh')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "dnsmesh/unknown"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Equal jitter: uniform(w/2, w) with the window w = min(cap, base * 2**attempt).

    Spreading reconnects over half the window or more (rather than base*2**n plus a little
    noise) is what stops a thousand agents from reconnecting in lockstep after a controller
    restart ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015); the lower half
    is left out so that the first retry after a close does not land in the same instant as
    the close, while the controller is still going away.
    """
    window = min(cap, base * 2 ** min(attempt, 32))
    return rng.uniform(window / 2, window)


class ChannelContext:
    """The agent's identity and policy sources, as the transports use them."""

    def __init__(
        self,
        config: SyncConfig,
        sources: PolicySources,
        state_dir: StateDir,
        agent_id: str,
        *,
        rng: random.Random,
        clock: Callable[[], float],
        probe_report: Callable[[], Report] | None,
        probe_report_interval: float,
        credentials: Credentials,
        answer_reports: AnswerReports | None = None,
    ) -> None:
        self.config = config
        self.credentials = credentials  # a certificate (mTLS) or the token
        self.sources = sources
        self.state_dir = state_dir
        self.agent_id = agent_id
        self.rng = rng
        self.clock = clock
        # Probe results for the controller (agent/probes/monitor.py), sent batched every
        # probe_report_interval on whichever channel is open.
        self.probe_report = probe_report
        self.probe_report_interval = probe_report_interval
        # Answers counted since the last report (served share), sent as often as probe
        # results, to controllers that accept them.
        self.answer_reports = answer_reports
        self.software = software_version()
        self.transport: str | None = None  # "websocket" | "poll" while connected
        self.connections = 0  # channels opened (a renewal must not open one)
        self.progress = False  # the current channel applied something (resets backoff)
        # For /metrics: wall-clock times of the last revision applied (and so ACKed) and
        # of the last one refused (NACKed), and how many were refused.
        self.last_ack_at: float | None = None
        self.last_nack_at: float | None = None
        self.nacks = 0
        self._save_lock = asyncio.Lock()
        # What the state file holds (the state loaded at start, then each one saved): on stop,
        # anything applied since is written before exit, so a stop that lands between a swap
        # and its write does not leave the disk behind what was answered.
        self.saved: AppliedState = sources.running

    async def apply(
        self, updates: Sequence[SnapshotMessage | Delta], transport: str
    ) -> list[Outcome]:
        began = time.perf_counter()
        mesh_before = self.sources.running.mesh_id
        # Parsing and compiling a big update is CPU work: in a thread, the loop keeps
        # answering queries between GIL switches (measured with 5,000 policies, one of them
        # changed: the loop's longest stall 60 ms inline -> ~35 ms). The swap is on the loop.
        # No collection runs meanwhile (agent/gcwindow.py): a full one would stall the loop.
        prepared = await asyncio.to_thread(build_without_collection, self.sources.prepare, updates)
        outcomes = self.sources.commit(prepared)
        applied = [o for o in outcomes if isinstance(o, Applied)]
        if applied:
            self.progress = True
            self.last_ack_at = time.time()
            log.info(
                "sync.applied",
                extra=fields(
                    revision=applied[-1].revision,
                    policies=len(self.sources.running.policies),
                    updates=len(updates),
                    transport=transport,
                    ms=round((time.perf_counter() - began) * 1000, 2),
                ),
            )
            mesh_now = self.sources.running.mesh_id
            if mesh_before is not None and mesh_now not in (None, mesh_before):
                log.warning(
                    "sync.mesh_changed",
                    extra=fields(
                        previous_mesh=mesh_before,
                        mesh=mesh_now,
                        revision=applied[-1].revision,
                        outcome="the state of the other mesh was replaced by a snapshot",
                    ),
                )
            await self.save()
        release_documents(updates)  # parsed: a big snapshot's are freed off the loop
        for outcome in outcomes:
            if isinstance(outcome, Refused):
                self.nacks += 1
                self.last_nack_at = time.time()
                log.warning(
                    "sync.nack",
                    extra=fields(
                        revision=outcome.revision,
                        reason=outcome.reason,
                        running=self.sources.running.revision,
                    ),
                )
        return outcomes

    async def save(self) -> None:
        """Persist what runs (off the loop: fsync must not stall DNS answers)."""
        async with self._save_lock:
            state = self.sources.running
            try:
                await asyncio.to_thread(self.state_dir.save, state)
                self.saved = state
            except OSError as exc:
                log.error(
                    "sync.state_write_failed",
                    extra=fields(file=str(self.state_dir.state_file), error=str(exc)),
                )

    def connected(self, transport: str, url: str) -> None:
        self.transport = transport
        self.connections += 1
        log.info(
            "sync.connected",
            extra=fields(
                transport=transport,
                url=url,
                agent_id=self.agent_id,
                revision=self.sources.running.revision,
                identity="certificate" if self.credentials.mtls else "token",
            ),
        )

    def hello(self) -> Hello:
        return Hello(
            agent_id=self.agent_id,
            node_name=self.config.node_name,
            labels=dict(self.config.labels),
            software=self.software,
            revision=self.sources.running.revision,
            local=local_policies(self.sources.local),
            shadowed=self.sources.shadowed,
            mesh_id=self.sources.running.mesh_id,
        )

    def nack_pause(self) -> float:
        """How long polling waits after a refusal that did not advance (no hot loop)."""
        return backoff_delay(3, self.config.backoff_base, 5.0, self.rng)

    def next_probe_report(self) -> Report | None:
        """The batched probe results to send now, or None when there is nothing to say."""
        if self.probe_report is None:
            return None
        report = self.probe_report()
        return report if report.endpoints else None
