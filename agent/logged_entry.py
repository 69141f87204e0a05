"""The query entry with the query log on: the same answers, and a line for each query.

Chosen once, at start-up (``make_entry``): without ``--query-log`` the agent runs the plain
``QueryEntry``, whose per-query path tests no flag and is not slower for the log existing.
With it, this subclass walks the same steps as ``QueryEntry.answer_now`` and hands each
outcome to the log (agent/querylog.py), which queues a small tuple; the formatting is done
on the log's writer thread. ``tests/unit/test_logged_entry.py`` holds both entries to the
same answers, so the copy of the walk below cannot drift from the original.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from agent.answer import Answer, Source
from agent.entry import PROHIBITED, CookieForward, QueryEntry
from agent.handlers.policy import DecidingPolicyAnswers
from agent.pipeline import Pipeline
from agent.tally import (
    IMMEDIATE_SAMPLE,
    NO_RESPONSE,
    QTYPE_INDEX,
    UNKNOWN_QTYPE,
    clock_ns,
    rcode_of,
)
from dnsmesh import dnswire
from dnsmesh.dnswire import (
    MalformedQuery,
    Query,
    WithCookie,
    WithEcs,
    parse_query,
    parse_query_and_cookie,
)

if TYPE_CHECKING:
    from agent.querylog import QueryLog

_INTERNAL = "internal error"


def make_entry(
    pipeline: Pipeline, query_log: QueryLog | None, max_inflight: int, **options: Any
) -> QueryEntry:
    """The plain entry, or the logging one when there is a query log."""
    if query_log is None:
        return QueryEntry(pipeline, max_inflight, **options)
    return LoggedQueryEntry(pipeline, max_inflight, query_log=query_log, **options)


class LoggedQueryEntry(QueryEntry):
    def __init__(
        self, pipeline: Pipeline, max_inflight: int = 4096, *, query_log: QueryLog, **options: Any
    ) -> None:
        super().__init__(pipeline, max_inflight, **options)
        if not isinstance(pipeline.policies, DecidingPolicyAnswers):
            raise TypeError("a logged entry needs build_pipeline(..., keep_decisions=True)")
        self.query_log = query_log
        self._policies = pipeline.policies
        self._add = query_log.add

    def answer_now(self, data: bytes, client: str) -> bytes | Query | CookieForward | None:
        begun = perf_counter()  # the line's clock; the tallies sample their own
        add = self._add
        if self._untimed:
            self._untimed -= 1
            start = 0
        else:
            self._untimed = IMMEDIATE_SAMPLE - 1
            start = clock_ns()
        try:
            query = parse_query(data)
        except MalformedQuery as exc:
            if not self.acl.allows(client):
                self._refused.add(UNKNOWN_QTYPE, NO_RESPONSE, start)
                add(begun, client, None, Source.REFUSED, None)
                return None
            self.counts["malformed"] += 1
            add(begun, client, None, Source.ERROR, exc.reply, None, exc.reason)
            return exc.reply
        except WithCookie as found:  # the plain query is answered (and logged) as any other
            return self._answer_with_cookie(found, client)
        except WithEcs as found:  # likewise, but for a policy name a trusted forwarder asks
            return self._answer_with_ecs(found, client)
        if client not in self._admitted and not self.acl.allows(client):
            refusal = (
                None
                if self.refuse_drop
                else dnswire.build_error(query, dnswire.RCODE_REFUSED, PROHIBITED)
            )
            self._refused.add(QTYPE_INDEX[query.qtype], rcode_of(refusal), start)
            add(begun, client, query, Source.REFUSED, refusal)
            return refusal
        try:
            for handler, source in self.pipeline.immediate:
                wire = handler(query, client)
                if wire is not None:
                    self.tallies[source].add(QTYPE_INDEX[query.qtype], wire[3] & 0x0F, start)
                    decided = self._policies.decided if source == Source.POLICY else None
                    add(begun, client, query, source, wire, decided)
                    return wire
        except Exception as exc:
            failed = self._failed(query, client, "handler", exc, start)
            add(begun, client, query, Source.ERROR, failed, None, _INTERNAL)
            return failed
        return query

    def _ecs_policy(self, found: WithEcs, client: str) -> tuple[str, bytes] | None:
        """The line of a policy answer for a trusted forwarder's ECS network names that
        network as the client: it is the client the policy answered (its slice, its pick)."""
        begun = perf_counter()
        answered = super()._ecs_policy(found, client)
        if answered is not None:
            source, wire = answered
            decided = self._policies.decided if source == Source.POLICY else None
            reason = "" if source == Source.POLICY else _INTERNAL
            self._add(begun, found.subnet.key, found.query, source, wire, decided, reason)
        return answered

    async def forward(
        self, pending: Query | CookieForward, client: str, udp_size: int | None
    ) -> bytes:
        # From the forward's start: the loop's wait to start the task is not counted.
        begun = perf_counter()
        query, cookie = (pending, None) if isinstance(pending, Query) else pending
        start = clock_ns()
        try:
            answer: Answer = await self.pipeline.final(query, client)
        except Exception as exc:
            failed = self._failed(query, client, "forward", exc, start)
            self._add(begun, client, query, Source.ERROR, failed, None, _INTERNAL)
            return failed
        self._add(begun, client, query, answer.source, answer.wire, None, answer.reason)
        return self._answered(answer, query, cookie, client, udp_size, start)

    def over_limit(self, data: bytes, client: str) -> bytes | None:
        slipped = super().over_limit(data, client)
        log = self.query_log
        now, admitted = log.admit()
        if admitted:  # parsed for its name only when it gets a line: this is the flood path
            try:
                query: Query | None = parse_query_and_cookie(data)[0]
            except MalformedQuery:
                query = None
            log.put(now, now, client, query, Source.RATELIMITED, slipped, None, "")
        return slipped
