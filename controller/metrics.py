"""The controller's Prometheus metrics: API requests, push convergence, agents, revision.

One registry per app (``create_app``), not prometheus_client's global one: a process (a
test run) holds several apps, and each must count only its own. A request costs a few
microseconds of locked counters here, nothing next to a database round trip, so
prometheus_client's own Counter and Histogram are used as they are (the agent, whose
queries take microseconds, counts in plain ints instead: agent/metrics/collector.py).

Labels are bounded: a request's route is its pattern (``/v1/policies/{name}``, never the
path asked for; ``unmatched`` for any path no route has), its status a number; agents are
counted by transport only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"
TRANSPORTS = ("websocket", "poll")
# Revisions whose commit time is remembered for the convergence histogram: an agent that
# ACKs one older than these is far behind for other reasons (it was away).
_REMEMBERED = 1024
# Commit to ACK: tens of milliseconds on a quiet mesh, seconds for a poller or a big set.
_PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "dnsmesh_controller_http_requests",
            "API requests by route pattern ('unmatched': no route) and status.",
            ["route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "dnsmesh_controller_http_request_duration_seconds",
            "API request latency by route pattern.",
            ["route"],
            registry=registry,
        )
        self.push_ack = Histogram(
            "dnsmesh_controller_push_ack_seconds",
            "From this replica learning of a committed revision to an agent's ACK of it.",
            buckets=_PUSH_BUCKETS,
            registry=registry,
        )
        self.nacks = Counter(
            "dnsmesh_controller_nacks", "Revisions agents refused (NACKs).", registry=registry
        )
        self.database_errors = Counter(
            "dnsmesh_controller_database_errors",
            "Database failures: an API request answered 503 (api), the push hub's catch-up "
            "(hub), a scrape's own read (metrics).",
            ["where"],
            registry=registry,
        )
        self.revision = Gauge(
            "dnsmesh_controller_revision", "The committed revision.", registry=registry
        )
        self.agents_connected = Gauge(
            "dnsmesh_controller_agents_connected",
            "Agents connected to this replica: WebSocket sessions open, pollers heard from "
            "within the stale time.",
            ["transport"],
            registry=registry,
        )
        self.endpoints_down = Gauge(
            "dnsmesh_controller_endpoints_down",
            "Endpoints in the mesh-wide down set (the quorum of agents' probes).",
            registry=registry,
        )
        self.share_drift = Gauge(
            "dnsmesh_controller_share_drift",
            "Total variation distance between the answers agents served and the intended "
            "weights over the last 300 s, per policy (0: as intended, 1: disjoint).",
            ["policy"],
            registry=registry,
        )
        for where in ("api", "hub", "metrics"):
            self.database_errors.labels(where)
        self._committed: OrderedDict[int, float] = OrderedDict()
        self._acked: dict[str, int] = {}  # agent id -> highest revision observed
        self._polled: dict[str, float] = {}  # polling agent id -> when last heard

    def watch_identity_refusals(self, counts: Callable[[], dict[str, int]]) -> None:
        """Export the refused agent identities by reason (controller/identity_refusals.py
        counts them, for the TLS layer too), read at scrape time."""
        self.registry.register(_IdentityRefusals(counts))

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def committed(self, revision: int) -> None:
        """The replica learned that ``revision`` is committed (its head moved to it)."""
        if revision not in self._committed:
            self._committed[revision] = time.monotonic()
            while len(self._committed) > _REMEMBERED:
                self._committed.popitem(last=False)

    def acked(self, agent_id: str, revision: int) -> None:
        """An agent runs ``revision``: its convergence is observed once per revision."""
        if revision <= self._acked.get(agent_id, 0):
            return
        self._acked[agent_id] = revision
        committed = self._committed.get(revision)
        if committed is not None:
            self.push_ack.observe(time.monotonic() - committed)

    def polled(self, agent_id: str) -> None:
        self._polled[agent_id] = time.monotonic()

    def count_agents(self, websocket: int, stale_after: float) -> None:
        """Set the connected gauge: ``websocket`` sessions, pollers heard within the time."""
        cutoff = time.monotonic() - stale_after
        for agent_id in [a for a, at in self._polled.items() if at < cutoff]:
            del self._polled[agent_id]
        self.agents_connected.labels("websocket").set(websocket)
        self.agents_connected.labels("poll").set(len(self._polled))


class _IdentityRefusals(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "dnsmesh_controller_identity_refusals",
            "Agent identities refused by reason: at the TLS handshake (other_ca, expired, "
            "bad_certificate) and at the routes (revoked, wrong_node, join tokens, ...).",
            labels=["reason"],
        )
        for reason, count in self.counts().items():
            family.add_metric([reason], count)
        yield family


class RequestMetrics:
    """ASGI middleware: every HTTP request counted by its route's pattern and status.

    The pattern is read from ``scope["route"]``, which Starlette's router sets on the
    request's scope when a route matches (also for a 405, a partial match). WebSocket
    sessions are not requests here: they are counted as connected agents.
    """

    def __init__(self, app: ASGIApp, metrics: ControllerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.request(_route(scope), status, time.perf_counter() - began)


def _route(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED
