"""Keep-alive pacing (controller.keepalive) under real uvicorn on loopback: the pings that
come over raw WebSocket connections stay near the rate cap, not one per connection per
``--ping-interval``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvicorn

from controller.keepalive import paced_websockets
from controller.server import bind

CONNECTIONS = 10
INTERVAL_S = 0.05  # unpaced: 10 connections would ping 200 times a second
MAX_RATE = 4.0  # paced: 10 / 4 = one ping per connection every 2.5 s
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def accept_and_wait(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def pings_in(buffer: bytearray) -> int:
    """Counts the complete (unmasked, short) frames that are pings and drops them."""
    count = 0
    while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F):
        if buffer[0] & 0x0F == 0x9:
            count += 1
        del buffer[: 2 + (buffer[1] & 0x7F)]
    return count


async def count_pings(reader: asyncio.StreamReader, seconds: float) -> int:
    buffer, count = bytearray(), 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(4096), left)
        except TimeoutError:
            break
        if not chunk:
            break
        buffer += chunk
        count += pings_in(buffer)
    return count


@pytest.mark.timing
def test_the_total_ping_rate_stays_near_the_cap_whatever_the_connections() -> None:
    async def scenario() -> int:
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            accept_and_wait,
            log_config=None,
            lifespan="on",
            ws=paced_websockets(MAX_RATE),
            ws_ping_interval=INTERVAL_S,
            ws_ping_timeout=None,  # raw clients that never pong stay connected
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        streams = []
        try:
            for _ in range(50):
                if server.started:
                    break
                await asyncio.sleep(0.1)
            assert server.started
            for _ in range(CONNECTIONS):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(HANDSHAKE)
                assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                streams.append((reader, writer))
            # The first pings were scheduled while fewer were open: one round at 2.5 s
            # settles every connection on the paced interval.
            await asyncio.gather(*(count_pings(r, 3.0) for r, _ in streams))
            counts = await asyncio.gather(*(count_pings(r, 2.5) for r, _ in streams))
            return sum(counts)
        finally:
            for _, writer in streams:
                writer.close()
            server.should_exit = True
            await asyncio.wait_for(serving, 10)
            sock.close()

    pings = asyncio.run(scenario())
    # Paced: about MAX_RATE x 2.5 s = 10 (one each). Unpaced it would be about 500.
    assert 1 <= pings <= 2 * MAX_RATE * 2.5, pings
