"""``dnsmesh agent``: run the AgentServer on uvloop until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig, config_from_args
from agent.server import AgentServer
from agent.succession import Succession
from agent.sync.config import SyncConfig
from agent.sync.controlled_agent import SyncedAgent
from dnsmesh.logs import fields

if TYPE_CHECKING:
    from agent.querylog import QueryLog

log = logging.getLogger(__name__)

# Seconds past the drain timeout after which a stopping agent exits regardless (status 1).
STOP_WATCHDOG_MARGIN = 3.0
# After a hand-off, an open TCP connection of the old agent quiet this long is closed (its
# client asks again on a new one, which the successor accepts).
HANDOFF_LINGER = 0.3


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (several times asyncio's datagram throughput), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_agent(args: argparse.Namespace) -> int:
    from agent.sync.config import sync_config_from_args

    config = config_from_args(args)
    return run(serve(config, sync_config_from_args(args)))


def run(main: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


async def serve(config: AgentConfig, sync: SyncConfig | None = None) -> int:
    # With --controller, the controller's policies are pushed (agent/sync/controlled_agent.py).
    server = AgentServer(config) if sync is None else SyncedAgent(config, sync)
    stop = asyncio.Event()
    received: list[str] = []

    def request_stop(reason: str) -> None:
        received.append(reason)
        stop.set()

    succession = Succession(config.control_socket, config.replace, request_stop)
    dns = server if isinstance(server, AgentServer) else server.server
    await succession.before_start(dns)
    await server.start()
    # The handlers go in before after_start tells systemd READY=1: a reload (SIGUSR2) that
    # systemd sends the moment the unit is active must find its handler, not SIGUSR2's
    # default action, which ends the process (seen in the SIGUSR2 test on a busy machine).
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    loop.add_signal_handler(signal.SIGUSR2, succession.spawn_successor)
    loop.add_signal_handler(signal.SIGHUP, _reopen_logs, dns.query_log)
    await succession.after_start(dns)
    # Everything built so far (modules, the policy snapshot) lives as long as the process;
    # freezing it keeps a full collection from scanning it: measured 6.3 ms -> ~0 ms per
    # gen-2 collection with the example policies, a pause every query in flight would feel.
    gc.freeze()
    # The young generation's default threshold (700 net container allocations) runs a
    # collection every few hundred queries under load, each a pause every query in flight
    # feels; the agent's per-query objects die young by refcount, so collecting that
    # often finds nothing. The bench helper measured 395 -> 6 young collections in a test
    # and p99 under saturation 16 -> 11 ms. Reference cycles are still collected, less often.
    gc.set_threshold(10_000, 20, 20)
    # A reload or a controller revision is parsed and compiled in a worker thread; while it
    # runs, the loop waits for the GIL up to the switch interval each time a query arrives
    # (5 ms by default). 1 ms keeps that wait inside the stall budget of a change (design.md,
    # "Compile and swap"); with no worker thread running nothing contends for the GIL.
    sys.setswitchinterval(0.001)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("agent.stopping", extra=fields(signal=received[0] if received else ""))
    watchdog = threading.Timer(config.drain_timeout + STOP_WATCHDOG_MARGIN, _stop_overran)
    watchdog.daemon = True
    watchdog.start()  # not cancelled: the process ends before it fires, or it ends it
    try:
        # Handed off: the successor reads the shared sockets; ours linger on open TCP
        # connections so a query a client just sent on one is answered, not reset.
        await server.stop(linger=HANDOFF_LINGER if succession.handed_off else 0.0)
    finally:
        succession.close()
    return 0


def _reopen_logs(query_log: QueryLog | None) -> None:
    """SIGHUP, logrotate's postrotate: the query log is reopened at its path. Without one
    the signal is ignored rather than ending the agent (its default action), so a rotation
    config left behind cannot cost the node its DNS."""
    if query_log is None:
        log.info("agent.sighup", extra=fields(action="ignored: no --query-log to reopen"))
    else:
        query_log.reopen()


def _stop_overran() -> None:
    """The last resort of "exits within its drain timeout, always": the stop is bounded,
    but the interpreter's exit still waits for executor threads (an fsync on a hung disk, a
    policy folder on a dead mount), which nothing can cancel."""
    log.error(
        "agent.stop_overran",
        extra=fields(outcome="exiting without waiting further", margin=STOP_WATCHDOG_MARGIN),
    )
    sys.stderr.flush()
    os._exit(1)
