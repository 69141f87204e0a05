"""The agent's metrics, read from its own counters when ``/metrics`` is scraped.

A custom prometheus_client Collector rather than prometheus_client's Counter objects: those
take a lock per increment, and the query path already counts in plain ints (agent/tally.py,
the pickers in dnsmesh/snapshot.py, the cache, the upstream client, health). This turns
those ints into samples, on the event loop's thread (agent/metrics/admin.py), so nothing is
read while a query is half counted.

Every label value comes from a bounded set: the sources, query types and RCODEs of
agent/tally.py, the configured upstreams, and the policies, slices and endpoints of the
snapshot being served. None comes from a query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.tally import QTYPE_LABELS, RCODE_LABELS, bucket_bounds, cumulative_buckets

if TYPE_CHECKING:
    from agent.server import AgentServer

_BOUNDS = [repr(bound) for bound in bucket_bounds()] + ["+Inf"]
TRANSPORTS = ("websocket", "poll")


@dataclass(frozen=True, slots=True)
class SyncState:
    """What the sync client knows of the controller, for a controlled agent."""

    transport: str | None  # "websocket" | "poll" while connected, else None
    last_ack_at: float | None  # wall-clock time of the last revision applied (ACKed)
    last_nack_at: float | None
    nacks: int


class AgentCollector(Collector):
    """The samples of one AgentServer (and its sync client, given ``sync``)."""

    def __init__(
        self,
        server: AgentServer,
        sync: Callable[[], SyncState | None] | None = None,
    ) -> None:
        self.server = server
        self.sync = sync

    def collect(self) -> Iterable[Metric]:
        yield from self._queries()
        yield from self._answers()
        yield from self._upstreams()
        yield from self._cache()
        yield from self._snapshot()
        yield from self._health()
        if self.sync is not None:
            yield from _sync(self.sync())

    def _queries(self) -> Iterator[Metric]:
        entry = self.server.entry
        queries = CounterMetricFamily(
            "dnsmesh_agent_queries",
            "DNS queries decided, by where the answer came from, its RCODE ('none': nothing "
            "was sent) and the query type ('other' outside a fixed list, 'unknown' unparsed).",
            labels=["source", "rcode", "qtype"],
        )
        duration = HistogramMetricFamily(
            "dnsmesh_agent_query_duration_seconds",
            "Time the agent spent on a query, by source: from reading the message to the "
            "answer (a forwarded one: from the start of the forward). Time queued in the "
            "socket before that is not seen.",
            labels=["source"],
        )
        for source, tally in entry.tallies.items():
            for qtype, by_rcode in zip(QTYPE_LABELS, tally.kinds, strict=True):
                for rcode, count in zip(RCODE_LABELS, by_rcode, strict=True):
                    if count:
                        queries.add_metric([source, rcode, qtype], count)
            buckets = cumulative_buckets(tally.latency)
            duration.add_metric(
                [source],
                list(zip(_BOUNDS, buckets, strict=True)),
                tally.latency_ns / 1e9,
            )
        yield queries
        yield duration
        counts = entry.counts
        yield _counter(
            "dnsmesh_agent_malformed_queries",
            "Messages that were not a query the agent could parse (answered FORMERR when "
            "the header was readable).",
            counts["malformed"],
        )
        yield _counter(
            "dnsmesh_agent_dropped_queries",
            "Queries dropped unanswered under load: forwards in flight at --max-inflight, "
            "TCP connections over --tcp-max-connections, UDP replies over the send backlog.",
            counts["dropped"],
        )
        yield _counter(
            "dnsmesh_agent_amplification_truncations",
            "UDP answers truncated (TC=1) by the amplification guard.",
            counts["amplification"],
        )

    def _answers(self) -> Iterator[Metric]:
        served = self.server.served
        answers = CounterMetricFamily(
            "dnsmesh_agent_answers",
            "Policy answers that named an endpoint, by policy, slice ('_default': no slice "
            "matched) and endpoint address; one answer with two addresses counts for both.",
            labels=["policy", "slice", "endpoint"],
        )
        for (policy, slice_id, endpoint), count in sorted(
            served.answers.totals(served.snapshot).items()
        ):
            answers.add_metric([policy, slice_id, endpoint], count)
        yield answers
        limited = CounterMetricFamily(
            "dnsmesh_agent_slice_limited",
            "Policy queries refused because their slice was over its resource_limits "
            "(this agent's token bucket), by policy and slice.",
            labels=["policy", "slice"],
        )
        for (policy, slice_id), bucket in sorted(
            served.snapshot.buckets(), key=lambda pair: pair[0]
        ):
            limited.add_metric([policy, slice_id], bucket.limited)
        yield limited

    def _upstreams(self) -> Iterator[Metric]:
        client = self.server.upstream
        up = GaugeMetricFamily(
            "dnsmesh_agent_upstream_up",
            "1 while an upstream is usable, 0 while it is marked down or disabled (a loop).",
            labels=["upstream"],
        )
        queries = CounterMetricFamily(
            "dnsmesh_agent_upstream_queries",
            "Attempts sent to an upstream for client queries (probes not included).",
            labels=["upstream"],
        )
        timeouts = CounterMetricFamily(
            "dnsmesh_agent_upstream_timeouts",
            "Attempts an upstream did not answer within the attempt timeout.",
            labels=["upstream"],
        )
        for server in client.servers:
            name = [str(server.address)]
            up.add_metric(name, 1 if client.is_up(server) else 0)
            queries.add_metric(name, server.queries)
            timeouts.add_metric(name, server.timeouts)
        yield up
        yield queries
        yield timeouts

    def _cache(self) -> Iterator[Metric]:
        cache = self.server.cache
        yield GaugeMetricFamily(
            "dnsmesh_agent_cache_entries", "Forwarded answers in the cache.", value=len(cache)
        )
        yield _counter(
            "dnsmesh_agent_cache_hits",
            "Queries answered from the cache.",
            self.server.entry.tallies["cache"].total,
        )
        yield _counter(
            "dnsmesh_agent_cache_misses",
            "Cache lookups that found no fresh answer (the query was forwarded).",
            cache.misses,
        )
        yield _counter(
            "dnsmesh_agent_cache_evictions",
            "Cached answers pushed out by --cache-size.",
            cache.evictions,
        )

    def _snapshot(self) -> Iterator[Metric]:
        served = self.server.served
        yield GaugeMetricFamily(
            "dnsmesh_agent_snapshot_revision",
            "The revision of the policy set served (0: local files only, or none yet).",
            value=served.base.revision,
        )
        since = served.base_since
        age = GaugeMetricFamily(
            "dnsmesh_agent_snapshot_age_seconds",
            "Seconds since the policy set served was loaded (absent before the first).",
        )
        if since is not None:
            age.add_metric([], served.clock() - since)
        yield age
        yield GaugeMetricFamily(
            "dnsmesh_agent_policies", "Policies in the set served.", value=len(served.snapshot)
        )

    def _health(self) -> Iterator[Metric]:
        monitor = self.server.health
        latency = GaugeMetricFamily(
            "dnsmesh_agent_endpoint_latency_seconds",
            "Probe latency of an endpoint (moving average of the successful probes).",
            labels=["endpoint"],
        )
        loss = GaugeMetricFamily(
            "dnsmesh_agent_endpoint_loss_ratio",
            "Share of an endpoint's probes that failed (moving average, 0 to 1).",
            labels=["endpoint"],
        )
        ejected = GaugeMetricFamily(
            "dnsmesh_agent_endpoint_ejected",
            "1 while an endpoint is ejected by outlier detection.",
            labels=["endpoint"],
        )
        for address, health in sorted(monitor.health.items()):
            if health.latency is not None:
                latency.add_metric([address], health.latency)
            loss.add_metric([address], min(1.0, max(0.0, health.loss)))
            ejected.add_metric([address], 1 if health.ejected else 0)
        yield latency
        yield loss
        yield ejected
        yield _counter("dnsmesh_agent_probes", "Endpoint probes sent.", monitor.runner.probes_sent)
        yield _counter(
            "dnsmesh_agent_ejections",
            "Endpoint ejections by outlier detection.",
            monitor.ejections_total,
        )
        yield _counter(
            "dnsmesh_agent_fail_open",
            "Times a policy entered fail-open (every endpoint unhealthy, all answered).",
            monitor.fail_open_total,
        )


def _sync(state: SyncState | None) -> Iterator[Metric]:
    connected = GaugeMetricFamily(
        "dnsmesh_agent_sync_connected",
        "1 for the transport the agent follows the controller on, 0 for the other.",
        labels=["transport"],
    )
    for transport in TRANSPORTS:
        connected.add_metric([transport], 1 if state and state.transport == transport else 0)
    yield connected
    last_ack = GaugeMetricFamily(
        "dnsmesh_agent_sync_last_ack_timestamp_seconds",
        "Unix time the agent last applied (and ACKed) a revision (absent before the first).",
    )
    last_nack = GaugeMetricFamily(
        "dnsmesh_agent_sync_last_nack_timestamp_seconds",
        "Unix time the agent last refused (NACKed) a revision (absent if never).",
    )
    if state is not None and state.last_ack_at is not None:
        last_ack.add_metric([], state.last_ack_at)
    if state is not None and state.last_nack_at is not None:
        last_nack.add_metric([], state.last_nack_at)
    yield last_ack
    yield last_nack
    yield _counter(
        "dnsmesh_agent_sync_nacks", "Revisions refused (NACKed).", state.nacks if state else 0
    )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
