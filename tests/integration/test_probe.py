"""The probes against real loopback servers: TCP connect, HTTP status classes, ICMP, timeouts,
the ICMP privilege fallback, bounded concurrency, and the monitor's weighted snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.probes.monitor import HealthMonitor
from agent.probes.plan import Target
from agent.probes.probers import ProbeFailed, probe_http, probe_icmp, probe_tcp
from agent.probes.runner import ProbeRunner
from agent.served import ServedSnapshot
from dnsmesh.health import OutlierRule
from dnsmesh.policy import ProbeType, parse_policy
from dnsmesh.snapshot import compile_snapshot

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


def target(
    kind: ProbeType, port: int | None = None, *, timeout: float = 0.5, **extra: Any
) -> Target:
    fields: dict[str, Any] = {
        "address": HOST,
        "type": kind,
        "port": port,
        "path": "/",
        "expect_status": "2xx",
        "interval": 0.1,
        "timeout": timeout,
        "rule": OutlierRule(2, 1.0),
        "tcp_port": port or 80,
    }
    fields.update(extra)
    return Target(**fields)


@contextlib.asynccontextmanager
async def http_server(
    status: int = 200,
    *,
    hang: bool = False,
    host: str = HOST,
    info: dict[str, Any] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """A loopback HTTP server; ``info`` has its port and the connections open at most
    (shared between servers when the same dict is passed)."""
    if info is None:
        info = {}
    info.setdefault("open", 0)
    info.setdefault("max_open", 0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info["open"] += 1
        info["max_open"] = max(info["max_open"], info["open"])
        try:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            if hang:  # until the prober gives up and closes (EOF): "open" counts in flight
                await asyncio.wait_for(reader.read(), 30)
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            info["open"] -= 1
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    info["port"] = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def until(predicate: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens once the socket is closed


def test_tcp_probe_measures_a_listener_and_fails_on_a_closed_port() -> None:
    async def main() -> None:
        async with http_server() as info:
            latency = await probe_tcp(target(ProbeType.TCP, info["port"]))
            assert 0 < latency < 0.5
        with pytest.raises(ProbeFailed, match="tcp"):
            await probe_tcp(target(ProbeType.TCP, closed_port()))

    asyncio.run(main())


@pytest.mark.parametrize(
    ("status", "expect", "ok"),
    [(200, "2xx", True), (204, "2xx", True), (500, "2xx", False), (503, "5xx", True)],
)
def test_http_probe_expects_a_status_class(status: int, expect: str, ok: bool) -> None:
    async def main() -> None:
        import httpx

        async with http_server(status) as info, httpx.AsyncClient(trust_env=False) as client:
            probe = target(ProbeType.HTTP, info["port"], expect_status=expect)
            if ok:
                assert await probe_http(probe, client) > 0
            else:
                with pytest.raises(ProbeFailed, match=str(status)):
                    await probe_http(probe, client)

    asyncio.run(main())


def test_http_probe_of_a_hung_server_fails_within_its_timeout() -> None:
    async def main() -> None:
        import httpx

        async with http_server(hang=True) as info, httpx.AsyncClient(trust_env=False) as client:
            began = time.monotonic()
            with pytest.raises(ProbeFailed, match="timeout"):
                await probe_http(target(ProbeType.HTTP, info["port"], timeout=0.3), client)
            assert time.monotonic() - began < 0.3 + 0.5

    asyncio.run(main())


def test_icmp_probe_of_loopback_as_root() -> None:
    async def main() -> float:
        return await probe_icmp(target(ProbeType.ICMP, address="127.0.0.1"))

    try:
        latency = asyncio.run(main())
    except Exception as exc:  # pragma: no cover - only without raw sockets
        pytest.skip(f"no ICMP here: {exc}")
    assert 0 < latency < 0.5


def test_icmp_without_privilege_says_so_once_and_probes_tcp(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refused(address: str, limit: float) -> float:
        raise PermissionError(1, "Operation not permitted")

    results: list[tuple[str, bool]] = []

    async def main() -> None:
        async with http_server() as info:
            runner = ProbeRunner(
                lambda a, ok, lat, now: results.append((a, ok)),
                rng=random.Random(1),
                ping=refused,
            )
            icmp = target(ProbeType.ICMP, None, tcp_port=info["port"])
            for _ in range(3):
                assert await runner.probe_once(icmp) == (True, pytest.approx(0, abs=0.5))
            assert not runner.icmp_ok
        # and a dead TCP port behind the fallback is a failure, not silence
        dead = target(ProbeType.ICMP, None, tcp_port=closed_port())
        assert await runner.probe_once(dead) == (False, None)
        await runner.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    warnings = [r for r in caplog.records if r.getMessage() == "probe.icmp_unavailable"]
    assert len(warnings) == 1


def test_probes_in_flight_are_bounded() -> None:
    """Six hung endpoints (127.0.0.1-6), two probes at a time at most."""

    async def main() -> int:
        info: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            plan = {}
            for i in range(1, 7):
                address = f"127.0.0.{i}"
                one = await stack.enter_async_context(
                    http_server(hang=True, host=address, info=info)
                )
                port = one["port"]
                plan[address] = target(ProbeType.HTTP, port, address=address, timeout=0.3)
            seen: list[str] = []
            runner = ProbeRunner(
                lambda a, ok, lat, now: seen.append(a), concurrency=2, rng=random.Random(2)
            )
            runner.set_plan(plan)
            await until(lambda: set(seen) == set(plan))
            await runner.stop()
            assert set(seen) == set(plan), "every endpoint was probed"
            most: int = info["max_open"]
            return most

    assert asyncio.run(main()) == 2


def _policy(strategy: str = "weighted", port: int = 9) -> Any:
    return parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": "web"},
            "spec": {
                "domain": "web.mesh.test",
                "strategy": strategy,
                "endpoints": [{"address": "127.0.0.1"}, {"address": "127.0.0.2"}],
                "health": {
                    "probe": {"type": "tcp", "port": port, "interval": 0.05, "timeout": 0.1},
                    "outlier": {"consecutive_failures": 2, "base_ejection": "5s"},
                },
            },
        }
    )


def test_monitor_ejects_a_refusing_endpoint_and_swaps_a_weighted_snapshot() -> None:
    """127.0.0.1 listens on the probed port, 127.0.0.2 refuses it: .2 is ejected."""
    served = ServedSnapshot()

    async def main() -> HealthMonitor:
        async with http_server() as info:
            monitor = HealthMonitor(served, rng=random.Random(3), min_gap=0.05)
            await monitor.start()
            base = compile_snapshot([_policy(port=info["port"])], 7)
            served.set_base(base, monitor.weigh(base))
            await until(lambda: bool(monitor.decision.ejected))
            await monitor.stop()
            return monitor

    monitor = asyncio.run(main())
    assert monitor.decision.ejected == {"web": ("127.0.0.2",)}
    assert monitor.decision.weights == {"web": {"127.0.0.1": 1, "127.0.0.2": 0}}
    last = served.snapshot
    assert last.revision == 7
    (compiled,) = last.policies()
    weights = {str(e.address): e.weight for e in compiled.policy.spec.endpoints}
    assert weights == {"127.0.0.1": 1, "127.0.0.2": 1}, "the policy itself is unchanged"
    report = monitor.report()
    assert {e.address for e in report.endpoints} == {"127.0.0.1", "127.0.0.2"}
    by_address = {e.address: e for e in report.endpoints}
    assert by_address["127.0.0.2"].state == "ejected" and by_address["127.0.0.2"].loss > 0
    assert by_address["127.0.0.1"].state == "healthy"
    assert by_address["127.0.0.1"].latency_ms is not None
    assert all(e.samples > 0 for e in report.endpoints)
    assert monitor.report().endpoints[0].samples == 0, "samples count since the last report"
