"""DNS listeners over UDP and TCP: move bytes between sockets and the query entry, nothing more.

What a query gets is decided by agent.entry.QueryEntry, the same for both transports; a
listener only reads, frames, fits a response to UDP and writes.

Only UDP is rate limited (``--rate-limit``, checked before a datagram is even parsed, but
for a datagram over the limit, which is let through if it carries a valid DNS cookie): a
UDP source address can be forged, so a flood "from" a client may be an attack on it, and
the limit's TC=1 slips send real clients to TCP, which must then work. A TCP client has
completed a handshake, so its address is its own, and what it can make us hold is bounded
already (--tcp-max-connections, 64 pipelined queries each, the idle timeout).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from collections import OrderedDict, deque
from typing import Any, cast

from agent.config import HostPort
from agent.entry import CookieForward, QueryEntry
from dnsmesh.dnswire import Query
from dnsmesh.logs import fields
from dnsmesh.tcpframing import FrameDecoder, frame

log = logging.getLogger(__name__)


# Datagrams read per wakeup at most: enough to amortise the wakeup under load, few enough
# that one busy socket does not keep the loop from timers, TCP and the other listeners.
_DRAIN = 64
# Replies held while the socket's send buffer is full. Beyond this, replies are dropped
# and counted: a UDP client retries (RFC 1035 §4.2.1), and holding more would only grow
# memory while the client side is not reading.
_SEND_BACKLOG = 1024
# Larger than any query a client sends over UDP (RFC 6891 §6.2.5 payload sizes top out
# at 4096 in practice); the kernel truncates a longer datagram, which then parses as
# malformed and gets FORMERR.
_RECV_SIZE = 4096


class UdpListener(asyncio.BaseTransport):
    """One UDP socket, read directly: a reader callback drains up to ``_DRAIN`` datagrams
    with ``recvfrom`` and a query answered at once is sent with ``sendto`` right there.

    A raw non-blocking socket rather than a datagram transport: measured ~0.7 us per query
    cheaper (uvloop's transport pays a callback and an address conversion per datagram),
    about a tenth of a policy hit. It subclasses BaseTransport only so the server can hold
    and close it as it does its other transports.
    """

    __slots__ = ("_backlog", "_fd", "_loop", "_receive", "closed", "entry", "sock")

    def __init__(
        self,
        entry: QueryEntry,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__()
        self.entry = entry
        self.sock = sock
        self.closed = False
        self._loop = asyncio.get_running_loop() if loop is None else loop
        self._fd = sock.fileno()
        self._backlog: deque[tuple[bytes, Any]] = deque()
        # Chosen once: without a rate limit, a datagram costs no limit check at all.
        self._receive = self.datagram_received if entry.limiter is None else self._limited
        sock.setblocking(False)
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        received = self._receive
        for _ in range(_DRAIN):
            try:
                data, addr = recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors for earlier replies (a client gone, ECONNREFUSED): nothing to
                # do, keep reading what else is queued.
                log.debug("udp.error", extra=fields(error=str(exc)))
                continue
            received(data, addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        entry = self.entry
        if not entry.accepting:
            return  # draining: a datagram is not accepted; the client retries elsewhere
        wire = entry.answer_now(data, addr[0])
        if wire.__class__ is bytes:  # the common case first: answered at once
            if len(wire) > 512:  # every client takes 512 (RFC 1035 §4.2.1): skip the rest
                wire = entry.fit_udp_reply(wire, data, addr[0])
            if self._backlog:
                self._hold(wire, addr)  # keep replies in order behind those waiting
                return
            try:  # inline, not self.send: this is the hot path
                self.sock.sendto(wire, addr)
            except (BlockingIOError, InterruptedError):
                self._hold(wire, addr)
            except OSError as exc:
                log.debug("udp.send_failed", extra=fields(error=str(exc)))
            return
        if isinstance(wire, Query | CookieForward) and not entry.full():
            entry.spawn(self._forward(wire, addr, len(data)))

    def _limited(self, data: bytes, addr: Any) -> None:
        """``datagram_received`` behind the rate limit (``--rate-limit``): a datagram over
        its source's rate is not parsed; one in ``slip`` gets TC=1, the rest nothing."""
        entry = self.entry
        limiter = entry.limiter
        if (
            limiter is not None
            and not limiter.allow(addr[0], entry.clock())
            # A valid server cookie proves the source (DNS Cookies, agent/entry.py): such
            # a client is exempt, as BIND's RRL exempts it. Checked only over the limit.
            and not entry.valid_cookie(data, addr[0])
        ):
            if entry.accepting:
                slipped = entry.over_limit(data, addr[0])
                if slipped is not None:
                    self.send(slipped, addr)
            return
        self.datagram_received(data, addr)

    async def _forward(self, query: Query | CookieForward, addr: Any, size: int) -> None:
        self.send(await self.entry.forward(query, addr[0], size), addr)

    def send(self, wire: bytes, addr: Any) -> None:
        """sendto, holding the reply while the send buffer is full (dropped when closed)."""
        if self.closed:
            return
        if self._backlog:
            self._hold(wire, addr)
            return
        try:
            self.sock.sendto(wire, addr)
        except (BlockingIOError, InterruptedError):
            self._hold(wire, addr)
        except OSError as exc:
            log.debug("udp.send_failed", extra=fields(error=str(exc)))

    def _hold(self, wire: bytes, addr: Any) -> None:
        backlog = self._backlog
        if len(backlog) >= _SEND_BACKLOG:
            self.entry.counts["dropped"] += 1
            return
        if not backlog:
            self._loop.add_writer(self._fd, self._writable)
        backlog.append((wire, addr))

    def _writable(self) -> None:
        backlog = self._backlog
        sendto = self.sock.sendto
        while backlog:
            wire, addr = backlog[0]
            try:
                sendto(wire, addr)
            except (BlockingIOError, InterruptedError):
                return  # still full: wait for the next writable event
            except OSError as exc:
                log.debug("udp.send_failed", extra=fields(error=str(exc)))
            backlog.popleft()
        self._loop.remove_writer(self._fd)

    def stop_reading(self) -> None:
        """Draining: read no more (a flood would only keep the loop busy discarding it);
        replies to the forwards still in flight go out through the socket."""
        if not self.closed:
            self._loop.remove_reader(self._fd)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        """Stop reading and writing and close the socket; held replies are dropped."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._backlog:
            self._loop.remove_writer(self._fd)
            self._backlog.clear()
        self.sock.close()


class TcpConnections:
    """The open TCP connections, least recently active first, bounded in number."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: OrderedDict[TcpConnection, None] = OrderedDict()
        # Every connection until connection_lost, including those evicted from ``open``
        # whose close still waits for a client that does not read: a stop aborts them all.
        self.live: set[TcpConnection] = set()
        self._none_live: asyncio.Event | None = None

    async def closed(self) -> None:
        """Until every connection is gone (a hand-off waits for lingering ones)."""
        while self.live:
            self._none_live = asyncio.Event()
            await self._none_live.wait()

    def gone(self, conn: TcpConnection) -> None:
        self.open.pop(conn, None)
        self.live.discard(conn)
        if not self.live and self._none_live is not None:
            self._none_live.set()

    def admit(self, conn: TcpConnection) -> bool:
        """Make room for ``conn`` by closing the least recently active idle connection.

        RFC 7766 §6.2.2: a server may close idle connections to save resources. If every
        connection has queries in flight, the newcomer is refused instead.
        """
        if len(self.open) >= self.limit:
            idle = next((c for c in self.open if c.pending == 0), None)
            if idle is None:
                return False
            idle.close("connection limit")
            self.remove(idle)  # now, not at connection_lost: the slot is the newcomer's
        self.open[conn] = None
        return True

    def touch(self, conn: TcpConnection) -> None:
        if conn in self.open:
            self.open.move_to_end(conn)

    def remove(self, conn: TcpConnection) -> None:
        self.open.pop(conn, None)

    def abort_all(self) -> None:
        """Drop every connection now, answers not yet written included (end of a drain)."""
        for conn in list(self.live):
            if conn.transport is not None:
                conn.transport.abort()
        self.live.clear()
        self.open.clear()


class TcpConnection(asyncio.Protocol):
    """One client connection: length-framed queries, pipelined, answered as each is ready.

    RFC 7766 §6.2.1.1: answers may go out of order, so a slow forward never holds back a
    quick answer behind it. Reading (and handling what is already buffered) pauses while
    ``max_pipelined`` queries are in flight or the client does not read its answers
    (write buffer full), so one client cannot make us hold unbounded work.
    """

    def __init__(
        self,
        entry: QueryEntry,
        connections: TcpConnections,
        idle_timeout: float,
        max_pipelined: int,
    ) -> None:
        self.entry = entry
        self.connections = connections
        self.idle_timeout = idle_timeout
        self.max_pipelined = max_pipelined
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.frames = FrameDecoder()
        self.pending = 0
        self.paused = False  # reading paused by us
        self.write_blocked = False  # the transport's write buffer is above its high mark
        self.closing = False
        self.spoke = False  # has sent a byte: a hand-off lingers on it only until quiet
        self._linger: float | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connections.live.add(self)
        peer = self.transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        entry = self.entry
        if entry.refuse_drop and not entry.acl.allows(self.client):
            # --refuse-mode drop: a client not allowed gets nothing, not even a connection
            # to hold open until the idle timeout. (Refuse mode answers each query REFUSED.)
            self.closing = True
            self.transport.abort()
            entry.refused_connection()
            return
        if not entry.accepting or not self.connections.admit(self):
            self.closing = True
            self.transport.abort()
            self.entry.counts["dropped"] += 1
            return
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if not self.spoke:
            self.spoke = True
            if self._linger is not None:
                self.idle_timeout = self._linger
        self.frames.feed(data)
        self.connections.touch(self)
        self._process()
        self._arm_idle()

    def _blocked(self) -> bool:
        return self.pending >= self.max_pipelined or self.write_blocked

    def _process(self) -> None:
        """Handle every whole message buffered, until blocked; a partial one waits for more."""
        frames = self.frames
        while not self.closing and not self._blocked():
            message = frames.next_message()
            if message is None:
                break
            self._handle(message)
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        if self._blocked():
            if not self.paused:
                self.paused = True
                transport.pause_reading()
        elif self.paused:
            self.paused = False
            transport.resume_reading()
            self._process()  # what arrived before we paused

    def pause_writing(self) -> None:
        self.write_blocked = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self._update_reading()

    def _handle(self, message: bytes) -> None:
        entry = self.entry
        wire = entry.answer_now(message, self.client)
        if type(wire) is bytes:
            self._send(wire)
        elif isinstance(wire, Query | CookieForward) and not entry.full():
            self.pending += 1
            entry.spawn(self._forward(wire))

    async def _forward(self, query: Query | CookieForward) -> None:
        try:
            self._send(await self.entry.forward(query, self.client, None))
        finally:
            self.pending -= 1
            if self.closing and self.pending == 0 and self.transport is not None:
                self.transport.close()  # draining: the last answer is out
            self._update_reading()
            self._arm_idle()

    def _send(self, wire: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(wire))

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.pending == 0 and not self.closing and self.transport is not None:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.idle_timeout, self.close, "idle")

    def close(self, reason: str) -> None:
        """Close now if nothing is in flight, else stop reading and close after the last answer."""
        self.closing = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.transport is None:
            return
        if self.pending == 0:
            self.transport.close()
        else:
            self.transport.pause_reading()
        log.debug("tcp.close", extra=fields(client=self.client, reason=reason))

    def linger(self, quiet: float) -> None:
        """Keep answering this client until it has been quiet for ``quiet`` seconds, then
        close (a hand-off: new connections go to the successor meanwhile).

        A connection that has sent nothing yet keeps its idle timeout until it speaks:
        accepted just before the hand-off, its first query may come later than ``quiet``
        on a loaded host, and closing it then resets a client that did nothing wrong. The
        stop's drain deadline still bounds the wait."""
        self._linger = quiet
        if self.spoke:
            self.idle_timeout = quiet
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.gone(self)
        self.closing = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


def bind_socket(address: HostPort, kind: socket.SocketKind, reuse: bool = True) -> socket.socket:
    """A socket bound to ``address`` with SO_REUSEPORT, so a new agent can start beside us.

    IPv6 sockets are V6ONLY: an IPv4 listener on the same port is a separate --listen, and
    clients never show up as IPv4-mapped addresses (which slices would not match).
    ``reuse=False`` binds exclusively: bind_pair uses it for port 0 ("any free port", as
    tests ask), since with SO_REUSEPORT the kernel may hand out a port that another socket
    of the same user holds, and two tests would share it.
    """
    family = socket.AF_INET6 if address.family_v6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# Linux's SO_RCVBUFFORCE (asm-generic/socket.h), which Python does not name: with
# CAP_NET_ADMIN it sets the buffer past net.core.rmem_max.
_SO_RCVBUFFORCE = 33 if sys.platform.startswith("linux") else None


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a ``size``-byte receive buffer (0: keep the OS default); the size granted.

    The default (net.core.rmem_default, 208 KiB on most hosts) holds only ~90 full-size
    datagrams, so a burst that arrives while the loop is busy is dropped by the kernel.
    Linux doubles what is asked (for its bookkeeping) and caps a plain SO_RCVBUF at
    net.core.rmem_max; SO_RCVBUFFORCE ignores the cap but needs CAP_NET_ADMIN, so it is
    tried first and a refusal falls back to the capped request. The granted size is what
    getsockopt reports (the doubled figure, as ``ss -m`` shows it).
    """
    if size > 0:
        forced = False
        if _SO_RCVBUFFORCE is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
                forced = True
            except OSError:  # EPERM without CAP_NET_ADMIN: the capped request below
                pass
        if not forced:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return granted


def bind_pair(address: HostPort) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same address and port (port 0: one free for both)."""
    for _ in range(20):
        reuse = address.port != 0
        udp = bind_socket(address, socket.SOCK_DGRAM, reuse)
        port = udp.getsockname()[1]
        try:
            tcp = bind_socket(HostPort(address.host, port), socket.SOCK_STREAM, reuse)
        except OSError as exc:
            udp.close()
            if address.port == 0 and exc.errno == errno.EADDRINUSE:
                continue  # the kernel's free UDP port is taken for TCP: pick another
            raise
        return udp, tcp
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {address.host}")
