"""The agent as one object: listeners, pipeline, upstreams, cache and reload, started and stopped.

Tests start it in-process on port 0; ``agent.app`` runs it as the ``dnsmesh agent`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence

from agent.cache import Cache
from agent.config import AgentConfig, HostPort
from agent.entry import QueryEntry
from agent.handlers.loopguard import LoopGuard
from agent.listeners import TcpConnection, TcpConnections, UdpListener, bind_pair
from agent.pipeline import Pipeline, build_pipeline
from agent.probes.monitor import HealthMonitor
from agent.reload import PolicyWatcher
from agent.resolvconf import is_self, upstreams_from_resolv_conf
from agent.served import ServedSnapshot
from agent.upstream import UpstreamClient
from dnsmesh.dnsforward import UpstreamAnswer
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields
from dnsmesh.snapshot import Snapshot

log = logging.getLogger(__name__)


class AgentServer:
    """``await start()``, ``await stop()``; ``addresses`` are the bound ones (port 0 resolved)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        down: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        """``down`` gives the mesh-wide down set (the controller's), empty without one."""
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.served = ServedSnapshot(down)
        self.cache: Cache[UpstreamAnswer] = Cache(
            config.cache_size, clock, max_ttl=config.max_ttl, max_stale=config.max_stale
        )
        self.upstream = UpstreamClient(
            attempt_timeout=config.attempt_timeout,
            query_timeout=config.query_timeout,
            down_base=config.down_base,
            down_max=config.down_max,
            max_ttl=config.max_ttl,
            clock=clock,
        )
        self.loop_guard = LoopGuard(self.upstream, config.attempt_timeout)
        self.pipeline: Pipeline = build_pipeline(
            self.served,
            self.cache,
            self.upstream,
            self.loop_guard,
            self.rng,
            stale_ttl=config.stale_ttl,
            stale_answer_after=config.stale_answer_after,
        )
        self.entry = QueryEntry(self.pipeline, config.max_inflight)
        self.tcp_connections = TcpConnections(config.tcp_max_connections)
        # Health decides the effective weights (ejections, mesh-wide down set, latency);
        # the holder above turns base and weights into what is answered.
        self.health = HealthMonitor(self.served, probing=config.probes, rng=self.rng)
        self.watcher: PolicyWatcher | None = None
        self.addresses: list[HostPort] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.Server] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def snapshot(self) -> Snapshot:
        return self.served.snapshot

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Serve this newly compiled policy set, with the weights health decides for it."""
        self.served.set_base(snapshot, self.health.weigh(snapshot))

    async def start(self) -> None:
        config = self.config
        if config.policies is not None:
            # A bad file at start is logged like a bad reload: the agent serves (forwards)
            # with no policies rather than leave the node without DNS.
            self.watcher = PolicyWatcher(
                config.policies, self.apply_snapshot, interval=config.reload_interval
            )
            self.watcher.load()
        for address in config.listen:
            try:
                await self._listen(address)
            except OSError as exc:
                await self._close_listeners()
                raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
        try:
            if config.upstreams is None:
                upstreams = upstreams_from_resolv_conf(config.resolv_conf, self.addresses)
            else:
                upstreams = self._without_self(config.upstreams)
                if config.upstreams and not upstreams:
                    raise ConfigError("every --upstream is this agent's own address")
        except ConfigError:
            await self._close_listeners()
            raise
        self._use_upstreams(upstreams)
        if self.watcher is not None:
            self.watcher.start()
        await self.health.start()
        log.info(
            "agent.started",
            extra=fields(
                listen=[str(a) for a in self.addresses],
                upstreams=[str(u) for u in upstreams],
                policies=len(self.served.snapshot),
            ),
        )

    async def _listen(self, address: HostPort) -> None:
        loop = asyncio.get_running_loop()
        udp, tcp = bind_pair(address)
        bound = HostPort(address.host, udp.getsockname()[1])
        self._transports.append(UdpListener(self.entry, udp, loop))
        config = self.config
        server = await loop.create_server(
            lambda: TcpConnection(
                self.entry,
                self.tcp_connections,
                config.tcp_idle_timeout,
                config.tcp_max_pipelined,
            ),
            sock=tcp,
            backlog=128,
        )
        self._servers.append(server)
        self.addresses.append(bound)
        log.info("agent.listening", extra=fields(address=str(bound), protocols="udp,tcp"))

    def _without_self(self, upstreams: Sequence[HostPort]) -> list[HostPort]:
        out = []
        for upstream in upstreams:
            if is_self(upstream, self.addresses):
                log.warning("upstream.skipped_self", extra=fields(upstream=str(upstream)))
            else:
                out.append(upstream)
        return out

    def set_upstreams(self, upstreams: Sequence[HostPort]) -> None:
        """Use these upstreams from now on (minus ourselves) and probe them for loops."""
        self._use_upstreams(self._without_self(upstreams))

    def _use_upstreams(self, upstreams: Sequence[HostPort]) -> None:
        self.upstream.set_upstreams(upstreams)
        if self.config.loop_check and upstreams:
            task = asyncio.get_running_loop().create_task(self.loop_guard.probe_all())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let in-flight queries finish (bounded), then close everything."""
        drain = self.config.drain_timeout if drain_timeout is None else drain_timeout
        self.entry.accepting = False
        for server in self._servers:
            server.close()  # no new TCP connections; open ones finish what they hold
        if self.watcher is not None:
            await self.watcher.stop()
        for conn in list(self.tcp_connections.open):
            conn.close("shutdown")
        await self.health.stop()
        left = await self.entry.drain(drain)
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.upstream.close()
        for conn in list(self.tcp_connections.open):
            if conn.transport is not None:
                conn.transport.abort()
        await self._close_listeners()
        health = self.health
        log.info(
            "agent.stopped",
            extra=fields(
                abandoned=left,
                probes=health.runner.probes_sent,
                health_recompiles=health.recompiles,
                fail_open=health.fail_open_total,
                **self.counts(),
            ),
        )

    async def _close_listeners(self) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._transports.clear()
        self._servers.clear()

    def counts(self) -> dict[str, int]:
        return dict(self.entry.counts)
