"""Forwarding to upstream resolvers: UDP then TCP, spoofing-resistant, failover, coalescing.

RFC 5452 asks three things of a forwarder, and each exchange here does them: a fresh random
ID (``os.urandom``, read in batches), a fresh source port (a new UDP socket per query;
Linux picks its ephemeral port at random), and acceptance only of a reply from the
address/port we asked (the socket is connected, so the kernel filters) whose ID and question
match (``parse_upstream_response``). Everything else is discarded and we keep listening.
On top, the query name goes out in random case (0x20) and the reply must echo it exactly;
and a socket that receives more than ``unwanted_limit`` replies that are not ours for one
query is under attack (Unbound's unwanted-reply-threshold): it is abandoned and the query
asked again over TCP, which an off-path forger cannot answer. So is a reply with our ID
whose name lost our case (an upstream that does not keep case): TCP, where case is not
checked, answers it.

A socket per query rather than a pool, measured (uvloop, loopback echo upstream): a
datagram transport per query (socket+connect+endpoint+close) cost ~16 us of a ~35-43 us
exchange; a bare reader callback instead of the transport saves ~12 us of that, leaving
socket+connect+close at ~6 us. A pool would save only those ~6 us, on cache misses only,
and reusing ports is exactly what RFC 5452 asks us not to do, so the fresh socket stays.

One slow name is not a dead server: a recursive upstream often takes 0.3-2 s for a cold
name. So an attempt that times out only makes its upstream *suspect*: it goes to the end of
the order (the query's next attempt asks another one) and is probed at once with ``. NS``,
which any recursive resolver answers from its cache in milliseconds. Any answer to the probe
clears the suspicion; a probe timeout, or ``_DOWN_AFTER`` consecutive attempts it did not
answer (across queries), marks it *down*. Only down upstreams make the agent answer SERVFAIL
without asking (``all_down``). A down upstream is avoided for a backoff that doubles per
consecutive down mark, yet never dropped: it stays at the end of the order and moves back to
the front once a probe, sent shortly before the backoff runs out, gets an answer, so recovery
is noticed without a client query paying an attempt timeout for it.

The attempts of one query do not cancel each other: when an attempt times out, its socket
keeps listening until the query's own deadline, so the late answer of an upstream that was
still recursing wins over the retry that was sent meanwhile.

Encrypted upstreams (``tls://``, ``https://``, agent/encrypted/) take the same path: an
attempt to one is a task on its reused connection instead of a fresh socket, it keeps
running for a late answer like a socket keeps listening, and its failures (including a
certificate that does not verify: never a reason to fall back to plain DNS) count as an
unanswered attempt. No 0x20 nor unwanted-reply counting there: they defend UDP against
off-path forgers, who cannot inject into an authenticated stream.

With ``--upstream-cookies`` each plain upstream query carries a DNS cookie (RFC 7873 §5.1:
our client cookie for that server and the server cookie it last gave us;
dnsmesh/cookies.py ClientCookies). A UDP reply whose COOKIE option lacks our client cookie
is counted unwanted and ignored like any other forgery: an off-path forger would need 64
more bits it never saw. A reply with no COOKIE option is taken (a server without cookies,
RFC 7873 §5.3), so the check only ever adds to the others. A BADCOOKIE reply, the
server asking for its cookie first, has given us that cookie: the query is asked again
over TCP, which it answers (as a truncated answer is).
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import HostPort, HttpsUpstream, TlsUpstream, UpstreamAddress
from agent.encrypted import Question, StreamFailure, client_context
from agent.encrypted.dot import DotClient
from dnsmesh import dnswire
from dnsmesh.cookies import OPTION_COOKIE, RCODE_BADCOOKIE, ClientCookies
from dnsmesh.dnsforward import (
    BadUpstreamResponse,
    CaseMismatch,
    UpstreamAnswer,
    build_question,
    build_upstream_query,
    parse_upstream_response,
    randomize_case,
    response_option,
)
from dnsmesh.errors import UpstreamError, UpstreamTimeout
from dnsmesh.logs import fields
from dnsmesh.tcpframing import FrameDecoder, frame

if TYPE_CHECKING:
    from agent.encrypted.doh import DohClient

log = logging.getLogger(__name__)

Key = tuple[bytes, int, int]
_TCP_READ = 65535 + 2  # one whole message at most per read
# Rounds over the upstream list per query: a second round gives a lone upstream one retry
# (a lost datagram) without spinning when every upstream refuses at once.
_ROUNDS = 2
# Consecutive attempts an upstream did not answer (over any queries) that mark it down even
# while it answers probes: it is there, but is not resolving (pdns-recursor throttles so).
_DOWN_AFTER = 3
# A probe's timeout, as a share of the attempt timeout: ``. NS`` comes from the upstream's
# cache, so it needs less time than a cold name, and a probe sent when an attempt fails is
# decided before the query's next attempt (sent at the same moment) times out. That orders
# the events: the query that finds a set dead ends after the marks are set.
_PROBE_SHARE = 0.8
# rcodes that say "this server could not help", not "the name is so": try the next one.
_TRY_NEXT = frozenset({dnswire.RCODE_SERVFAIL, dnswire.RCODE_REFUSED})
# The probe that checks a down upstream: the root's NS set, which every resolver has cached.
_PROBE_NAME, _PROBE_TYPE = b"\x00", dnswire.TYPE_NS
# Query IDs and 0x20 case bits come from the OS CSPRNG (RFC 5452 §9.2 asks for unpredictable
# IDs), read in batches: one os.urandom call per 4 kB instead of secrets per query (~2 us).
_RANDOM_BATCH = 4096
_random = b""
_random_at = 0


def random_bytes(count: int) -> bytes:
    """``count`` (at most 255) cryptographically random bytes from a batched buffer."""
    global _random, _random_at  # one module-wide buffer: the agent runs one event loop
    at = _random_at
    if at + count > len(_random):
        _random, at = os.urandom(_RANDOM_BATCH), 0
    _random_at = at + count
    return _random[at : at + count]


def random_id() -> int:
    """A cryptographically random 16-bit query ID."""
    return int.from_bytes(random_bytes(2), "big")


class _Unwanted(Exception):
    """This query's UDP socket is not to be trusted, or not enough: too many replies that
    were not ours ("flood"), ours with the case of the name lost ("case"), or a BADCOOKIE
    from an upstream that wants its cookie before it answers over UDP ("badcookie")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _BadCookie(BadUpstreamResponse):
    """BADCOOKIE (RFC 7873 §5.3): the upstream's server cookie is learned; ask again."""


@dataclass(slots=True)
class Upstream:
    """One upstream and what we learned about it."""

    address: UpstreamAddress
    index: int  # configured position: the preference among healthy upstreams
    failures: int = 0  # consecutive client attempts it did not answer
    suspect: bool = False  # an attempt timed out; a probe asks whether the server is there
    downs: int = 0  # consecutive down marks: the exponent of the backoff
    down_until: float = 0.0  # clock time before which it is tried only as a last resort
    disabled: str | None = None  # never used again (a forwarding loop through it)
    # Totals for /metrics: attempts sent for client queries, and those that timed out.
    queries: int = 0
    timeouts: int = 0


def _expire(done: asyncio.Future[_Listener]) -> None:
    if not done.done():
        done.set_exception(TimeoutError())


class _Reply:
    """One UDP socket of a query, what it waits for, and how many wrong replies it has seen."""

    __slots__ = (
        "answer",
        "cookies",
        "dead",
        "done",
        "fd",
        "max_ttl",
        "msg_id",
        "qname",
        "question",
        "retired",
        "server",
        "sock",
        "unwanted",
        "unwanted_limit",
    )

    def __init__(
        self,
        server: HostPort,
        sock: _socket.socket,
        done: asyncio.Future[_Listener],
        msg_id: int,
        question: bytes,
        qname: bytes,
        max_ttl: int,
        unwanted_limit: int,
        cookies: ClientCookies | None,
    ) -> None:
        self.server = server
        self.cookies = cookies
        self.sock = sock
        self.fd = sock.fileno()
        self.done = done  # the future of the query's current attempt: set to this _Reply
        self.msg_id = msg_id
        self.question = question  # as sent, in 0x20 case
        self.qname = qname  # as cached (lower case)
        self.max_ttl = max_ttl
        self.unwanted_limit = unwanted_limit
        self.unwanted = 0
        self.retired = False  # its own attempt timed out; it still listens for a late answer
        self.dead = False  # failed: never read again (uvloop also closes its poll on an error)
        self.answer: UpstreamAnswer | None = None

    def rearm(self, done: asyncio.Future[_Listener]) -> None:
        """Listen on for a late answer, which now completes ``done`` (a later attempt)."""
        self.retired = True
        self.done = done
        asyncio.get_running_loop().add_reader(self.fd, _on_readable, self)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        self.sock.close()

    def parse(self, data: bytes) -> UpstreamAnswer:
        answer = parse_upstream_response(
            data, self.msg_id, self.question, restore_name=self.qname, max_ttl=self.max_ttl
        )
        cookies = self.cookies
        if cookies is not None:
            if not cookies.learn(self.server.host, response_option(data, OPTION_COOKIE)):
                raise BadUpstreamResponse("client cookie is not ours")
            if answer.rcode == RCODE_BADCOOKIE:
                raise _BadCookie("BADCOOKIE")
        return answer

    def fail(self, exc: BaseException) -> None:
        """This socket is of no more use: fail the attempt, or if the attempt already timed
        out (it only lingers for a late answer), just stop reading it."""
        self.dead = True
        if self.retired:
            asyncio.get_running_loop().remove_reader(self.fd)
        else:
            self.done.set_exception(exc)


def _on_readable(want: _Reply) -> None:
    """Reader callback of an upstream socket: take the one datagram that answers our query.

    A bare reader callback rather than a datagram transport: measured ~12 us cheaper per
    exchange, which is most of the agent's own cost of a cache miss.
    """
    done = want.done
    if done.done():
        # Nobody waits now (between two attempts of the query, or during a TCP retry): stop
        # reading; the next attempt re-arms the reader of every socket that still listens.
        asyncio.get_running_loop().remove_reader(want.fd)
        return
    sock = want.sock
    while not done.done():
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return
        except OSError as exc:
            # ICMP port unreachable on a connected socket: the upstream is not there; fail
            # now rather than at the timeout.
            want.fail(exc)
            return
        try:
            answer = want.parse(data)
        except CaseMismatch:
            # Right ID, case lost: an upstream that does not keep case, or a lucky forger.
            # Neither is trusted over UDP; TCP settles it.
            want.fail(_Unwanted("case"))
            return
        except _BadCookie:
            want.fail(_Unwanted("badcookie"))  # its cookie is learned; TCP answers anyway
            return
        except BadUpstreamResponse as exc:
            # RFC 5452 §9.1: a mismatch may be a spoofing attempt; ignore it and keep waiting,
            # unless there are so many that someone is flooding this port.
            want.unwanted += 1
            log.debug("upstream.reply_rejected", extra=fields(reason=str(exc)))
            if want.unwanted > want.unwanted_limit:
                want.fail(_Unwanted("flood"))
                return
            continue
        want.answer = answer
        done.set_result(want)


class _StreamReply:
    """One attempt of a query to an encrypted upstream: a task on its connection that
    completes the current attempt's future, or keeps its answer for the next one."""

    __slots__ = ("answer", "dead", "done", "question", "retired", "server", "task")

    def __init__(self, server: UpstreamAddress, done: asyncio.Future[_Listener]) -> None:
        self.server = server
        self.done = done
        self.question = b""  # never truncated: nothing is asked again with it
        self.retired = False
        self.dead = False
        self.answer: UpstreamAnswer | None = None
        self.task: asyncio.Task[UpstreamAnswer] | None = None

    def start(self, work: Coroutine[Any, Any, UpstreamAnswer]) -> None:
        self.task = asyncio.get_running_loop().create_task(work)
        self.task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[UpstreamAnswer]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.dead = True
            if not self.retired and not self.done.done():
                self.done.set_exception(exc)
            return
        self.answer = task.result()
        if not self.done.done():
            self._deliver(self.done)
        # else: it came between two attempts; the next one's rearm() delivers it

    def rearm(self, done: asyncio.Future[_Listener]) -> None:
        self.retired = True
        self.done = done
        if self.answer is not None and not done.done():
            self._deliver(done)

    def _deliver(self, done: asyncio.Future[_Listener]) -> None:
        # Once: an answer that was used (a SERVFAIL the query went past) must not win the
        # next attempt too, as a UDP socket's one datagram cannot.
        self.dead = True
        done.set_result(self)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


_Listener = _Reply | _StreamReply


def _close(listening: list[_Listener]) -> None:
    for want in listening:
        want.close()


def _upstream_error(
    server: UpstreamAddress, exc: BaseException, began: float, deadline: float
) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{server}: no answer in {deadline - began:.2f}s")
    if isinstance(exc, StreamFailure):
        return UpstreamError(f"{server}: {exc}")
    if isinstance(exc, OSError):
        return UpstreamError(f"{server}: {exc.strerror or exc}")
    return UpstreamError(f"{server}: bad TCP answer: {exc}")


class UpstreamClient:
    """Asks the configured upstreams, in order of health, within a bounded time."""

    def __init__(
        self,
        upstreams: Sequence[UpstreamAddress] = (),
        *,
        attempt_timeout: float = 0.5,  # the agent's defaults (agent/config.py)
        query_timeout: float = 1.5,
        down_base: float = 1.0,
        down_max: float = 30.0,
        max_ttl: int = 86_400,
        unwanted_limit: int = 10,
        upstream_ca: Path | None = None,
        idle_timeout: float = 10.0,
        cookies: ClientCookies | None = None,
        socket_mark: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``cookies``: send DNS cookies to plain upstreams (``--upstream-cookies``)."""
        self.cookies = cookies
        self.attempt_timeout = attempt_timeout
        self.query_timeout = query_timeout
        self.down_base = down_base
        self.down_max = down_max
        self.max_ttl = max_ttl
        self.unwanted_limit = unwanted_limit
        self.clock = clock
        self.upstream_ca = upstream_ca
        self.idle_timeout = idle_timeout
        self.socket_mark = socket_mark  # SO_MARK of plain-DNS sockets: node capture exempts it
        self._tls: ssl.SSLContext | None = None  # made at the first encrypted query
        self._streams: dict[UpstreamAddress, DotClient | DohClient] = {}
        self.servers: list[Upstream] = []
        self.unwanted_abandoned = 0  # sockets given up for too many unwanted replies
        self.case_lost = 0  # replies with our ID but not our 0x20 case: asked over TCP
        self.badcookie = 0  # BADCOOKIE replies (the upstream wanted its cookie): over TCP
        self._inflight: dict[Key, asyncio.Future[UpstreamAnswer]] = {}
        self._probes: dict[UpstreamAddress, asyncio.TimerHandle] = {}  # of down upstreams
        self._probing: set[UpstreamAddress] = set()  # probes in flight
        self._background: set[asyncio.Task[Any]] = set()
        self.set_upstreams(upstreams)

    def set_upstreams(self, upstreams: Sequence[UpstreamAddress]) -> None:
        """Replace the list; an upstream that stays keeps its health record.

        A loop mark is not kept: the loop check that follows a change decides afresh. (A
        loop meanwhile does not multiply queries: the looped query comes back as the same
        question and joins the in-flight one, so it ends at the timeout.)
        """
        old = {s.address: s for s in self.servers}
        servers = []
        for index, address in enumerate(dict.fromkeys(upstreams)):
            previous = old.get(address)
            server = Upstream(address, index)
            if previous is not None:
                server.failures, server.suspect = previous.failures, previous.suspect
                server.downs, server.down_until = previous.downs, previous.down_until
                server.queries, server.timeouts = previous.queries, previous.timeouts
            servers.append(server)
        self.servers = servers
        for address in [a for a in self._streams if a not in upstreams]:
            self.spawn(self._streams.pop(address).close())

    def disable(self, address: UpstreamAddress, reason: str) -> bool:
        """Never use ``address`` again (until the list changes); False if it already was."""
        changed = False
        for server in self.servers:
            if server.address == address and server.disabled is None:
                server.disabled = reason
                changed = True
        return changed

    def usable(self) -> list[Upstream]:
        """Upstreams to try: healthy ones first in configured order, then suspect ones, then
        down ones, the soonest back first."""
        now = self.clock()
        live = [s for s in self.servers if s.disabled is None]
        live.sort(
            key=lambda s: (
                s.down_until > now,
                s.suspect,
                s.down_until if s.down_until > now else 0,
                s.index,
            )
        )
        return live

    def is_up(self, server: Upstream) -> bool:
        """Neither disabled nor marked down (a suspect one is up: see ``all_down``)."""
        return server.disabled is None and server.down_until <= self.clock()

    def all_down(self) -> bool:
        """Whether every upstream is down (or disabled); suspect ones do not count: a slow
        name is no evidence that the server is dead."""
        now = self.clock()
        return all(s.disabled is not None or s.down_until > now for s in self.servers)

    async def resolve(self, qname: bytes, qtype: int, qclass: int) -> UpstreamAnswer:
        """The upstream answer for a question; concurrent identical questions share one query.

        The first asker runs the query in its own task and publishes the outcome on a
        future; later askers wait on that future, shielded, so one of them giving up does
        not cancel it for the rest. (No task of its own per query: a cache miss is the
        agent's most expensive path and a task plus a shield cost ~8 us.)
        """
        key = (qname, qtype, qclass)
        shared = self._inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        shared = asyncio.get_running_loop().create_future()
        self._inflight[key] = shared
        try:
            answer = await self._resolve(qname, qtype, qclass)
        except BaseException as exc:
            failure = exc if isinstance(exc, UpstreamError) else UpstreamError("query abandoned")
            shared.set_exception(failure)
            shared.exception()  # retrieved: nobody may be waiting, and that is fine
            raise
        else:
            shared.set_result(answer)
            return answer
        finally:
            if self._inflight.get(key) is shared:
                del self._inflight[key]

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` on its own (a probe, a refresh after a stale answer) until close()."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed refresh or probe is not an error to log

    async def close(self) -> None:
        """Stop the probes and the background refreshes; queries live in their askers' tasks."""
        for timer in self._probes.values():
            timer.cancel()
        self._probes.clear()
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task
        self._inflight.clear()
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            await stream.close()

    async def _resolve(self, qname: bytes, qtype: int, qclass: int) -> UpstreamAnswer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.query_timeout
        fallback: UpstreamAnswer | None = None
        last_error = "no upstream configured"
        # This query's UDP sockets and encrypted attempts, still open for late answers.
        listening: list[_Listener] = []
        try:
            for _ in range(_ROUNDS):
                order = self.usable()
                if not order:
                    break
                for server in order:
                    now = loop.time()
                    if now >= deadline or (listening and self.all_down()):
                        break  # out of time, or every upstream is now known dead
                    attempt_end = min(now + self.attempt_timeout, deadline)
                    source, outcome = await self._ask(
                        server.address, qname, qtype, qclass, attempt_end, listening
                    )
                    self._record(source, outcome)
                    if isinstance(outcome, UpstreamError):
                        last_error = str(outcome)
                        continue
                    if outcome.rcode in _TRY_NEXT:
                        fallback = outcome
                        continue
                    return outcome
                if fallback is not None:
                    break  # someone answered, if unhelpfully: a second round would only repeat it
            if fallback is None and loop.time() < deadline and self._may_answer_late(listening):
                # Every attempt timed out, but an upstream that answers probes may still be
                # recursing: its late answer is worth the rest of the budget.
                source, outcome = await self._ask(None, qname, qtype, qclass, deadline, listening)
                self._record(source, outcome)
                if not isinstance(outcome, UpstreamError):
                    if outcome.rcode not in _TRY_NEXT:
                        return outcome
                    fallback = outcome
        finally:
            _close(listening)
        if fallback is not None:
            return fallback  # every upstream said SERVFAIL/REFUSED: pass the last one on
        raise UpstreamTimeout(f"no upstream answered: {last_error}")

    def _may_answer_late(self, listening: list[_Listener]) -> bool:
        """Whether a socket still listens to an upstream not known to be down."""
        now = self.clock()
        asked = {want.server for want in listening}
        return any(s.address in asked and s.down_until <= now for s in self.servers)

    async def _ask(
        self,
        server: UpstreamAddress | None,
        qname: bytes,
        qtype: int,
        qclass: int,
        deadline: float,
        listening: list[_Listener],
    ) -> tuple[UpstreamAddress | None, UpstreamAnswer | UpstreamError]:
        """One attempt of a query: ask ``server`` (None: nobody new) while the query's earlier
        sockets keep listening; the first good answer on any of them wins. Returns the
        outcome and the upstream it concerns: the one that answered, or ``server`` for a
        failure (an earlier socket's failure was counted when its own attempt timed out).
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        done: asyncio.Future[_Listener] = loop.create_future()
        for earlier in listening:  # their late answers now complete this attempt
            if not earlier.dead:
                earlier.rearm(done)
        blame = server
        try:
            question = b""
            if type(server) is HostPort:
                question = self._send_udp(server, qname, qtype, qclass, done, listening)
            elif isinstance(server, TlsUpstream | HttpsUpstream):
                self._send_stream(server, qname, qtype, qclass, done, listening)
            timer = loop.call_at(deadline, _expire, done)
            try:
                winner = await done
            finally:
                timer.cancel()
            blame = winner.server
            answer = winner.answer
            assert answer is not None
            if answer.truncated:  # RFC 7766 §5: ask the same server over TCP
                assert isinstance(winner.server, HostPort)  # streams are never truncated
                question = winner.question
                async with asyncio.timeout_at(deadline):
                    answer = await self._tcp(winner.server, qname, qtype, qclass, question)
        except _Unwanted as exc:  # only the socket of this attempt raises (not retired)
            assert isinstance(server, HostPort)
            self._unwanted(server, exc)
            try:
                async with asyncio.timeout_at(deadline):
                    answer = await self._tcp(server, qname, qtype, qclass, question)
            except (TimeoutError, OSError, BadUpstreamResponse) as tcp_exc:
                return server, _upstream_error(server, tcp_exc, began, deadline)
        except (TimeoutError, OSError, BadUpstreamResponse, StreamFailure) as exc:
            if blame is None:
                return None, UpstreamTimeout("no late answer")
            return blame, _upstream_error(blame, exc, began, deadline)
        return blame, answer

    def _send_udp(
        self,
        server: HostPort,
        qname: bytes,
        qtype: int,
        qclass: int,
        done: asyncio.Future[_Listener],
        listening: list[_Listener],
    ) -> bytes:
        """Send the query to ``server`` from a fresh socket that completes ``done``; the
        question as sent (0x20 case)."""
        sent = randomize_case(qname, random_bytes(len(qname)))
        question = build_question(sent, qtype, qclass)
        msg_id = random_id()
        family = socket.AF_INET6 if server.family_v6 else socket.AF_INET
        # The C socket type, not socket.socket: the Python subclass's constructor and
        # close() cost ~5 us more per query, and nothing here needs what it adds.
        sock = _socket.socket(family, socket.SOCK_DGRAM)
        cookies = self.cookies
        want = _Reply(
            server,
            sock,
            done,
            msg_id,
            question,
            qname,
            self.max_ttl,
            self.unwanted_limit,
            cookies,
        )
        listening.append(want)  # closed by the query, whatever happens next
        try:
            if self.socket_mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.socket_mark)
            sock.setblocking(False)
            # connect() binds a fresh random ephemeral port and makes the kernel drop
            # datagrams from any other address or port.
            sock.connect((server.host, server.port))
            asyncio.get_running_loop().add_reader(want.fd, _on_readable, want)
            cookie = b"" if cookies is None else cookies.option(server.host)
            sock.send(build_upstream_query(question[:-4], qtype, qclass, msg_id, cookie))
        except OSError:
            want.dead = True  # never sent: nothing to listen for
            raise
        return question

    def _send_stream(
        self,
        server: TlsUpstream | HttpsUpstream,
        qname: bytes,
        qtype: int,
        qclass: int,
        done: asyncio.Future[_Listener],
        listening: list[_Listener],
    ) -> None:
        """Ask an encrypted upstream on its connection, in a task that completes ``done``."""
        want = _StreamReply(server, done)
        listening.append(want)
        want.start(self._stream(server).query(Question(qname, qtype, qclass, self.max_ttl)))

    def _stream(self, server: TlsUpstream | HttpsUpstream) -> DotClient | DohClient:
        stream = self._streams.get(server)
        if stream is None:
            if self._tls is None:
                self._tls = client_context(self.upstream_ca)
            if isinstance(server, TlsUpstream):
                stream = DotClient(server, self._tls, self.idle_timeout, self.query_timeout)
            else:
                # Imported here: httpx and h2 take ~80 ms to import, which an agent
                # without a DoH upstream (most) never pays, nor its cold start.
                from agent.encrypted.doh import DohClient

                stream = DohClient(server, self._tls, self.idle_timeout)
            self._streams[server] = stream
        return stream

    def _unwanted(self, server: HostPort, exc: _Unwanted) -> None:
        if exc.reason == "flood":
            self.unwanted_abandoned += 1
            log.warning("upstream.unwanted_replies", extra=fields(upstream=str(server)))
        elif exc.reason == "case":  # an upstream that does not keep case does so every time
            self.case_lost += 1
            log.debug("upstream.case_lost", extra=fields(upstream=str(server)))
        else:
            self.badcookie += 1
            log.debug("upstream.badcookie", extra=fields(upstream=str(server)))

    def _server(self, address: UpstreamAddress) -> Upstream | None:
        return next((s for s in self.servers if s.address == address), None)

    def _record(
        self, address: UpstreamAddress | None, outcome: UpstreamAnswer | UpstreamError
    ) -> None:
        server = None if address is None else self._server(address)
        if server is None:
            return  # nobody new was asked, or the list changed meanwhile
        server.queries += 1
        if isinstance(outcome, UpstreamTimeout):
            server.timeouts += 1
        if isinstance(outcome, UpstreamError):
            self._attempt_failed(server, str(outcome))
        else:
            self._answered(server)

    def _attempt_failed(self, server: Upstream, reason: str) -> None:
        """A client attempt got no answer: suspect, or down if that is not the first sign."""
        server.failures += 1
        if server.down_until > self.clock() or server.failures >= _DOWN_AFTER:
            self._mark_down(server, reason)
            return
        if not server.suspect:
            server.suspect = True
            log.debug("upstream.suspect", extra=fields(upstream=str(server.address), reason=reason))
        self._start_probe(server.address)

    def _mark_down(self, server: Upstream, reason: str) -> None:
        server.suspect = False
        server.downs += 1
        backoff = min(self.down_max, self.down_base * 2 ** min(server.downs - 1, 30))
        server.down_until = self.clock() + backoff
        self._schedule_probe(server, backoff)
        level = logging.WARNING if server.downs == 1 else logging.DEBUG
        log.log(
            level,
            "upstream.down",
            extra=fields(
                upstream=str(server.address),
                reason=reason,
                failures=server.failures,
                retry_in=round(backoff, 3),
            ),
        )

    @property
    def probe_timeout(self) -> float:
        return self.attempt_timeout * _PROBE_SHARE

    def _schedule_probe(self, server: Upstream, backoff: float) -> None:
        """Probe ``server`` one probe timeout before its backoff ends (a failed probe then
        extends the mark before any client query could be sent to it)."""
        timer = self._probes.pop(server.address, None)
        if timer is not None:
            timer.cancel()
        delay = max(0.0, backoff - self.probe_timeout)
        loop = asyncio.get_running_loop()
        self._probes[server.address] = loop.call_later(delay, self._probe_due, server.address)

    def _probe_due(self, address: UpstreamAddress) -> None:
        self._probes.pop(address, None)
        self._start_probe(address)

    def _start_probe(self, address: UpstreamAddress) -> None:
        if address not in self._probing:  # one probe per upstream at a time
            self._probing.add(address)
            self.spawn(self._probe(address))

    async def _probe(self, address: UpstreamAddress) -> None:
        try:
            server = self._server(address)
            if server is None or server.disabled is not None:
                return  # gone from the list, or looping
            if not server.suspect and not server.down_until:
                return  # already back through a client query
            try:
                await self.exchange(
                    address, _PROBE_NAME, _PROBE_TYPE, dnswire.CLASS_IN, self.probe_timeout
                )
            except UpstreamError as exc:
                self._mark_down(server, f"probe: {exc}")
            else:
                self._back(server)  # any answer, even SERVFAIL, says it is there
        finally:
            self._probing.discard(address)

    def _back(self, server: Upstream) -> None:
        """The server answered something: no longer suspect nor down. (``failures`` and
        ``downs`` stay: only an answer to a client query shows that it resolves.)"""
        server.suspect = False
        if server.down_until:
            log.info(
                "upstream.up", extra=fields(upstream=str(server.address), after=server.failures)
            )
            server.down_until = 0.0

    def _answered(self, server: Upstream) -> None:
        self._back(server)
        server.failures = 0
        server.downs = 0

    async def exchange(
        self, server: UpstreamAddress, qname: bytes, qtype: int, qclass: int, budget: float
    ) -> UpstreamAnswer:
        """One question to one server, on its own (probes, the loop check): UDP, and TCP when
        the UDP answer is truncated, or the server's encrypted transport. The caller judges
        the server by the outcome.

        Raises UpstreamError (UpstreamTimeout when it did not answer in time).
        """
        loop = asyncio.get_running_loop()
        listening: list[_Listener] = []
        try:
            _, outcome = await self._ask(
                server, qname, qtype, qclass, loop.time() + budget, listening
            )
        finally:
            _close(listening)
        if isinstance(outcome, UpstreamError):
            raise outcome
        return outcome

    async def _marked_tcp(self, server: HostPort) -> socket.socket:
        """A TCP socket connected to ``server`` carrying the socket mark (set before connect,
        so the SYN carries it too)."""
        family = socket.AF_INET6 if server.family_v6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.socket_mark)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _tcp(
        self, server: HostPort, qname: bytes, qtype: int, qclass: int, question: bytes
    ) -> UpstreamAnswer:
        msg_id = random_id()
        if self.socket_mark:
            reader, writer = await asyncio.open_connection(sock=await self._marked_tcp(server))
        else:
            reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            cookies = self.cookies
            cookie = b"" if cookies is None else cookies.option(server.host)
            writer.write(frame(build_upstream_query(question[:-4], qtype, qclass, msg_id, cookie)))
            frames = FrameDecoder()
            while True:  # skip anything that is not our answer, as over UDP
                data = frames.next_message()
                if data is None:
                    chunk = await reader.read(_TCP_READ)
                    if not chunk:
                        raise BadUpstreamResponse("the connection closed before the answer")
                    frames.feed(chunk)
                    continue
                try:
                    answer = parse_upstream_response(
                        data,
                        msg_id,
                        question,
                        restore_name=qname,
                        max_ttl=self.max_ttl,
                        exact_case=False,  # no off-path forger on TCP: case is no defence
                    )
                except BadUpstreamResponse:
                    continue
                if cookies is not None:  # learned only: no off-path forger here either
                    cookies.learn(server.host, response_option(data, OPTION_COOKIE))
                return answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
