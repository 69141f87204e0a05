"""The one query entry: bytes and a client address in, response bytes out, for every transport.

Both listeners (UDP and TCP) hand every message here and only move bytes. The entry parses
the query, runs the pipeline and counts each answer under its source, so what happens to a
query is decided in one place whatever carried it.

It has two steps because forwarding is the only one that waits: ``answer_now`` is plain
(no coroutine, no task, no allocation beyond the response), which keeps a policy or cache
hit over UDP at recvfrom, parse, one dict lookup and sendto; only a query that must be
forwarded goes on to ``forward``, which the listener awaits in a task of its own.

It is also the front door (dnsmesh/admission.py): a client outside ``--allow`` is refused
(REFUSED with EDE 18 Prohibited, or nothing with ``--refuse-mode drop``) before any
handler runs, counted as ``refused``; the UDP listener asks ``limiter`` before anything
else and hands a query over the rate to ``over_limit`` (counted as ``ratelimited``); and a
UDP answer over 512 octets is held to ``udp_size_cap`` of its query's size, so the agent is
no amplifier for spoofed queries.

DNS Cookies (RFC 7873, RFC 9018; dnsmesh/cookies.py) are what lifts the last two for a
client that proves its address: a query carrying a COOKIE option gets our server cookie
in its answer, and one whose server cookie verifies is spared the amplification guard
here and the rate limit in the UDP listener (``valid_cookie``). A query without the
option pays nothing for all this: the parse raises ``WithCookie`` for one that has it
(dnsmesh/dnswire.py), and the cookie path answers the query without its option as any
other and adds our cookie to the answer.

EDNS Client Subnet (RFC 7871; dnsmesh/ecs.py) takes the same road: the parse raises
``WithEcs`` for a query with the option, and from a forwarder ``trust_ecs`` names a policy
name is answered for the network the option names, the option (with its scope) in the
answer; any other query with the option is answered as the query without it.

It counts every query it decides, by source, query type, RCODE and latency, in the plain
lists of agent/tally.py; /metrics reads them at scrape time (agent/metrics/collector.py).

It is also the error boundary: an exception from any handler or from the forward becomes
SERVFAIL with an Extended DNS Error "Other" (RFC 8914 §4.1) for that query alone, logged
once as ``query.error``, so one bad query never leaves a client without an answer, takes
down the other queries pipelined on its TCP connection, or stops the agent.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from agent.answer import Answer, Source
from agent.pipeline import Pipeline
from agent.tally import (
    IMMEDIATE_SAMPLE,
    NO_RESPONSE,
    QTYPE_INDEX,
    UNKNOWN_QTYPE,
    SourceTally,
    clock_ns,
    rcode_of,
)
from dnsmesh import dnswire
from dnsmesh.admission import ClientAcl, RateLimiter, udp_size_cap
from dnsmesh.cookies import (
    CLIENT_COOKIE_LEN,
    OPTION_COOKIE,
    RCODE_BADCOOKIE,
    SERVER_COOKIE_LEN,
    ServerCookies,
)
from dnsmesh.dnswire import (
    MalformedQuery,
    Query,
    WithCookie,
    WithEcs,
    add_option,
    fit_udp,
    name_to_text,
    parse_query,
    parse_query_and_cookie,
)
from dnsmesh.logs import fields

log = logging.getLogger(__name__)

_INTERNAL_ERROR = (dnswire.EDE_OTHER, "internal error")
PROHIBITED = (dnswire.EDE_PROHIBITED, "client not allowed")
# The counts besides the answer sources: queries that got no normal answer, and why.
NOT_ANSWERED = ("malformed", "dropped", "amplification")
# A COOKIE option's code and length when it holds a client and an RFC 9018 server cookie.
_SERVER_COOKIE_OPTION = struct.pack("!HH", OPTION_COOKIE, CLIENT_COOKIE_LEN + SERVER_COOKIE_LEN)


class CookieForward(NamedTuple):
    """A query to forward whose answer gets our server cookie (``answer_now`` gives it)."""

    query: Query
    cookie: bytes


class QueryEntry:
    """What every listener shares: the pipeline, answer counts, the forwards in flight."""

    def __init__(
        self,
        pipeline: Pipeline,
        max_inflight: int = 4096,
        *,
        acl: ClientAcl,
        cookies: ServerCookies,
        refuse_drop: bool = False,
        limiter: RateLimiter | None = None,
        amplification_factor: int = 10,
        amplification_exempt: ClientAcl | None = None,
        trust_ecs: ClientAcl | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``wall_clock`` stamps server cookies (Unix time, which agents sharing a secret
        agree on); ``clock`` drives the rate limiter. ``trust_ecs``: the forwarders whose
        ECS option names the client (``--trust-ecs-from``; None: nobody's)."""
        self.max_inflight = max_inflight
        self.acl = acl
        # The ACL's memo of allowed clients, held here: the hot path tests membership only.
        self._admitted = acl.admitted
        self.refuse_drop = refuse_drop
        self.limiter = limiter  # None: no rate limit (the default)
        self.amplification_factor = amplification_factor
        # Clients the guard trusts: by default loopback, which cannot be forged from the
        # wire (Linux drops packets from 127/8 or ::1 arriving on another interface).
        self.amplification_exempt = amplification_exempt or ClientAcl(())
        self.trust_ecs = trust_ecs or ClientAcl(())
        self._trusted = self.trust_ecs.admitted  # its memo, as ``_admitted`` is the ACL's
        self.clock = clock
        self.cookies = cookies
        self.wall_clock = wall_clock
        # Queries whose server cookie verified; over-limit ones answered BADCOOKIE.
        self.cookie_counts = {"valid": 0, "badcookie": 0}
        self.counts: dict[str, int] = dict.fromkeys(NOT_ANSWERED, 0)
        self.tallies: dict[str, SourceTally] = {source: SourceTally() for source in Source.ALL}
        self._refused = self.tallies[Source.REFUSED]
        # The rate limit's drops by RCODE ("none"), of an unparsed query type.
        self._limited_unparsed = self.tallies[Source.RATELIMITED].kinds[UNKNOWN_QTYPE]
        self._untimed = 0  # immediate answers left before the next one that is timed
        self.pipeline = pipeline
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting = True

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    @pipeline.setter
    def pipeline(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        # The immediate handlers, each with its source's tally rather than its name: one
        # dict lookup less per answer.
        self._immediate = tuple(
            (handler, self.tallies[source]) for handler, source in pipeline.immediate
        )

    def answer_now(self, data: bytes, client: str) -> bytes | Query | CookieForward | None:
        """The response to send at once (bytes), the query to ``forward`` (a Query, or a
        CookieForward for one with a COOKIE option), or None: nothing to send (a malformed
        packet without a header worth answering). Over UDP the listener fits a response
        longer than 512 bytes with ``fit_udp_reply``."""
        if self._untimed:  # _sample_start inlined
            self._untimed -= 1
            start = 0
        else:
            self._untimed = IMMEDIATE_SAMPLE - 1
            start = clock_ns()
        try:
            query = parse_query(data)
        except MalformedQuery as exc:
            if not self.acl.allows(client):
                # not even a FORMERR for a client we do not serve
                self._refused.add(UNKNOWN_QTYPE, NO_RESPONSE, start)
                return None
            self.counts["malformed"] += 1
            return exc.reply
        except WithCookie as found:
            return self._answer_with_cookie(found, client)
        except WithEcs as found:
            return self._answer_with_ecs(found, client)
        if client not in self._admitted and not self.acl.allows(client):
            refusal = (
                None
                if self.refuse_drop
                else dnswire.build_error(query, dnswire.RCODE_REFUSED, PROHIBITED)
            )
            self._refused.add(QTYPE_INDEX[query.qtype], rcode_of(refusal), start)
            return refusal
        # The pipeline's immediate handlers, walked here rather than in a method of the
        # pipeline: one Python call less per query, about 3 % of a policy hit. The try costs
        # nothing when nothing raises (zero-cost exceptions, CPython 3.11).
        try:
            for handler, tally in self._immediate:
                wire = handler(query, client)
                if wire is not None:
                    # SourceTally.add inlined: a method call is ~2 % of a policy hit.
                    tally.kinds[QTYPE_INDEX[query.qtype]][wire[3] & 0x0F] += 1
                    if start:
                        elapsed = clock_ns() - start
                        tally.latency[elapsed.bit_length()] += 1
                        tally.latency_ns += elapsed
                    return wire
        except Exception as exc:
            return self._failed(query, client, "handler", exc, start)
        return query

    def _answer_with_cookie(
        self, found: WithCookie, client: str
    ) -> bytes | Query | CookieForward | None:
        """``answer_now`` for a query with a COOKIE option: the query without it is
        answered as any other (the front door, the pipeline, the counts), then our cookie
        goes into the answer, or rides with the query to ``forward``."""
        answer = self.answer_now(found.plain, client)
        if isinstance(answer, bytes):
            return self._with_cookie(answer, found.cookie, client)[0]
        if isinstance(answer, Query):
            return CookieForward(answer, found.cookie)
        return answer

    def _answer_with_ecs(self, found: WithEcs, client: str) -> bytes | Query | CookieForward | None:
        """``answer_now`` for a query with an EDNS Client Subnet option (RFC 7871).

        From an allowed client that ``--trust-ecs-from`` names, a policy name is answered
        for the option's network, with the option in the answer (``_ecs_policy``). Anything
        else is answered as the query without the option: a name no policy answers does
        not depend on the client (forwarded without the option: RFC 7871 §7.3 takes an
        answer without one for scope 0), and an untrusted sender's option is ignored.
        The policy is asked before the special-use names, which no policy may hold.
        """
        answered = self._ecs_policy(found, client)
        if answered is not None:
            return answered[1]
        return self.answer_now(found.plain, client)

    def _ecs_policy(self, found: WithEcs, client: str) -> tuple[str, bytes] | None:
        """(its source, the answer) of a policy name asked for a trusted forwarder's ECS
        network, counted; None when the query is not one (``_answer_with_ecs``)."""
        policies = self.pipeline.policies
        # The ACLs' memos of allowed clients first, as answer_now tests ``_admitted``: a
        # method call less for each of the two on every query of a known forwarder.
        if (
            policies is None
            or not (client in self._trusted or self.trust_ecs.allows(client))
            or not (client in self._admitted or self.acl.allows(client))
        ):
            return None
        start = self._sample_start()
        query = found.query
        try:
            wire = policies.answer_ecs(query, found.subnet)
        except Exception as exc:
            return Source.ERROR, self._failed(query, client, "handler", exc, start)
        if wire is None:
            return None
        self.tallies[Source.POLICY].add(QTYPE_INDEX[query.qtype], wire[3] & 0x0F, start)
        return Source.POLICY, wire

    async def forward(
        self, pending: Query | CookieForward, client: str, udp_size: int | None
    ) -> bytes:
        """The forwarded query's response; never raises but for cancellation. ``udp_size``:
        the query's size in octets when it came over UDP, None over TCP."""
        query, cookie = (pending, None) if isinstance(pending, Query) else pending
        start = clock_ns()
        try:
            answer: Answer = await self.pipeline.final(query, client)
        except Exception as exc:
            return self._failed(query, client, "forward", exc, start)
        return self._answered(answer, query, cookie, client, udp_size, start)

    def _answered(
        self,
        answer: Answer,
        query: Query,
        cookie: bytes | None,
        client: str,
        udp_size: int | None,
        start: int,
    ) -> bytes:
        """A forwarded query's answer counted, logged at debug level, given our cookie when
        the query had a COOKIE option, and fitted for UDP."""
        self.tallies[answer.source].add(QTYPE_INDEX[query.qtype], rcode_of(answer.wire), start)
        if log.isEnabledFor(logging.DEBUG):  # never for immediate answers: the hot path
            log.debug(
                "query.forwarded",
                extra=fields(
                    client=client,
                    name=name_to_text(query.qname),
                    qtype=query.qtype,
                    source=answer.source,
                    reason=answer.reason,
                ),
            )
        wire, proven = answer.wire, False
        if cookie is not None:
            wire, proven = self._with_cookie(wire, cookie, client)
        if udp_size is None or len(wire) <= 512:
            return wire
        return self._fit_udp(wire, query, udp_size, client, proven)

    def _with_cookie(self, wire: bytes, cookie: bytes, client: str) -> tuple[bytes, bool]:
        """(``wire`` with our server cookie for this client in its OPT, whether the query's
        own server cookie verified): RFC 7873 §5.2.3-5.2.5 answer normally in every case
        and hand out a fresh cookie where the one sent is missing, stale or not ours."""
        proven, option = self.cookies.verdict(cookie, client, int(self.wall_clock()))
        if proven:
            self.cookie_counts["valid"] += 1
        return add_option(wire, OPTION_COOKIE, option), proven

    def _proven(self, cookie: bytes | None, client: str) -> bool:
        """Whether a query's COOKIE option holds a server cookie of ours for ``client``."""
        return (
            cookie is not None and self.cookies.verdict(cookie, client, int(self.wall_clock()))[0]
        )

    def valid_cookie(self, data: bytes, client: str) -> bool:
        """Whether this UDP query proves its source with a cookie (``_proven``): the
        listener lets it past the rate limit, since a spoofed source cannot have one.

        Asked for every datagram over the limit, so a flood is first screened for the
        option's header (code 10, a client and a version-1 server cookie: 24 octets), a
        byte search that costs far less than the parse a flood of new names would."""
        if _SERVER_COOKIE_OPTION not in data:
            return False
        try:
            return self._proven(parse_query_and_cookie(data)[1], client)
        except MalformedQuery:
            return False

    def fit_udp_reply(self, wire: bytes, data: bytes, client: str) -> bytes:
        """An immediate response fitted for UDP (``_fit_udp``). Only for responses over 512
        bytes, which every client takes: rare enough that parsing the query again (and
        checking its cookie again) costs nothing that matters, and keeps the limit off
        the per-query path."""
        query, cookie = parse_query_and_cookie(data)
        return self._fit_udp(wire, query, len(data), client, self._proven(cookie, client))

    def _fit_udp(
        self, wire: bytes, query: Query, query_size: int, client: str, proven: bool
    ) -> bytes:
        """RFC 6891 §7 / RFC 1035 §4.2.1: no more than the client takes over UDP, and no
        more than the amplification guard lets a query of its size get; TC=1 tells the
        client to ask again over TCP. ``proven``: the query's server cookie verified, so
        its source is real and the guard has nothing to guard against."""
        if proven or self.amplification_exempt.allows(client):
            return fit_udp(wire, query.udp_limit)
        cap = udp_size_cap(query_size, self.amplification_factor)
        if cap < len(wire) <= query.udp_limit:
            self.counts["amplification"] += 1
        return fit_udp(wire, min(query.udp_limit, cap))

    def over_limit(self, data: bytes, client: str) -> bytes | None:
        """A UDP query from ``client`` over its source's rate: a TC=1 answer to send for one
        in ``slip`` (the client retries over TCP, which is not limited), else None: dropped.
        (The client is for the query log's entry, agent/logged_entry.py.)

        A slipped query that carries a client cookie gets BADCOOKIE with a fresh server
        cookie instead (RFC 7873 §5.2.3 lets a server so answer "based on server policy,
        including rate limiting"): the client asks again over UDP with the cookie, which
        the limit lets through, and no TCP connection is needed.

        A dropped one is never parsed (its query type is ``unknown``) nor timed, and costs
        one list increment, as the plain count did before metrics: under a flood this is
        the path every datagram takes."""
        assert self.limiter is not None  # only the listeners call this, when limiting
        if not self.limiter.slips():
            self._limited_unparsed[NO_RESPONSE] += 1
            return None
        start = self._sample_start()
        tally = self.tallies[Source.RATELIMITED]
        try:
            query, cookie = parse_query_and_cookie(data)
        except MalformedQuery:
            tally.add(UNKNOWN_QTYPE, NO_RESPONSE, start)
            return None
        if cookie is not None:
            self.cookie_counts["badcookie"] += 1
            error = dnswire.build_error(query, RCODE_BADCOOKIE)
            slipped = self._with_cookie(error, cookie, client)[0]
        else:
            slipped = fit_udp(dnswire.build_response(query, dnswire.RCODE_NOERROR), 0)
        tally.add(QTYPE_INDEX[query.qtype], rcode_of(slipped), start)
        return slipped

    def _sample_start(self) -> int:
        """The clock for an immediate answer that is timed, else 0 (one in IMMEDIATE_SAMPLE
        is timed)."""
        if self._untimed:
            self._untimed -= 1
            return 0
        self._untimed = IMMEDIATE_SAMPLE - 1
        return clock_ns()

    def refused_connection(self) -> None:
        """A TCP client outside --allow, closed at once (--refuse-mode drop)."""
        self._refused.add(UNKNOWN_QTYPE, NO_RESPONSE, clock_ns())

    def totals(self) -> dict[str, int]:
        """Queries by source, and those not answered by reason (the stop log's figures)."""
        totals = {source: tally.total for source, tally in self.tallies.items()}
        totals.update(self.counts)
        return totals

    def _failed(self, query: Query, client: str, step: str, exc: Exception, start: int) -> bytes:
        log.error(
            "query.error",
            exc_info=exc,
            extra=fields(
                client=client,
                name=name_to_text(query.qname),
                qtype=query.qtype,
                step=step,
                error=f"{type(exc).__name__}: {exc}",
            ),
        )
        wire = dnswire.build_error(query, dnswire.RCODE_SERVFAIL, _INTERNAL_ERROR)
        self.tallies[Source.ERROR].add(QTYPE_INDEX[query.qtype], rcode_of(wire), start)
        return wire

    def full(self) -> bool:
        """Whether the bound on forwards in flight is reached (a flood of unique names):
        new ones are then dropped, as resolvers under load do, and clients retry."""
        if len(self.tasks) < self.max_inflight:
            return False
        self.counts["dropped"] += 1
        return True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Only a listener's own sending can get here: the query itself was answered.
            log.error("query.send_failed", exc_info=task.exception())

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for in-flight forwards; cancel the rest, say how many."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        left = [task for task in self.tasks if not task.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
        return len(left)
