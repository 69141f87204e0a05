"""A REFERENCE server, not dnsmesh: the fastest a Python UDP DNS answerer can be here.

It reads only the question, checks the name against one prebuilt answer and joins the
query's ID, its question bytes and a pre-encoded A record; no parsing library, no
allocation beyond the reply. The benchmark shows it as the "py-ceiling" column so the
agent's numbers can be read against what Python + uvloop can do at all on this machine.

    python bench/refserver.py --listen 127.0.0.1:PORT --name hit.mesh.internal --address 1.2.3.4
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import struct
from typing import cast

TTL = 5


def wire_name(name: str) -> bytes:
    out = b"".join(bytes([len(label)]) + label.encode() for label in name.strip(".").split("."))
    return out + b"\x00"


class Answerer(asyncio.DatagramProtocol):
    """Answers A queries for one name; everything else gets REFUSED (RFC 1035 §4.1.1)."""

    def __init__(self, qname: bytes, address: bytes) -> None:
        self.qname = qname
        self.question = qname + b"\x00\x01\x00\x01"  # QTYPE A, QCLASS IN
        # Owner is a pointer to the question name at offset 12 (RFC 1035 §4.1.4).
        self.record = b"\xc0\x0c\x00\x01\x00\x01" + struct.pack(">IH", TTL, 4) + address
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass: cast, not check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 17 or data[2] & 0x80:  # short, or a response: never answer those
            return
        end = 12 + len(self.question)
        rd = data[2] & 0x01
        if data[12:end].lower() == self.question and data[4:6] == b"\x00\x01":
            # QR=1, AA=1, RD echoed, RA=1; one question, one answer; EDNS dropped.
            header = data[:2] + bytes([0x84 | rd, 0x80]) + b"\x00\x01\x00\x01\x00\x00\x00\x00"
            reply = header + data[12:end] + self.record
        else:
            reply = data[:2] + bytes([0x80 | rd, 0x85]) + b"\x00\x00" * 4
        assert self.transport is not None
        self.transport.sendto(reply, addr)


async def serve(host: str, port: int, qname: bytes, address: bytes) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Answerer(qname, address), local_addr=(host, port)
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    packed = ipaddress.IPv4Address(args.address).packed
    qname = wire_name(args.name.lower())
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # plain asyncio still works, only slower; the table says which ran
        asyncio.run(serve(host, int(port), qname, packed))
    else:
        uvloop.run(serve(host, int(port), qname, packed))


if __name__ == "__main__":
    main()
