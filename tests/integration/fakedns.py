"""Test helpers: a background event loop, and a programmable upstream DNS server on loopback.

``FakeUpstream`` is CoreDNS's test idea: a real DNS server over UDP and TCP on a free
loopback port, started in one line, whose answers, delays, truncation, silence and
misbehaviour (wrong ID or question first) each test programs, and which records every
query it received so tests can count them (caching, coalescing, failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from dnsmesh.tcpframing import FrameDecoder, frame

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread; tests stay synchronous and block on its results."""

    def __init__(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Rule:
    """How the fake answers one (name, type); every field is optional."""

    rcode: int = dns.rcode.NOERROR
    answer: list[str] = field(default_factory=list)  # rdata texts of the question's type
    ttl: int = 300
    soa: tuple[int, int] | None = None  # (SOA TTL, MINIMUM) in the authority section
    delay: float = 0.0
    silent: bool = False
    truncate_udp: bool = False  # over UDP: TC=1 and no records, so the client asks over TCP
    wrong_id_first: bool = False  # send a reply with another ID before the real one
    wrong_question_first: bool = False  # send a reply for another name before the real one
    spoof_first: str | None = None  # over UDP, this A answer first from another port (forged)
    forward_to: tuple[str, int] | None = None  # relay the query there (loop tests)
    ede: int | None = None  # an Extended DNS Error in the reply's OPT (e.g. 3, Stale Answer)
    lose_case: bool = False  # echo the question name lower-cased (ignores 0x20)
    # DNS Cookies: answer a query's client cookie with it and SERVER_COOKIE (RFC 7873);
    # over UDP, first a reply with another client cookie and this A answer (a forgery that
    # got the ID, port and case right); over UDP, BADCOOKIE (with our cookie) instead.
    cookies: bool = False
    forged_cookie_first: str | None = None
    badcookie_udp: bool = False


@dataclass(frozen=True)
class Received:
    transport: str  # "udp" or "tcp"
    name: str  # lower-case text without the trailing dot
    qtype: str  # "A", "AAAA", ...
    source: tuple[str, int]
    id: int
    at: float  # time.monotonic() when it arrived
    sent_name: str = ""  # the name as it came, case kept (0x20 tests)
    cookie: bytes | None = None  # the query's COOKIE option (client and server cookie)


class FakeUpstream:
    """A DNS server for tests; ``on(name, type, ...)`` programs it, ``count(...)`` inspects it."""

    def __init__(self, loop_thread: LoopThread, host: str = "127.0.0.1", port: int = 0) -> None:
        self.loop_thread = loop_thread
        self.host = host
        self.port = port
        self.rules: dict[tuple[str, str], Rule] = {}
        self.default = Rule(rcode=dns.rcode.NXDOMAIN, soa=(60, 60))
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # -- programming -------------------------------------------------------------------
    def on(self, name: str, qtype: str = "A", **rule: Any) -> FakeUpstream:
        self.rules[(name.lower().rstrip("."), qtype.upper())] = Rule(**rule)
        return self

    def answer(self, name: str, qtype: str, *rdata: str, ttl: int = 300, **rule: Any) -> None:
        self.on(name, qtype, answer=list(rdata), ttl=ttl, **rule)

    def nxdomain(self, name: str, qtype: str = "A", soa_ttl: int = 60, minimum: int = 60) -> None:
        self.on(name, qtype, rcode=dns.rcode.NXDOMAIN, soa=(soa_ttl, minimum))

    def count(
        self, name: str | None = None, qtype: str | None = None, transport: str | None = None
    ) -> int:
        with self._lock:
            return sum(
                1
                for r in self.received
                if (name is None or r.name == name.lower().rstrip("."))
                and (qtype is None or r.qtype == qtype.upper())
                and (transport is None or r.transport == transport)
            )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        self.loop_thread.run(self._start())
        return self

    def stop(self) -> None:
        self.loop_thread.run(self._stop())

    def forging_socket(self) -> socket.socket:
        """A duplicate of the UDP socket: what it sends comes from this server's address and
        port, as an off-path forger's spoofed datagrams would; the caller closes it."""
        assert self._udp is not None
        fd = self._udp.get_extra_info("socket").fileno()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        return socket.fromfd(fd, family, socket.SOCK_DGRAM)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        # Same port for UDP and TCP; retry if the UDP port is taken for TCP.
        for _ in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpServer(self), local_addr=(self.host, self.port)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await loop.create_server(lambda: _TcpServer(self), self.host, port)
            except OSError:
                transport.close()
                if self.port:
                    raise
                continue
            self._udp = transport  # type: ignore[assignment]
            self.port = port
            return
        raise OSError("no free port for the fake upstream")

    async def _stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    # -- answering ---------------------------------------------------------------------
    def handle(
        self, data: bytes, transport: str, source: tuple[str, int], send: Callable[[bytes], None]
    ) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        if not query.question:
            return
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        qtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.received.append(
                Received(
                    transport,
                    name,
                    qtype,
                    source,
                    query.id,
                    time.monotonic(),
                    question.name.to_text().rstrip("."),
                    _cookie_of(query),
                )
            )
        rule = self.rules.get((name, qtype)) or self.rules.get((name, "*")) or self.default
        if rule.silent:
            return
        task = asyncio.get_running_loop().create_task(
            self._reply(query, rule, transport, send, source)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _reply(
        self,
        query: dns.message.Message,
        rule: Rule,
        transport: str,
        send: Callable[[bytes], None],
        source: tuple[str, int],
    ) -> None:
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.forward_to is not None:
            host, port = rule.forward_to
            with contextlib.suppress(Exception):
                relayed = await dns.asyncquery.udp(query, host, timeout=2.0, port=port)
                send(relayed.to_wire())
            return
        response = build_reply(query, rule, truncated=rule.truncate_udp and transport == "udp")
        if rule.lose_case:
            end = 12 + len(query.question[0].name.to_wire())
            response = response[:12] + response[12:end].lower() + response[end:]
        cookie = _cookie_of(query)
        if rule.cookies and rule.forged_cookie_first is not None and transport == "udp":
            forged = dns.message.from_wire(response)  # sent whether the query had a cookie
            forged.answer = [
                dns.rrset.from_text(
                    query.question[0].name, 300, "IN", "A", rule.forged_cookie_first
                )
            ]
            send(_with_cookie(forged.to_wire(), b"forged!!" + SERVER_COOKIE))
        if rule.cookies and cookie is not None:
            if rule.badcookie_udp and transport == "udp":
                bad = dns.message.make_response(query, our_payload=1232)
                send(_with_cookie(bad.to_wire(), cookie[:8] + SERVER_COOKIE, rcode=23))
                return
            response = _with_cookie(response, cookie[:8] + SERVER_COOKIE)
        if rule.wrong_id_first:
            bad = dns.message.from_wire(response)
            bad.id = (query.id + 1) & 0xFFFF
            bad.answer = []
            bad.set_rcode(dns.rcode.NXDOMAIN)
            send(bad.to_wire())
        if rule.spoof_first is not None and transport == "udp":
            forged = dns.message.make_response(query)
            forged.answer.append(
                dns.rrset.from_text(query.question[0].name, 300, "IN", "A", rule.spoof_first)
            )
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
                spoofer.bind((self.host, 0))  # right ID and question, wrong source port
                spoofer.sendto(forged.to_wire(), source)
            await asyncio.sleep(0.05)
        if rule.wrong_question_first:
            other = dns.message.make_query("spoofed.example.", query.question[0].rdtype)
            other.id = query.id
            forged = dns.message.make_response(other)
            forged.set_rcode(dns.rcode.NXDOMAIN)
            send(forged.to_wire())
        send(response)


SERVER_COOKIE = b"fake-upstream-16"  # what the fake hands out as its server cookie


def _cookie_of(message: dns.message.Message) -> bytes | None:
    for option in message.options:
        if isinstance(option, dns.edns.CookieOption):
            return option.client + option.server
    return None


def _with_cookie(wire: bytes, cookie: bytes, rcode: int | None = None) -> bytes:
    message = dns.message.from_wire(wire)
    options = [o for o in message.options if o.otype != dns.edns.OptionType.COOKIE]
    message.use_edns(0, payload=1232, options=[*options, dns.edns.GenericOption(10, cookie)])
    if rcode is not None:
        message.set_rcode(rcode)
    return message.to_wire(max_size=65535)


def build_reply(query: dns.message.Message, rule: Rule, *, truncated: bool) -> bytes:
    response = dns.message.make_response(query, recursion_available=True, our_payload=1232)
    response.set_rcode(rule.rcode)
    question = query.question[0]
    if truncated:
        response.flags |= dns.flags.TC
        return response.to_wire()
    if rule.ede is not None:
        response.use_edns(0, payload=1232, options=[dns.edns.EDEOption(rule.ede)])
    if rule.answer:
        response.answer.append(
            dns.rrset.from_text_list(question.name, rule.ttl, "IN", question.rdtype, rule.answer)
        )
    if rule.soa is not None:
        soa_ttl, minimum = rule.soa
        zone = question.name.parent() if len(question.name) > 2 else question.name
        host = zone if zone != dns.name.root else dns.name.from_text("invalid.")
        response.authority.append(
            dns.rrset.from_text(
                zone, soa_ttl, "IN", "SOA", f"ns.{host} host.{host} 1 3600 600 86400 {minimum}"
            )
        )
    return response.to_wire(max_size=65535)


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self.transport
        assert transport is not None

        def send(wire: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(wire, addr)

        self.fake.handle(data, "udp", addr, send)


class _TcpServer(asyncio.Protocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.frames = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)
        while (message := self.frames.next_message()) is not None:
            transport = self.transport
            assert transport is not None

            def send(wire: bytes, transport: asyncio.Transport = transport) -> None:
                if not transport.is_closing():
                    transport.write(frame(wire))

            self.fake.handle(message, "tcp", self.peer, send)
