"""The agent's sync client: follow the controller over a WebSocket, or HTTP long-polling.

One task keeps one channel open (the controller's side is controller/api/agents.py): the
WebSocket stream (agent/sync/websocket.py) or, when the upgrade is refused with an HTTP
answer that is not about the token or a server error (a proxy that cannot pass
WebSockets), or when ``--sync http`` forces it, HTTP long-polling with the same revision
semantics (agent/sync/polling.py). In ``auto`` mode the WebSocket is tried again every
``ws_retry`` seconds. Both drive the same rules (agent/sync/session.py).

Errors are split the way python-websockets' reconnect loop splits them
(agent/sync/errors.py): **fatal** ones (401/403: the token is wrong, retrying soon cannot
help) are logged at error level and retried every ``fatal_retry`` seconds; everything else
(refused connections, resets, ping timeouts, closes, 5xx) is **retryable** with
exponential backoff and equal jitter (``backoff_delay``): the first retry comes within
``backoff_base`` (0.2-0.4 s by default), and the backoff starts afresh after a channel that
worked (it applied something, outlived ``backoff_cap``, or was closed cleanly by the
controller). While connects are *refused* (nothing listens: a controller restarting) the
window stops growing at ``refused_cap`` (1 s): a refused connect costs the controller's
host one RST, and an agent still drawing from a 10 s window when the controller is back
would leave its node stale for seconds (measured: resync p99 7.2 s after /healthz with a
5 s restart, 1 s with the cap).

What happens when the controller's policies clash with local ``--policies`` files is
decided in agent/sync/policy_sources.py: the local file wins on the node, the controller's
policy is shadowed there, and every revision still applies.

An agent that joins (agent/sync/credentials.py) trades its join token for a certificate
before its first channel, and renews the certificate beside the channels, in a task of its
own, so a renewal never touches an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import httpx
from websockets.exceptions import WebSocketException

from agent.answer_reports import AnswerReports
from agent.sync.channel import ChannelContext, backoff_delay
from agent.sync.config import SyncConfig
from agent.sync.credentials import Credentials
from agent.sync.errors import JoinRefused, Resync, SyncFatal, SyncRetry, WebSocketRefused
from agent.sync.policy_sources import PolicySources
from agent.sync.polling import Poller
from agent.sync.state_file import StateDir
from agent.sync.websocket import WebSocketChannel, describe
from dnsmesh.logs import fields
from dnsmesh.protocol import ProtocolError, Report
from dnsmesh.tlserrors import certificate_error

log = logging.getLogger(__name__)

__all__ = ["AgentSync", "backoff_delay"]


class AgentSync:
    """``await start()``/``await stop()``; follows the controller until stopped."""

    def __init__(
        self,
        config: SyncConfig,
        sources: PolicySources,
        state_dir: StateDir,
        agent_id: str,
        *,
        credentials: Credentials,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        probe_report: Callable[[], Report] | None = None,
        probe_report_interval: float = 5.0,
        answer_reports: AnswerReports | None = None,
    ) -> None:
        # The context holds the identity, sources and settings that the transports share;
        # this loop reads them there rather than keep copies of its own.
        self.context = ChannelContext(
            config,
            sources,
            state_dir,
            agent_id,
            rng=rng or random.Random(),
            clock=clock,
            probe_report=probe_report,
            probe_report_interval=probe_report_interval,
            credentials=credentials,
            answer_reports=answer_reports,
        )
        self._task: asyncio.Task[None] | None = None
        self._channel: WebSocketChannel | Poller | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def sources(self) -> PolicySources:
        return self.context.sources

    @property
    def agent_id(self) -> str:
        return self.context.agent_id

    @property
    def transport(self) -> str | None:
        """ "websocket" or "poll" while connected, else None."""
        return self.context.transport

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="agent-sync")
        if self.context.credentials.mtls:
            renewals = self.context.credentials.renewals(self.context.config.backoff_cap * 6)
            task = loop.create_task(renewals, name="agent-renewals")
            self._background.add(task)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        if self.sources.running is not self.context.saved:
            await self.context.save()

    async def _run(self) -> None:
        context = self.context
        config, clock, rng = context.config, context.clock, context.rng
        attempt = 0
        use_ws = config.mode != "http"
        while True:
            started = clock()
            context.progress = False
            retry_after: float | None = None
            refused = False
            try:
                await context.credentials.ensure()
                if use_ws:
                    await self._ws_session()
                else:
                    await self._poll_session()
                    use_ws = config.mode == "auto"  # time to try the WebSocket again
                    attempt = 0
                    continue
            except SyncFatal as exc:
                if exc.status == 403:
                    context.credentials.certificate_refused()
                log.error(
                    "sync.join_refused" if isinstance(exc, JoinRefused) else "sync.token_refused",
                    extra=fields(
                        status=exc.status,
                        error=str(exc),
                        controller=config.controller,
                        retry_in=config.fatal_retry,
                    ),
                )
                # Jittered too, so agents whose token was revoked together do not retry
                # in lockstep.
                await asyncio.sleep(config.fatal_retry * rng.uniform(0.75, 1.25))
                config = self._next_controller()
                continue
            except WebSocketRefused as exc:
                if config.mode == "auto":
                    log.warning(
                        "sync.websocket_refused",
                        extra=fields(error=str(exc), fallback="poll", retry_ws_in=config.ws_retry),
                    )
                    use_ws = False
                    continue
                error = str(exc)
            except Resync as exc:
                error = str(exc)
                attempt = 0
            except SyncRetry as exc:
                error = describe(exc)
                retry_after = exc.retry_after
                if exc.clean:
                    attempt = 0
            except (
                OSError,
                TimeoutError,
                WebSocketException,
                httpx.HTTPError,
                ProtocolError,
            ) as exc:
                error = describe(exc)
                refused = isinstance(exc, ConnectionRefusedError | httpx.ConnectError)
                if certificate_error(exc) is not None:
                    # Retried like any failure (the controller may get a new certificate),
                    # but at error level: this is a configuration to fix, not a blip.
                    log.error(
                        "sync.controller_untrusted",
                        extra=fields(
                            controller=config.controller,
                            ca_file=str(config.ca_file) if config.ca_file else "system CAs",
                            error=error,
                        ),
                    )
            finally:
                context.transport = None
                self._channel = None
            if context.progress or clock() - started > config.backoff_cap:
                attempt = 0  # the last channel worked: the next failure is a fresh one
            config = self._next_controller()
            cap = config.refused_cap if refused else config.backoff_cap
            delay = backoff_delay(attempt, config.backoff_base, cap, rng)
            if retry_after is not None:
                delay = max(delay, retry_after)
            attempt += 1
            log.warning(
                "sync.disconnected",
                extra=fields(error=error, attempt=attempt, retry_in=round(delay, 3)),
            )
            await asyncio.sleep(delay)

    def _next_controller(self) -> SyncConfig:
        """Replicas (several --controller URLs): the next reconnect goes to the next one,
        so an agent whose replica died moves on without waiting for it to come back."""
        context = self.context
        config = context.config.next_controller()
        if config.controller != context.config.controller:
            log.info(
                "sync.controller_next",
                extra=fields(previous=context.config.controller, controller=config.controller),
            )
        context.config = config
        context.credentials.config = config
        return config

    async def _ws_session(self) -> None:
        channel = WebSocketChannel(self.context)
        self._channel = channel
        await channel.run()

    async def _poll_session(self) -> None:
        async with Poller.client_for(self.context) as client:
            poller = Poller(self.context, client)
            self._channel = poller
            await poller.run()

    def local_changed(self) -> None:
        """The local files changed: tell the controller what is local and shadowed now.

        Offline, nothing is sent: the next hello carries it.
        """
        channel = self._channel
        if isinstance(channel, WebSocketChannel) and channel.connected:
            channel.local_changed()
        elif isinstance(channel, Poller):
            task = asyncio.get_running_loop().create_task(channel.report_quietly())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
