"""Request bodies past ``--max-body``: 413 naming the limit, without reading the rest.

A real ``dnsmesh controller`` (uvicorn) on loopback, spoken to over a raw socket so the
test decides what is sent: a Content-Length beyond the limit with no body at all, and a
chunked body that never ends. Before the limit was enforced while reading, both waited for
a body that never came (the whole body was read first, then measured).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database
from tests.support.controller import ControllerProcess

LIMIT = 64 * 1024
# Every route that reads a body. The slice routes read it before looking up the policy.
BODY_ROUTES = (
    ("POST", "/v1/policies"),
    ("PUT", "/v1/policies/checkout"),
    ("POST", "/v1/apply"),
    ("POST", "/v1/policies/checkout/slices"),
    ("PUT", "/v1/policies/checkout/slices/beta"),
    ("POST", "/v1/tokens"),
    ("POST", "/v1/agents/node-1/ack"),
    ("POST", "/v1/agents/node-1/report"),
)
# Far more than the kernel's loopback buffers on both sides can hold, so a server that
# read the whole body before answering would still be reading when the test gives up.
ENDLESS = 64 * 1024 * 1024
REPLY_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, str]]:
    """One controller for the module: every request here is refused or harmless."""
    tmp_path = tmp_path_factory.mktemp("body-limit")
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    engine = build_engine(url)
    try:
        upgrade(engine)
        secret = TokenStore(Database(engine)).create("admin-t", "admin", actor="test")[1]
    finally:
        engine.dispose()
    with ControllerProcess(url, tmp_path, "--max-body", str(LIMIT)) as process:
        host, _, port = process.base_url.removeprefix("http://").rpartition(":")
        yield host, int(port), secret


def head(method: str, path: str, secret: str, framing: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (it must close after a 413)."""
    sock.settimeout(REPLY_WITHIN_S)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with our unread bytes still queued: an RST
        pass
    return data


def assert_413(reply: bytes) -> None:
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 "), reply[:300]
    assert b'"code":"payload_too_large"' in rest
    assert f"limit of {LIMIT} bytes".encode() in rest


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_declared_length_past_the_limit_is_refused_before_any_body(
    controller: tuple[str, int, str], method: str, path: str
) -> None:
    host, port, secret = controller
    with socket.create_connection((host, port), timeout=REPLY_WITHIN_S) as sock:
        # A terabyte announced and not a byte of it sent: only a refusal that does not
        # wait for the body can answer.
        sock.sendall(head(method, path, secret, f"Content-Length: {10**12}"))
        assert_413(read_reply(sock))


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_chunked_body_is_cut_once_it_passes_the_limit(
    controller: tuple[str, int, str], method: str, path: str
) -> None:
    host, port, secret = controller
    chunk = b" " * 16384
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with socket.create_connection((host, port), timeout=REPLY_WITHIN_S) as sock:
        sock.sendall(head(method, path, secret, "Transfer-Encoding: chunked"))
        sent = 0
        deadline = time.monotonic() + REPLY_WITHIN_S
        # Keep sending, never the last chunk, until the server answers.
        while sent < ENDLESS and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 0.1)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(frame)
                except (BrokenPipeError, ConnectionResetError):
                    break
        assert sent < ENDLESS, "the server kept reading past the limit"
        assert_413(read_reply(sock))


def test_a_body_at_the_limit_is_read(controller: tuple[str, int, str]) -> None:
    host, port, secret = controller
    body = b'{"name": "t-at-limit", "role": "viewer"}'.ljust(LIMIT, b" ")
    with socket.create_connection((host, port), timeout=REPLY_WITHIN_S) as sock:
        sock.sendall(head("POST", "/v1/tokens", secret, f"Content-Length: {len(body)}") + body)
        sock.settimeout(REPLY_WITHIN_S)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 201 "), reply[:300]
