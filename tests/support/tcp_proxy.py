"""A loopback TCP relay a test can stop, restart, or cut at an exact message.

Between a client (the controller) and a server (PostgreSQL): ``stop()`` resets every
connection and refuses new ones, ``start()`` listens again on the same port, and
``cut_at(marker, deliver=...)`` cuts the connection that sends ``marker`` at that moment,
either before the server sees it or after the server has answered it (the answer is
dropped), so the client cannot know which.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

# A PostgreSQL simple-query message "COMMIT": 'Q', int32 length (4 + 7), the text, NUL.
# psycopg sends a connection's commit() this way.
PG_COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"
ANSWER_WAIT_S = 5.0


@dataclass(slots=True)
class _Cut:
    marker: bytes
    deliver: bool
    after: bytes | None  # only a connection that sent this first (its transaction's start)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class _Pair:
    """One relayed connection; once ``cut``, nothing more reaches the client."""

    client: socket.socket
    upstream: socket.socket
    cut: bool = False
    sent_after: bool = False
    answered: threading.Event = field(default_factory=threading.Event)


class TcpProxy:
    """A loopback TCP relay to ``target`` (PostgreSQL in these tests)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._cut: _Cut | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # the same port again after a stop
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def cut_at(
        self, marker: bytes, *, deliver: bool, after: bytes | None = None
    ) -> threading.Event:
        """Arms one cut: the next connection to send ``marker`` is closed at that point.

        ``after``: only on a connection that has sent these bytes before (say the write's
        first statement, so the COMMIT of some read transaction is let through).

        ``deliver=False``: the bytes holding the marker never reach the server.
        ``deliver=True``: they do, the server's answer is awaited and dropped, then the
        connection is closed. The event is set once the cut happened.
        """
        cut = _Cut(marker, deliver, after)
        self._cut = cut
        return cut.done

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            pair = _Pair(client, upstream)
            for target in (self._to_server, self._to_client):
                thread = threading.Thread(target=target, args=(pair,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _to_server(self, pair: _Pair) -> None:
        try:
            while data := pair.client.recv(65536):
                cut = self._cut
                if cut is not None and cut.after is not None and cut.after in data:
                    pair.sent_after = True
                if (
                    cut is not None
                    and cut.marker in data
                    and (cut.after is None or pair.sent_after)
                ):
                    self._cut = None
                    self._cut_pair(pair, cut, data)
                    return
                pair.upstream.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                pair.upstream.shutdown(socket.SHUT_WR)

    def _cut_pair(self, pair: _Pair, cut: _Cut, data: bytes) -> None:
        pair.cut = True  # from now on the server's bytes are dropped, not relayed
        if cut.deliver:
            pair.upstream.sendall(data)
            pair.answered.wait(ANSWER_WAIT_S)
        _close(pair.client)
        _close(pair.upstream)
        cut.done.set()

    def _to_client(self, pair: _Pair) -> None:
        try:
            while data := pair.upstream.recv(65536):
                if pair.cut:
                    pair.answered.set()
                    continue
                pair.client.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                pair.client.shutdown(socket.SHUT_WR)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
