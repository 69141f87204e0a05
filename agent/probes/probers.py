"""The probes themselves: ICMP echo (aioping), TCP connect and HTTP GET, each bounded by a timeout.

A probe returns its latency in seconds or raises ProbeFailed; ``IcmpUnavailable`` means
the process may not open an ICMP socket (no CAP_NET_RAW and no ping group), which the
caller turns into a TCP probe instead of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aioping

from agent.probes.plan import Target
from dnsmesh.errors import DnsmeshError
from dnsmesh.policy import ProbeType

if TYPE_CHECKING:
    import httpx


class ProbeFailed(DnsmeshError):
    """The endpoint did not answer the probe in time, or answered wrongly."""


class IcmpUnavailable(DnsmeshError):
    """This process may not send ICMP echo requests (raw and ping sockets refused)."""


Ping = Callable[[str, float], Awaitable[float]]


async def aioping_ping(address: str, limit: float) -> float:
    delay: float = await aioping.ping(address, limit)
    return delay


async def probe_icmp(target: Target, ping: Ping = aioping_ping) -> float:
    try:
        # aioping enforces the timeout itself and closes its socket when it does; the outer
        # bound (a little later) only guards against a ping that never returns.
        return await asyncio.wait_for(ping(target.address, target.timeout), target.timeout + 0.1)
    except PermissionError as exc:
        raise IcmpUnavailable(str(exc)) from exc
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise IcmpUnavailable(str(exc)) from exc
        raise ProbeFailed(f"icmp: {exc}") from exc
    except TimeoutError as exc:
        raise ProbeFailed("icmp: timeout") from exc


async def probe_tcp(target: Target, port: int | None = None) -> float:
    port = port or target.port or target.tcp_port
    began = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target.address, port), target.timeout
        )
    except TimeoutError as exc:
        raise ProbeFailed(f"tcp {port}: timeout") from exc
    except OSError as exc:
        raise ProbeFailed(f"tcp {port}: {exc.strerror or exc}") from exc
    latency = time.perf_counter() - began
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), target.timeout)
    return latency


def http_url(target: Target) -> str:
    host = f"[{target.address}]" if ":" in target.address else target.address
    port = f":{target.port}" if target.port is not None else ""
    return f"http://{host}{port}{target.path}"


async def probe_http(target: Target, client: httpx.AsyncClient) -> float:
    import httpx  # imported by the runner's client already: a dict lookup here

    began = time.perf_counter()
    try:
        # The whole exchange under one bound: httpx's timeouts are per phase.
        response = await asyncio.wait_for(client.get(http_url(target)), target.timeout)
    except TimeoutError as exc:
        raise ProbeFailed("http: timeout") from exc
    except httpx.HTTPError as exc:
        raise ProbeFailed(f"http: {type(exc).__name__} {exc}") from exc
    latency = time.perf_counter() - began
    status_class = f"{response.status_code // 100}xx"
    if status_class != target.expect_status:
        raise ProbeFailed(f"http: status {response.status_code}, expected {target.expect_status}")
    return latency


def probe_kind(target: Target, icmp_ok: bool) -> ProbeType:
    """The probe actually sent: ICMP becomes TCP when ICMP is not available."""
    if target.type is ProbeType.ICMP and not icmp_ok:
        return ProbeType.TCP
    return target.type
