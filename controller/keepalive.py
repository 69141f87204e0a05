"""WebSocket keep-alive paced to the fleet, so the controller's total ping rate is bounded.

uvicorn pings every connection each ``ws_ping_interval``: 10,000 agents at 5 s are 2,000
pings (and as many pongs) a second, about 40 % of the controller's CPU at that size
(py-spy, docs/design.md "Fleet size"). A paced connection reads its interval each time it
schedules its next ping, as max(``--ping-interval``, open connections / ``MAX_PING_RATE``),
so the total stays at about ``MAX_PING_RATE`` a second whatever the fleet: the configured
interval up to 1,000 connections at 5 s, 50 s at 10,000.

A silent peer is then dropped about one interval plus ``--ping-interval`` (the pong's
deadline, unchanged) after it last answered: 10 s for a small fleet, 55 s at 10,000. Only
peers that vanish without a FIN or RST (a host losing power, a partition) wait for that:
a closed socket is noticed at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

MAX_PING_RATE = 200.0  # pings a second over all connections, at most (about)


def paced(base: type[asyncio.Protocol], max_rate: float = MAX_PING_RATE) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn WebSocket protocol class) whose ping interval grows with the
    number of open connections (uvicorn's ``connections``, the set it shares between them)."""

    def get_interval(self: Any) -> float | None:
        configured: float | None = self._configured_ping_interval
        if configured is None:
            return None
        return max(configured, len(self.connections) / max_rate)

    def set_interval(self: Any, value: float | None) -> None:
        self._configured_ping_interval = value  # uvicorn's __init__ sets the configured one

    return type(
        f"Paced{base.__name__}", (base,), {"ping_interval": property(get_interval, set_interval)}
    )


def paced_websockets(max_rate: float = MAX_PING_RATE) -> type[asyncio.Protocol]:
    """uvicorn's "auto" WebSocket protocol, paced."""
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    if AutoWebSocketsProtocol is None:  # a dependency of ours: never, but say so clearly
        raise RuntimeError("no WebSocket library for uvicorn (install websockets)")
    return paced(cast(type[asyncio.Protocol], AutoWebSocketsProtocol), max_rate)
