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

Upstreams that fail are avoided for a backoff that doubles per consecutive failure, yet
never dropped: they stay at the end of the order (tried when the others fail too) and move
back to the front once their backoff has run out. While an upstream is down the client
itself probes it (``. NS``) shortly before its backoff runs out, so recovery is noticed, and
a still-dead upstream re-marked, without a client query paying an attempt timeout for it.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config import HostPort
from dnsmesh import dnswire
from dnsmesh.dnsforward import (
    BadUpstreamResponse,
    CaseMismatch,
    UpstreamAnswer,
    build_question,
    build_upstream_query,
    parse_upstream_response,
    randomize_case,
)
from dnsmesh.errors import UpstreamError, UpstreamTimeout
from dnsmesh.logs import fields
from dnsmesh.tcpframing import FrameDecoder, frame

log = logging.getLogger(__name__)

Key = tuple[bytes, int, int]
_TCP_READ = 65535 + 2  # one whole message at most per read
# Rounds over the upstream list per query: a second round gives a lone upstream one retry
# (a lost datagram) without spinning when every upstream refuses at once.
_ROUNDS = 2
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
    """This query's UDP socket is not to be trusted: too many replies that were not ours, or
    ours with the case of the name lost."""

    def __init__(self, flood: bool) -> None:
        super().__init__("unwanted replies" if flood else "case lost")
        self.flood = flood


@dataclass(slots=True)
class Upstream:
    """One upstream and what we learned about it."""

    address: HostPort
    index: int  # configured position: the preference among healthy upstreams
    failures: int = 0  # consecutive
    down_until: float = 0.0  # clock time before which it is tried only as a last resort
    disabled: str | None = None  # never used again (a forwarding loop through it)


def _expire(done: asyncio.Future[UpstreamAnswer]) -> None:
    if not done.done():
        done.set_exception(TimeoutError())


class _Reply:
    """What one upstream socket waits for, and how many wrong replies it has seen."""

    __slots__ = ("done", "max_ttl", "msg_id", "qname", "question", "unwanted", "unwanted_limit")

    def __init__(
        self,
        done: asyncio.Future[UpstreamAnswer],
        msg_id: int,
        question: bytes,
        qname: bytes,
        max_ttl: int,
        unwanted_limit: int,
    ) -> None:
        self.done = done
        self.msg_id = msg_id
        self.question = question  # as sent, in 0x20 case
        self.qname = qname  # as cached (lower case)
        self.max_ttl = max_ttl
        self.unwanted_limit = unwanted_limit
        self.unwanted = 0

    def parse(self, data: bytes) -> UpstreamAnswer:
        return parse_upstream_response(
            data, self.msg_id, self.question, restore_name=self.qname, max_ttl=self.max_ttl
        )


def _on_readable(sock: _socket.socket, want: _Reply) -> None:
    """Reader callback of an upstream socket: take the one datagram that answers our query.

    A bare reader callback rather than a datagram transport: measured ~12 us cheaper per
    exchange, which is most of the agent's own cost of a cache miss.
    """
    done = want.done
    while not done.done():
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return
        except OSError as exc:
            # ICMP port unreachable on a connected socket: the upstream is not there; fail
            # now rather than at the timeout.
            done.set_exception(exc)
            return
        try:
            answer = want.parse(data)
        except CaseMismatch:
            # Right ID, case lost: an upstream that does not keep case, or a lucky forger.
            # Neither is trusted over UDP; TCP settles it.
            done.set_exception(_Unwanted(flood=False))
            return
        except BadUpstreamResponse as exc:
            # RFC 5452 §9.1: a mismatch may be a spoofing attempt; ignore it and keep waiting,
            # unless there are so many that someone is flooding this port.
            want.unwanted += 1
            log.debug("upstream.reply_rejected", extra=fields(reason=str(exc)))
            if want.unwanted > want.unwanted_limit:
                done.set_exception(_Unwanted(flood=True))
            continue
        done.set_result(answer)


class UpstreamClient:
    """Asks the configured upstreams, in order of health, within a bounded time."""

    def __init__(
        self,
        upstreams: Sequence[HostPort] = (),
        *,
        attempt_timeout: float = 0.5,  # the agent's defaults (agent/config.py)
        query_timeout: float = 1.5,
        down_base: float = 1.0,
        down_max: float = 30.0,
        max_ttl: int = 86_400,
        unwanted_limit: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempt_timeout = attempt_timeout
        self.query_timeout = query_timeout
        self.down_base = down_base
        self.down_max = down_max
        self.max_ttl = max_ttl
        self.unwanted_limit = unwanted_limit
        self.clock = clock
        self.servers: list[Upstream] = []
        self.unwanted_abandoned = 0  # sockets given up for too many unwanted replies
        self.case_lost = 0  # replies with our ID but not our 0x20 case: asked over TCP
        self._inflight: dict[Key, asyncio.Future[UpstreamAnswer]] = {}
        self._probes: dict[HostPort, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.set_upstreams(upstreams)

    def set_upstreams(self, upstreams: Sequence[HostPort]) -> None:
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
                server.failures, server.down_until = previous.failures, previous.down_until
            servers.append(server)
        self.servers = servers

    def disable(self, address: HostPort, reason: str) -> bool:
        """Never use ``address`` again (until the list changes); False if it already was."""
        changed = False
        for server in self.servers:
            if server.address == address and server.disabled is None:
                server.disabled = reason
                changed = True
        return changed

    def usable(self) -> list[Upstream]:
        """Upstreams to try, healthy ones first in configured order, then the soonest back."""
        now = self.clock()
        live = [s for s in self.servers if s.disabled is None]
        live.sort(
            key=lambda s: (s.down_until > now, s.down_until if s.down_until > now else 0, s.index)
        )
        return live

    def all_down(self) -> bool:
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

    async def _resolve(self, qname: bytes, qtype: int, qclass: int) -> UpstreamAnswer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.query_timeout
        fallback: UpstreamAnswer | None = None
        last_error = "no upstream configured"
        for _ in range(_ROUNDS):
            order = self.usable()
            if not order:
                break
            for server in order:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    answer = await self.exchange(
                        server.address, qname, qtype, qclass, min(self.attempt_timeout, remaining)
                    )
                except UpstreamError as exc:
                    last_error = str(exc)
                    self._failed(server, last_error)
                    continue
                self._answered(server)
                if answer.rcode in _TRY_NEXT:
                    fallback = answer
                    continue
                return answer
            if fallback is not None:
                break  # someone answered, if unhelpfully: a second round would only repeat it
        if fallback is not None:
            return fallback  # every upstream said SERVFAIL/REFUSED: pass the last one on
        raise UpstreamTimeout(f"no upstream answered: {last_error}")

    def _failed(self, server: Upstream, reason: str) -> None:
        server.failures += 1
        backoff = min(self.down_max, self.down_base * 2 ** min(server.failures - 1, 30))
        server.down_until = self.clock() + backoff
        self._schedule_probe(server, backoff)
        level = logging.WARNING if server.failures == 1 else logging.DEBUG
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

    def _schedule_probe(self, server: Upstream, backoff: float) -> None:
        """Probe ``server`` one attempt timeout before its backoff ends (a failed probe then
        extends the mark before any client query could be sent to it)."""
        timer = self._probes.pop(server.address, None)
        if timer is not None:
            timer.cancel()
        delay = max(0.0, backoff - self.attempt_timeout)
        loop = asyncio.get_running_loop()
        self._probes[server.address] = loop.call_later(delay, self._probe_due, server.address)

    def _probe_due(self, address: HostPort) -> None:
        self._probes.pop(address, None)
        self.spawn(self._probe(address))

    async def _probe(self, address: HostPort) -> None:
        server = next((s for s in self.servers if s.address == address), None)
        if server is None or server.disabled is not None or not server.failures:
            return  # gone from the list, looping, or already back through a client query
        try:
            await self.exchange(
                address, _PROBE_NAME, _PROBE_TYPE, dnswire.CLASS_IN, self.attempt_timeout
            )
        except UpstreamError as exc:
            self._failed(server, f"probe: {exc}")
        else:
            self._answered(server)  # any answer, even SERVFAIL, says it is there

    def _answered(self, server: Upstream) -> None:
        if server.failures:
            log.info(
                "upstream.up", extra=fields(upstream=str(server.address), after=server.failures)
            )
            server.failures = 0
            server.down_until = 0.0

    async def exchange(
        self, server: HostPort, qname: bytes, qtype: int, qclass: int, budget: float
    ) -> UpstreamAnswer:
        """One question to one server: UDP, and TCP when the UDP answer is truncated.

        Raises UpstreamError (UpstreamTimeout when it did not answer in time).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        sent = randomize_case(qname, random_bytes(len(qname)))
        question = build_question(sent, qtype, qclass)
        try:
            try:
                answer = await self._udp(server, qname, qtype, qclass, question, deadline)
                retry_tcp = answer.truncated  # RFC 7766 §5: retry the same server over TCP
            except _Unwanted as exc:
                if exc.flood:
                    self.unwanted_abandoned += 1
                    log.warning("upstream.unwanted_replies", extra=fields(upstream=str(server)))
                else:  # an upstream that does not keep case does so on every query
                    self.case_lost += 1
                    log.debug("upstream.case_lost", extra=fields(upstream=str(server)))
                retry_tcp = True
            if retry_tcp:
                async with asyncio.timeout_at(deadline):
                    answer = await self._tcp(server, qname, qtype, qclass, question)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{server}: no answer in {budget:.2f}s") from exc
        except OSError as exc:
            raise UpstreamError(f"{server}: {exc.strerror or exc}") from exc
        except BadUpstreamResponse as exc:
            raise UpstreamError(f"{server}: bad TCP answer: {exc}") from exc
        return answer

    async def _udp(
        self,
        server: HostPort,
        qname: bytes,
        qtype: int,
        qclass: int,
        question: bytes,
        deadline: float,
    ) -> UpstreamAnswer:
        loop = asyncio.get_running_loop()
        msg_id = random_id()
        family = socket.AF_INET6 if server.family_v6 else socket.AF_INET
        # The C socket type, not socket.socket: the Python subclass's constructor and
        # close() cost ~5 us more per query, and nothing here needs what it adds.
        sock = _socket.socket(family, socket.SOCK_DGRAM)
        done: asyncio.Future[UpstreamAnswer] = loop.create_future()
        want = _Reply(done, msg_id, question, qname, self.max_ttl, self.unwanted_limit)
        # A plain timer rather than an asyncio.timeout context: cheaper, and all it has to
        # do is fail the one future we wait on.
        timer = loop.call_at(deadline, _expire, done)
        fd = -1
        try:
            sock.setblocking(False)
            # connect() binds a fresh random ephemeral port and makes the kernel drop
            # datagrams from any other address or port.
            sock.connect((server.host, server.port))
            fd = sock.fileno()
            loop.add_reader(fd, _on_readable, sock, want)
            sock.send(build_upstream_query(question[:-4], qtype, qclass, msg_id))
            return await done
        finally:
            timer.cancel()
            if fd >= 0:
                loop.remove_reader(fd)
            sock.close()

    async def _tcp(
        self, server: HostPort, qname: bytes, qtype: int, qclass: int, question: bytes
    ) -> UpstreamAnswer:
        msg_id = random_id()
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            packet = build_upstream_query(question[:-4], qtype, qclass, msg_id)
            writer.write(frame(packet))
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
                    return parse_upstream_response(
                        data,
                        msg_id,
                        question,
                        restore_name=qname,
                        max_ttl=self.max_ttl,
                        exact_case=False,  # no off-path forger on TCP: case is no defence
                    )
                except BadUpstreamResponse:
                    continue
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
