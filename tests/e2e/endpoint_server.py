"""A test endpoint: a tiny HTTP server on one loopback address, slowed through a control file.

``python -m tests.e2e.endpoint_server HOST PORT CONTROL`` serves ``GET /`` with 200 after
sleeping the number of seconds written in CONTROL (0 when missing), and prints "ready"
once listening. The test makes it slow by writing the file, dead by SIGTERM, hung by
SIGSTOP (the kernel still completes TCP handshakes: only an HTTP probe sees a hung host).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


def delay(control: Path) -> float:
    try:
        return float(control.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0.0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, control: Path) -> None:
    try:
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # the request line and headers; a GET has no body
        await asyncio.sleep(delay(control))
        body = b"ok\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def main(host: str, port: int, control: Path) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, control), host, port, reuse_address=True
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
