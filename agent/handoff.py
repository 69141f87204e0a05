"""Hand-off: a new agent takes the running one's listening sockets, so no query is lost.

With SO_REUSEPORT alone, two agents on one port each have a socket of their own and the
kernel spreads datagrams across them by hash: what sits in the old agent's receive queue
when it closes is lost, and until it closes new datagrams keep landing there. So the old
agent passes the sockets themselves (SCM_RIGHTS over a Unix socket, as gdnsd's
``replace``, HAProxy's and Envoy's hot restarts do): both processes then hold *the same*
sockets, with one receive queue and one accept queue. Whichever process reads a datagram
answers it; once the old one stops reading, everything still queued, and everything
arriving, is read by the new one. Nothing is ever queued where nobody will read it.

The protocol, on the old agent's control socket (``STATE_DIR/agent.sock``), one JSON line
per message:

1. new -> old ``{"op": "handoff", "pid": N}``
2. old -> new ``{"op": "sockets", "listeners": ["127.0.0.1:53", ...]}`` with the UDP and
   TCP socket of each listener attached (SCM_RIGHTS, in that order). Both now serve.
3. new -> old ``{"op": "ready"}`` once it serves on them (its state file loaded).
4. The old agent stops as on SIGTERM: it stops reading the shared sockets, finishes the
   forwards it has in flight and the queries on its open TCP connections, and exits 0;
   the control connection closing tells the new one it is gone.

A new agent that dies before step 3 closes the connection: the old one never stopped
serving and carries on. The new agent's own control socket is renamed over the path at
step 3, so the next hand-off finds it.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import HostPort, parse_host_port
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields

log = logging.getLogger(__name__)

CONTROL_SOCKET = "agent.sock"
# How long the old agent waits for a new one that took its sockets to say it serves: a
# big policy set compiles in seconds; a successor silent this long is taken for hung.
READY_TIMEOUT = 60.0
# How long the new agent waits for the old one to answer with its sockets.
ANSWER_TIMEOUT = 10.0
_MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening address and its pair of sockets (UDP, TCP)."""

    address: HostPort
    udp: socket.socket
    tcp: socket.socket


def control_path(state_dir: Path) -> Path:
    return state_dir / CONTROL_SOCKET


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def _decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise ConnectionError(f"hand-off: not a message: {line[:80]!r}")
    return message


class Predecessor:
    """The new agent's side: the running agent it takes over from."""

    def __init__(self, conn: socket.socket, listeners: list[Listener], pid: int) -> None:
        self.conn = conn
        self.listeners = listeners
        self.pid = pid  # the old agent's, from SO_PEERCRED

    @classmethod
    async def take_over(cls, path: Path) -> Predecessor | None:
        """Ask the agent at ``path`` for its sockets; None when no agent runs there."""
        try:
            return await asyncio.to_thread(cls._take_over, path)
        except (FileNotFoundError, ConnectionRefusedError):
            log.info("handoff.none", extra=fields(control=str(path), outcome="binding afresh"))
            return None
        except OSError as exc:  # a path AF_UNIX cannot take, a socket we may not open
            log.warning(
                "handoff.failed",
                extra=fields(control=str(path), error=str(exc), outcome="binding afresh"),
            )
            return None

    @classmethod
    def _take_over(cls, path: Path) -> Predecessor:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(ANSWER_TIMEOUT)
            conn.connect(str(path))
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pid = int.from_bytes(creds[:4], "little")
            conn.sendall(_line({"op": "handoff", "pid": os.getpid()}))
            data, fds = b"", []
            while not data.endswith(b"\n"):
                chunk, more, _flags, _addr = socket.recv_fds(conn, _MAX_MESSAGE, 256)
                if not chunk:
                    raise ConnectionError("hand-off: the running agent closed the connection")
                data += chunk
                fds += more
            sockets = [socket.socket(fileno=fd) for fd in fds]
            answer = _decode(data)
            if answer.get("op") != "sockets":
                for sock in sockets:
                    sock.close()
                raise ConfigError(f"--replace: the running agent refused: {answer.get('error')}")
            addresses = [parse_host_port(text) for text in answer["listeners"]]
            if len(sockets) != 2 * len(addresses):
                for sock in sockets:
                    sock.close()
                raise ConnectionError("hand-off: sockets and listeners do not match")
            listeners = [
                Listener(address, sockets[2 * i], sockets[2 * i + 1])
                for i, address in enumerate(addresses)
            ]
        except BaseException:
            conn.close()
            raise
        conn.settimeout(None)
        log.info(
            "handoff.received",
            extra=fields(predecessor=pid, listeners=[str(lst.address) for lst in listeners]),
        )
        return cls(conn, listeners, pid)

    def sockets_for(self, address: HostPort) -> tuple[socket.socket, socket.socket] | None:
        """The passed sockets of ``address`` (port 0: the first of that host), if any."""
        for listener in self.listeners:
            same = listener.address == address or (
                address.port == 0 and listener.address.host == address.host
            )
            if same:
                self.listeners.remove(listener)
                return listener.udp, listener.tcp
        return None

    async def ready(self) -> None:
        """Tell the old agent we serve: it stops reading and drains. Sockets it passed that
        no --listen of ours took are closed (the old agent stops serving them)."""
        for left in self.listeners:
            log.warning("handoff.listener_dropped", extra=fields(address=str(left.address)))
            left.udp.close()
            left.tcp.close()
        self.listeners.clear()
        await asyncio.to_thread(self.conn.sendall, _line({"op": "ready"}))

    async def gone(self) -> None:
        """Until the old agent has drained and exited (its end of the connection closes)."""
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        self.conn.setblocking(False)
        with contextlib.suppress(OSError):
            while await loop.sock_recv(self.conn, 4096):
                pass
        self.conn.close()
        log.info(
            "handoff.done",
            extra=fields(predecessor=self.pid, drained_s=round(time.monotonic() - began, 3)),
        )


class ControlSocket:
    """The running agent's side: hands its listeners to one successor at a time."""

    def __init__(
        self,
        path: Path,
        listeners: Callable[[], Sequence[Listener]],
        on_ready: Callable[[], None],
    ) -> None:
        self.path = path
        self.listeners = listeners
        self.on_ready = on_ready
        self._sock: socket.socket | None = None
        self._staging = path
        self._inode = 0
        self._serving: asyncio.Task[None] | None = None
        self._successors: set[socket.socket] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = False

    def bind(self) -> None:
        """Listen at a path of our own; ``publish`` moves it to ``path``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(staging))
        os.chmod(staging, 0o600)  # only the agent's user may take its sockets
        sock.listen(4)
        sock.setblocking(False)
        self._sock = sock
        self._staging = staging
        self._inode = os.stat(staging).st_ino

    def publish(self) -> None:
        """Put our socket at ``path`` (atomically over a predecessor's) and serve it."""
        assert self._sock is not None
        os.replace(self._staging, self.path)
        self._serving = asyncio.get_running_loop().create_task(self._serve(self._sock))

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            task = loop.create_task(self._hand_off(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hand_off(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._successors.add(conn)
        loop = asyncio.get_running_loop()
        try:
            request = _decode(await _read_line(loop, conn))
            if request.get("op") != "handoff":
                raise ConnectionError(f"hand-off: unexpected {request.get('op')!r}")
            if self._busy:
                await loop.sock_sendall(conn, _line({"op": "refused", "error": "busy"}))
                return
            self._busy = True
            listeners = list(self.listeners())
            fds = array.array("i")
            for listener in listeners:
                fds.extend((listener.udp.fileno(), listener.tcp.fileno()))
            message = _line({"op": "sockets", "listeners": [str(x.address) for x in listeners]})
            # A few hundred bytes into an empty Unix socket buffer: sendmsg does not block.
            conn.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            log.info(
                "handoff.sent",
                extra=fields(successor=request.get("pid"), listeners=len(listeners)),
            )
            ready = _decode(await asyncio.wait_for(_read_line(loop, conn), READY_TIMEOUT))
            if ready.get("op") != "ready":
                raise ConnectionError(f"hand-off: unexpected {ready.get('op')!r}")
        except (OSError, ConnectionError, TimeoutError) as exc:
            self._busy = False
            self._successors.discard(conn)
            conn.close()
            log.warning(
                "handoff.aborted", extra=fields(error=str(exc), outcome="serving on as before")
            )
            return
        log.info("handoff.ready", extra=fields(successor=request.get("pid")))
        self.on_ready()  # the connection stays open until we exit: the successor waits on it

    def close(self) -> None:
        """Stop listening; the path is removed only while it is still ours (a successor
        has renamed its own over it by now). Successors see our end close."""
        for task in (self._serving, *self._tasks):
            if task is not None:
                task.cancel()
        for conn in self._successors:
            conn.close()
        self._successors.clear()
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._staging.unlink()


async def _read_line(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await loop.sock_recv(conn, 4096)
        if not chunk:
            raise ConnectionError("hand-off: the peer closed the connection")
        data += chunk
        if len(data) > _MAX_MESSAGE:
            raise ConnectionError("hand-off: message too long")
    return data


def notify_systemd(message: str) -> bool:
    """sd_notify(3): one datagram to $NOTIFY_SOCKET (unset outside systemd: nothing).

    Written out rather than a dependency: the protocol is this one datagram, and the
    packages for it are unmaintained wrappers of the same few lines.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("agent.notify_failed", extra=fields(error=str(exc)))
            return False
    return True
