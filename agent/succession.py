"""One agent process's place in a line of hand-offs (agent/handoff.py).

Before the server starts, ``--replace`` takes the running agent's sockets; once it serves,
it tells that agent to drain, tells systemd it is the service's main process now, and
offers its own sockets on the control socket to whoever replaces it next. SIGUSR2 (the
unit's ``ExecReload``) makes the agent start that successor itself: the same command line
plus ``--replace``, so the program on disk now (an upgrade) takes over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agent.handoff import ControlSocket, Predecessor, notify_systemd
from agent.server import AgentServer
from dnsmesh.logs import fields

log = logging.getLogger(__name__)

REPLACE_FLAG = "--replace"


class Succession:
    """``await before_start(server)``, ``await after_start(server)``, ``close()``."""

    def __init__(self, control: Path | None, replace: bool, stop: Callable[[str], None]) -> None:
        self.control = control
        self.replace = replace
        self.stop = stop  # ends this process's serve loop, with the reason given
        self.handed_off = False  # a successor serves: stop lingers on TCP connections
        self.predecessor: Predecessor | None = None
        self._socket: ControlSocket | None = None
        self._waiting: asyncio.Task[None] | None = None

    async def before_start(self, server: AgentServer) -> None:
        if self.replace and self.control is not None:
            self.predecessor = await Predecessor.take_over(self.control)
            if self.predecessor is not None:
                server.passed = self.predecessor.sockets_for

    async def after_start(self, server: AgentServer) -> None:
        if self.control is not None:
            control = ControlSocket(self.control, server.listeners, self._successor_ready)
            try:
                control.bind()
                self._socket = control
            except OSError as exc:
                # A path past AF_UNIX's 107 bytes, a read-only folder: the agent serves all
                # the same, only a successor cannot take its sockets (SO_REUSEPORT still
                # lets one start beside it, with the losses that has).
                log.warning(
                    "handoff.unavailable",
                    extra=fields(control=str(self.control), error=str(exc)),
                )
        predecessor = self.predecessor
        if predecessor is not None:
            # MAINPID first: systemd must follow us before the old main process exits.
            notify_systemd(f"MAINPID={os.getpid()}\nREADY=1")
            await predecessor.ready()
            self._waiting = asyncio.get_running_loop().create_task(predecessor.gone())
        else:
            notify_systemd("READY=1")
        if self._socket is not None:
            self._socket.publish()

    def _successor_ready(self) -> None:
        self.handed_off = True
        self.stop("handoff")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._waiting is not None:
            self._waiting.cancel()

    def spawn_successor(self) -> None:
        """SIGUSR2: start ``dnsmesh agent`` again with our flags and --replace."""
        if self.control is None:
            log.warning(
                "handoff.unavailable",
                extra=fields(reason="no --state-dir, so no control socket to hand off on"),
            )
            return
        args = [a for a in sys.argv[1:] if a != REPLACE_FLAG]
        # The console script as it is on disk now; ``python -m cli.main`` runs it the same.
        program = [sys.executable, "-m", "cli.main"] if sys.argv[0].endswith(".py") else []
        command = [*(program or sys.argv[:1]), *args, REPLACE_FLAG]
        # Our stdout and stderr (the journal under systemd), no other descriptor: the
        # sockets travel over the control socket.
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        log.info("handoff.spawned", extra=fields(pid=child.pid, command=command))
