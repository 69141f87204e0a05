"""The agent as one object: listeners, pipeline, upstreams, cache and reload, started and stopped.

Tests start it in-process on port 0; ``agent.app`` runs it as the ``dnsmesh agent`` process.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.cache import Cache
from agent.config import AgentConfig, HostPort, UpstreamAddress
from agent.cookie_secret import CookieSecretWatcher
from agent.entry import QueryEntry
from agent.explain import explain_here
from agent.frontdoor import build_acl, build_limiter
from agent.handlers.loopguard import LoopGuard
from agent.handoff import Listener
from agent.listeners import (
    TcpConnection,
    TcpConnections,
    UdpListener,
    bind_pair,
    set_receive_buffer,
)
from agent.logged_entry import make_entry
from agent.pipeline import Pipeline, build_pipeline
from agent.probes.monitor import HealthMonitor
from agent.probes.scope import EVERYTHING, ProbeScope
from agent.reload import PolicyWatcher
from agent.resolvconf import is_self, upstreams_from_resolv_conf
from agent.served import ServedSnapshot
from agent.shutdown import CANCEL_GRACE, finish_by
from agent.upstream import UpstreamClient
from dnsmesh.admission import ClientAcl
from dnsmesh.cookies import SECRET_LEN, ClientCookies, ServerCookies
from dnsmesh.dnsforward import UpstreamAnswer
from dnsmesh.drains import NO_DRAINS, DrainSet
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields
from dnsmesh.snapshot import CompileContext, Snapshot

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from agent.metrics.admin import AdminListener
    from agent.metrics.collector import SyncState
    from agent.querylog import QueryLog

log = logging.getLogger(__name__)

# Bind errors that mean "this address cannot exist here" (no IPv6 on the host, an address
# not configured on any interface): such a --listen is skipped. Anything else (in use,
# permission) fails the start loudly.
_ADDRESS_UNAVAILABLE = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})


class AgentServer:
    """``await start()``, ``await stop()``; ``addresses`` are the bound ones (port 0 resolved)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        down: Callable[[], frozenset[str]] = frozenset,
        sync_state: Callable[[], SyncState | None] | None = None,
        drains: Callable[[], DrainSet] = lambda: NO_DRAINS,
        scope: ProbeScope = EVERYTHING,
    ) -> None:
        """``scope``: which endpoints this agent probes (the controller's assignment).
        ``down`` gives the mesh-wide down set and ``drains`` the operators' drains (the
        controller's), empty without one; ``sync_state`` what the sync client knows, for a
        controlled agent's metrics."""
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.served = ServedSnapshot(down, drains)
        self.cache: Cache[UpstreamAnswer] = Cache(
            config.cache_size, clock, max_ttl=config.max_ttl, max_stale=config.max_stale
        )
        self.upstream = UpstreamClient(
            attempt_timeout=config.attempt_timeout,
            query_timeout=config.query_timeout,
            down_base=config.down_base,
            down_max=config.down_max,
            max_ttl=config.max_ttl,
            upstream_ca=config.upstream_ca,
            idle_timeout=config.upstream_idle_timeout,
            cookies=ClientCookies(secrets.token_bytes(SECRET_LEN))
            if config.upstream_cookies
            else None,
            socket_mark=config.socket_mark,
            clock=clock,
        )
        self.loop_guard = LoopGuard(self.upstream, config.attempt_timeout)
        # With --query-log, the logging entry and pipeline; chosen here, not per query.
        self.query_log: QueryLog | None = None
        if config.query_log is not None:
            from agent.querylog import QueryLog  # here: its formatting is not needed without

            self.query_log = QueryLog(config.query_log)
        self.pipeline: Pipeline = build_pipeline(
            self.served,
            self.cache,
            self.upstream,
            self.loop_guard,
            self.rng,
            stale_ttl=config.stale_ttl,
            stale_answer_after=config.stale_answer_after,
            keep_decisions=self.query_log is not None,
        )
        cookies = ServerCookies(config.cookie_secret or secrets.token_bytes(SECRET_LEN))
        self.cookie_secret: CookieSecretWatcher | None = None
        if config.cookie_secret_file is not None:
            self.cookie_secret = CookieSecretWatcher(
                config.cookie_secret_file, cookies, interval=config.reload_interval
            )
        self.entry: QueryEntry = make_entry(
            self.pipeline,
            self.query_log,
            config.max_inflight,
            acl=build_acl(config),
            refuse_drop=config.refuse_drop,
            limiter=build_limiter(config),
            amplification_factor=config.amplification_factor,
            amplification_exempt=ClientAcl(config.amplification_exempt),
            trust_ecs=ClientAcl(config.trust_ecs_from),
            cookies=cookies,
            clock=clock,
        )
        self.tcp_connections = TcpConnections(config.tcp_max_connections)
        # Health decides the effective weights (ejections, mesh-wide down set, latency);
        # the holder above turns base and weights into what is answered.
        self.health = HealthMonitor(self.served, probing=config.probes, rng=self.rng, scope=scope)
        self.watcher: PolicyWatcher | None = None
        # Ready only once policies are served, when there are any to wait for.
        self.expects_policies = config.policies is not None or sync_state is not None
        self._sync_state = sync_state
        self._metrics: CollectorRegistry | None = None
        self.admin: AdminListener | None = None
        self.addresses: list[HostPort] = []
        # Sockets a predecessor handed over (agent/handoff.py), taken instead of binding.
        self.passed: Callable[[HostPort], tuple[socket.socket, socket.socket] | None] = (
            lambda _address: None
        )
        self._listeners: list[Listener] = []
        self._udp: list[UdpListener] = []
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
        if self.query_log is not None:
            self.query_log.start()  # a path that cannot be written stops the start here
        if config.policies is not None:
            # A bad file at start is logged like a bad reload: the agent serves (forwards)
            # with no policies rather than leave the node without DNS.
            self.watcher = PolicyWatcher(
                config.policies,
                self.apply_snapshot,
                interval=config.reload_interval,
                context=CompileContext(config.labels),
            )
            self.watcher.load()
        skipped: list[str] = []
        for address in config.listen:
            try:
                await self._listen(address)
            except OSError as exc:
                reason = f"{address}: {exc.strerror or exc}"
                if exc.errno in _ADDRESS_UNAVAILABLE:
                    # No IPv6 on this host (or the address is not configured here): serve
                    # on the others rather than exit, which Restart=always would turn into
                    # a restart loop that leaves the node without DNS.
                    log.warning(
                        "agent.listen_skipped", extra=fields(address=str(address), error=reason)
                    )
                    skipped.append(reason)
                    continue
                await self._close_listeners()
                raise ConfigError(f"cannot listen on {reason}") from exc
        if not self.addresses:
            raise ConfigError("cannot listen on any --listen address: " + "; ".join(skipped))
        upstreams: Sequence[UpstreamAddress]
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
        if self.cookie_secret is not None:
            self.cookie_secret.start()
        await self.health.start()
        await self._start_admin()
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
        udp, tcp = self.passed(address) or bind_pair(address)
        config = self.config
        try:
            rcvbuf = set_receive_buffer(udp, config.udp_rcvbuf)
        except OSError:
            udp.close()
            tcp.close()
            raise
        bound = HostPort(address.host, udp.getsockname()[1])
        self._udp.append(UdpListener(self.entry, udp, loop))
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
        self._listeners.append(Listener(bound, udp, tcp))
        log.info(
            "agent.listening",
            extra=fields(address=str(bound), protocols="udp,tcp", udp_rcvbuf=rcvbuf),
        )
        if rcvbuf < config.udp_rcvbuf:  # Linux grants double what it is asked when it can
            log.warning(
                "agent.udp_rcvbuf_capped",
                extra=fields(
                    address=str(bound),
                    requested=config.udp_rcvbuf,
                    granted=rcvbuf,
                    hint="raise net.core.rmem_max or give the agent CAP_NET_ADMIN",
                ),
            )

    @property
    def metrics(self) -> CollectorRegistry:
        """The registry /metrics reads, made on first use: prometheus_client (and the
        collector) are imported when the admin listener starts, after the DNS listeners,
        so they cost nothing before the first answer nor on an agent without one."""
        if self._metrics is None:
            from prometheus_client.registry import CollectorRegistry

            from agent.metrics.collector import AgentCollector

            self._metrics = CollectorRegistry(auto_describe=False)
            self._metrics.register(AgentCollector(self, self._sync_state))
        return self._metrics

    async def _start_admin(self) -> None:
        """The admin listener, if configured. One that cannot bind is logged and left out:
        metrics are not worth leaving the node without DNS (a restart loop would)."""
        if self.config.admin_listen is None:
            return
        # Imported in a thread: the DNS listeners are answering, and prometheus_client
        # and h11 imported on the loop would hold their queries meanwhile.
        await asyncio.to_thread(_import_admin)
        from agent.metrics.admin import AdminListener

        admin = AdminListener(self.config.admin_listen, self.metrics, self.readiness, self.explain)
        try:
            await admin.start()
        except OSError as exc:
            log.error(
                "agent.admin_listen_failed",
                extra=fields(address=str(self.config.admin_listen), error=str(exc)),
            )
            return
        self.admin = admin

    def explain(self, name: str | None, client: str | None) -> dict[str, Any]:
        """The admin ``/explain``: what ``client`` gets from ``name`` as served now."""
        return explain_here(self.served, self.health, name, client)

    def readiness(self) -> str | None:
        """None when ready to answer (/readyz): a DNS listener bound and, when policies are
        expected (files or a controller), a policy set loaded; else why not."""
        if not self.entry.accepting:
            return "stopping"
        if not self.addresses:
            return "no DNS listener bound"
        if self.expects_policies and self.served.base_since is None:
            return "no policy set loaded yet"
        return None

    def listeners(self) -> list[Listener]:
        """The listening sockets, to hand to a successor."""
        return list(self._listeners)

    def _without_self(self, upstreams: Sequence[UpstreamAddress]) -> list[UpstreamAddress]:
        out = []
        for upstream in upstreams:
            # Only a plain upstream can be one of our listeners: we serve no TLS nor HTTPS.
            if isinstance(upstream, HostPort) and is_self(upstream, self.addresses):
                log.warning("upstream.skipped_self", extra=fields(upstream=str(upstream)))
            else:
                out.append(upstream)
        return out

    def set_upstreams(self, upstreams: Sequence[UpstreamAddress]) -> None:
        """Use these upstreams from now on (minus ourselves) and probe them for loops."""
        self._use_upstreams(self._without_self(upstreams))

    def _use_upstreams(self, upstreams: Sequence[UpstreamAddress]) -> None:
        self.upstream.set_upstreams(upstreams)
        if self.config.loop_check and upstreams:
            task = asyncio.get_running_loop().create_task(self.loop_guard.probe_all())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop(
        self,
        drain_timeout: float | None = None,
        *,
        also: Mapping[str, Coroutine[Any, Any, Any]] | None = None,
        linger: float = 0.0,
    ) -> None:
        """Stop accepting at once, let in-flight queries finish until the drain deadline,
        then close everything: the whole stop ends within the drain timeout (plus a short
        cancellation grace), whatever it holds. ``also`` are more parts to stop within the
        same deadline (a controlled agent's sync client and local files).

        ``linger`` (a hand-off): open TCP connections are still read and answered until
        each is quiet that long, rather than closed at once, so a query a client sent just
        before is answered, not reset; new connections go to the successor meanwhile."""
        loop = asyncio.get_running_loop()
        drain = self.config.drain_timeout if drain_timeout is None else drain_timeout
        deadline = loop.time() + drain
        self.entry.accepting = False
        for udp in self._udp:
            udp.stop_reading()
        for server in self._servers:
            server.close()  # no new TCP connections; open ones finish what they hold
        for conn in list(self.tcp_connections.open):
            if linger > 0:
                conn.linger(linger)
            else:
                conn.close("shutdown")
        for task in list(self._background):
            task.cancel()  # loop checks: nothing to wait for
        parts: dict[str, Coroutine[Any, Any, Any]] = {"health": self.health.stop()}
        if linger > 0:
            parts["tcp connections"] = self.tcp_connections.closed()
        if self.watcher is not None:
            parts["policy files"] = self.watcher.stop()
        if self.cookie_secret is not None:
            parts["cookie secret"] = self.cookie_secret.stop()
        parts.update(also or {})
        others = loop.create_task(finish_by(deadline, parts))
        # The forwards get the whole budget; entry.drain cancels what is left at its end
        # and waits for the cancelled ones, which is bounded here too.
        drained = loop.create_task(self.entry.drain(drain))
        await asyncio.wait([drained], timeout=drain + CANCEL_GRACE)
        abandoned = drained.result() if drained.done() else len(self.entry.tasks)
        stuck = await others
        if not drained.done():
            stuck.append("forwards")
        await self.upstream.close()
        self.tcp_connections.abort_all()
        await self._close_listeners()
        if self.query_log is not None:  # after the listeners: the last answers are logged
            await asyncio.to_thread(self.query_log.stop, CANCEL_GRACE)
        if self.admin is not None:
            await self.admin.stop()
        health = self.health
        log.info(
            "agent.stopped",
            extra=fields(
                abandoned=abandoned,
                stuck=stuck,
                probes=health.runner.probes_sent,
                health_recompiles=health.recompiles,
                fail_open=health.fail_open_total,
                cookies_valid=self.entry.cookie_counts["valid"],
                badcookie=self.entry.cookie_counts["badcookie"],
                **self.counts(),
            ),
        )

    async def _close_listeners(self) -> None:
        for udp in self._udp:
            udp.close()
        for server in self._servers:
            server.close()
        if self._servers:
            # Every connection is aborted by now, so this is quick; bounded all the same,
            # and for all servers at once rather than one after another.
            waits = [asyncio.ensure_future(server.wait_closed()) for server in self._servers]
            await asyncio.wait(waits, timeout=CANCEL_GRACE)
            for wait in waits:
                wait.cancel()
        self._udp.clear()
        self._servers.clear()
        self._listeners.clear()

    def counts(self) -> dict[str, int]:
        return self.entry.totals()


def _import_admin() -> None:
    """The admin listener's modules: prometheus_client, h11 and the collector."""
    for name in ("agent.metrics.admin", "agent.metrics.collector"):
        importlib.import_module(name)
