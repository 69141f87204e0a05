"""A REFERENCE server, not dnsmesh: about the fastest a Python UDP DNS server can be here.

The benchmark shows it as "py-ceiling (ref)" so the agent's numbers read against what
Python + uvloop can do at all on this machine, not only against dnsmasq (C). It is built
for speed and leaves out most of what a real resolver must do; never deploy it.

* One local name: reads only the question, joins the query's ID, its question bytes and a
  pre-encoded A record.
* Every other name is forwarded with no coroutine and no per-query socket: a fixed pool of
  connected UDP sockets to the upstream, a random ID per query, callbacks only, and one
  sweep per 0.25 s that fails queries older than the timeout (not a timer per query).
* A plain dict caches upstream answers by lower-cased question for their smallest TTL
  (not counted down, no LRU bound beyond clearing when full, no negative caching rules).

    python bench/refserver.py --listen 127.0.0.1:PORT --name hit.mesh.internal \\
        --address 1.2.3.4 --upstream 127.0.0.1:PORT2
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import socket
import struct
import time
from functools import partial

TTL = 5
POOL = 32  # upstream sockets: the source-port spread a forwarder keeps (RFC 5452 §9.2)
TIMEOUT = 2.0
CACHE_LIMIT = 100_000
HEADER = struct.Struct(">HHHHHH")
RR_FIXED = struct.Struct(">HHIH")
SERVFAIL_FLAGS = 0x8182  # QR, RD, RA, rcode 2

# (client socket, client address, client ID, question bytes as the client sent them,
#  lower-cased question, time sent)
Pending = tuple[socket.socket, tuple[str, int], int, bytes, bytes, float]
DRAIN = 64  # datagrams read per wakeup at most, so one busy client cannot starve the loop


def send(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
    """sendto on the non-blocking client socket; a full send buffer drops the reply (the
    client retries), which a real server would queue instead."""
    try:  # noqa: SIM105 (contextlib.suppress costs a context manager per reply)
        sock.sendto(data, addr)
    except (BlockingIOError, InterruptedError):
        pass


def wire_name(name: str) -> bytes:
    out = b"".join(bytes([len(label)]) + label.encode() for label in name.strip(".").split("."))
    return out + b"\x00"


def question_end(data: bytes) -> int:
    """Offset just past the question (name + type + class), or 0 when malformed."""
    pos = 12
    size = len(data)
    while pos < size:
        length = data[pos]
        if length == 0:
            end = pos + 5
            return end if end <= size else 0
        if length > 63:
            return 0
        pos += length + 1
    return 0


def min_ttl(packet: bytes, offset: int, count: int) -> int:
    """The smallest TTL of COUNT records from OFFSET (0 when none or unreadable)."""
    smallest = -1
    try:
        for _ in range(count):
            while True:  # the owner name: labels, ended by a zero or a pointer
                length = packet[offset]
                if length >= 0xC0:
                    offset += 2
                    break
                offset += length + 1
                if length == 0:
                    break
            _type, _cls, ttl, rdlength = RR_FIXED.unpack_from(packet, offset)
            offset += 10 + rdlength
            smallest = ttl if smallest < 0 else min(smallest, ttl)
    except (IndexError, struct.error):
        return 0
    return max(smallest, 0)


class Forwarder:
    """The upstream side: pool of sockets, pending queries by (socket, ID), the cache."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sockets: list[asyncio.DatagramTransport] = []
        self.pending: list[dict[int, Pending]] = []
        self.cache: dict[bytes, tuple[int, int, int, int, bytes, float]] = {}
        self.ids = b""
        self.id_at = 0
        self.next = 0

    async def connect(self, host: str, port: int) -> None:
        for _ in range(POOL):
            table: dict[int, Pending] = {}
            self.pending.append(table)
            transport, _protocol = await self.loop.create_datagram_endpoint(
                partial(Upstream, self, table), remote_addr=(host, port)
            )
            self.sockets.append(transport)

    def random_id(self) -> int:
        # urandom in batches: one syscall per 2048 IDs instead of one per query.
        at = self.id_at
        if at + 2 > len(self.ids):
            self.ids, at = os.urandom(4096), 0
        self.id_at = at + 2
        return self.ids[at] << 8 | self.ids[at + 1]

    def forward(
        self,
        client: socket.socket,
        addr: tuple[str, int],
        data: bytes,
        end: int,
        key: bytes,
    ) -> None:
        self.next = (self.next + 1) % POOL
        table = self.pending[self.next]
        msg_id = self.random_id()
        while msg_id in table:
            msg_id = self.random_id()
        question = data[12:end]
        table[msg_id] = (client, addr, data[0] << 8 | data[1], question, key, self.loop.time())
        self.sockets[self.next].sendto(HEADER.pack(msg_id, 0x0100, 1, 0, 0, 0) + key)

    def answered(self, table: dict[int, Pending], data: bytes) -> None:
        if len(data) < 12:
            return
        msg_id = data[0] << 8 | data[1]
        entry = table.get(msg_id)
        if entry is None:
            return
        client, addr, client_id, question, key, _sent = entry
        end = 12 + len(key)
        if data[12:end].lower() != key:  # RFC 5452 §9.1: the question must be ours
            return
        del table[msg_id]
        _id, flags, _qd, ancount, nscount, arcount = HEADER.unpack_from(data)
        sections = data[end:]
        ttl = min_ttl(data, end, ancount)
        if ttl > 0 and flags & 0x000F == 0:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            expires = time.monotonic() + ttl
            self.cache[key] = (flags, ancount, nscount, arcount, sections, expires)
        header = HEADER.pack(client_id, flags, 1, ancount, nscount, arcount)
        send(client, header + question + sections, addr)

    def sweep(self) -> None:
        """Fail queries the upstream never answered, then look again in a quarter second."""
        cutoff = self.loop.time() - TIMEOUT
        for table in self.pending:
            late = [msg_id for msg_id, entry in table.items() if entry[5] < cutoff]
            for msg_id in late:
                client, addr, client_id, question, _key, _sent = table.pop(msg_id)
                header = HEADER.pack(client_id, SERVFAIL_FLAGS, 1, 0, 0, 0)
                send(client, header + question, addr)
        self.loop.call_later(0.25, self.sweep)


class FreshPortForwarder(Forwarder):
    """The same, but a new socket (so a new random source port) per query, as the agent does.

    RFC 5452 §9.2 asks for source ports as unpredictable as practicable; this prices that
    choice in Python without transports: socket + connect + add_reader, close on answer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.upstream: tuple[str, int] = ("127.0.0.1", 53)
        self.open: dict[int, tuple[socket.socket, int, Pending]] = {}

    async def connect(self, host: str, port: int) -> None:
        self.upstream = (host, port)

    def forward(
        self,
        client: socket.socket,
        addr: tuple[str, int],
        data: bytes,
        end: int,
        key: bytes,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(self.upstream)  # binds a fresh random ephemeral port
        msg_id = self.random_id()
        fd = sock.fileno()
        entry = (client, addr, data[0] << 8 | data[1], data[12:end], key, self.loop.time())
        self.open[fd] = (sock, msg_id, entry)
        self.loop.add_reader(fd, self.readable, fd)
        sock.send(HEADER.pack(msg_id, 0x0100, 1, 0, 0, 0) + key)

    def readable(self, fd: int) -> None:
        sock, msg_id, entry = self.open[fd]
        try:
            data = sock.recv(4096)
        except OSError:
            return
        if len(data) < 12 or data[0] << 8 | data[1] != msg_id:
            return
        self.loop.remove_reader(fd)
        del self.open[fd]
        sock.close()
        self.answered({msg_id: entry}, data)

    def sweep(self) -> None:
        cutoff = self.loop.time() - TIMEOUT
        for fd in [fd for fd, (_s, _i, entry) in self.open.items() if entry[5] < cutoff]:
            sock, _msg_id, entry = self.open.pop(fd)
            self.loop.remove_reader(fd)
            sock.close()
            client, addr, client_id, question, _key, _sent = entry
            send(client, HEADER.pack(client_id, SERVFAIL_FLAGS, 1, 0, 0, 0) + question, addr)
        self.loop.call_later(0.25, self.sweep)


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, forwarder: Forwarder, table: dict[int, Pending]) -> None:
        self.forwarder = forwarder
        self.table = table

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.forwarder.answered(self.table, data)


class Answerer:
    """The client side: the local name from a prebuilt record, the rest cached or forwarded.

    A raw non-blocking socket read with add_reader, draining several datagrams per wakeup,
    rather than a datagram transport: measured here, that saves about 0.7 us per query
    (uvloop's transport pays a callback and an address conversion per datagram).
    """

    def __init__(
        self, sock: socket.socket, qname: bytes, address: bytes, forwarder: Forwarder | None
    ) -> None:
        self.sock = sock
        self.question = qname + b"\x00\x01\x00\x01"  # QTYPE A, QCLASS IN
        # Owner is a pointer to the question name at offset 12 (RFC 1035 §4.1.4).
        self.record = b"\xc0\x0c\x00\x01\x00\x01" + struct.pack(">IH", TTL, 4) + address
        self.forwarder = forwarder

    def drain(self) -> None:
        recvfrom = self.sock.recvfrom
        for _ in range(DRAIN):
            try:
                data, addr = recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error for an earlier reply: keep reading
            self.datagram_received(data, addr)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 17 or data[2] & 0x80 or data[4:6] != b"\x00\x01":
            return  # short, a response (never answer those), or not one question
        transport = self.sock
        rd = data[2] & 0x01
        end = 12 + len(self.question)
        if data[12:end].lower() == self.question:
            # QR=1, AA=1, RD echoed, RA=1; one question, one answer; EDNS dropped.
            header = data[:2] + bytes([0x84 | rd, 0x80]) + b"\x00\x01\x00\x01\x00\x00\x00\x00"
            send(transport, header + data[12:end] + self.record, addr)
            return
        end = question_end(data)
        if self.forwarder is None or not end:
            send(transport, data[:2] + bytes([0x80 | rd, 0x85]) + b"\x00\x00" * 4, addr)
            return
        key = data[12:end].lower()
        hit = self.forwarder.cache.get(key)
        if hit is not None:
            flags, ancount, nscount, arcount, sections, expires = hit
            if expires > time.monotonic():
                header = data[:2] + HEADER.pack(0, flags, 1, ancount, nscount, arcount)[2:]
                send(transport, header + data[12:end] + sections, addr)
                return
        self.forwarder.forward(transport, addr, data, end, key)


async def serve(
    host: str,
    port: int,
    qname: bytes,
    address: bytes,
    upstream: tuple[str, int] | None,
    fresh_ports: bool,
) -> None:
    loop = asyncio.get_running_loop()
    forwarder = None
    if upstream is not None:
        forwarder = FreshPortForwarder(loop) if fresh_ports else Forwarder(loop)
        await forwarder.connect(*upstream)
        forwarder.sweep()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    answerer = Answerer(sock, qname, address, forwarder)
    loop.add_reader(sock.fileno(), answerer.drain)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
        if forwarder is not None:
            for pooled in forwarder.sockets:
                pooled.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--upstream", metavar="HOST:PORT", help="forward other names here")
    parser.add_argument(
        "--fresh-ports", action="store_true", help="a new upstream socket per query, no pool"
    )
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    upstream = None
    if args.upstream:
        up_host, _, up_port = args.upstream.rpartition(":")
        upstream = (up_host, int(up_port))
    packed = ipaddress.IPv4Address(args.address).packed
    qname = wire_name(args.name.lower())
    main_task = serve(host, int(port), qname, packed, upstream, args.fresh_ports)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # plain asyncio still works, only slower
        asyncio.run(main_task)
    else:
        uvloop.run(main_task)


if __name__ == "__main__":
    main()
