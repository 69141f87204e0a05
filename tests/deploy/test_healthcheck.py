"""deploy/docker/healthcheck.py, the image's HEALTHCHECK, against a real HTTP server on
loopback: 200 is healthy; another status, nothing listening, or a certificate the given
CA does not vouch for is not."""

from __future__ import annotations

import http.server
import importlib.util
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import trustme

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "healthcheck", ROOT / "deploy/docker/healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(httpd: http.server.HTTPServer, scheme: str, path: str) -> str:
    return f"{scheme}://127.0.0.1:{httpd.server_address[1]}{path}"


def test_200_is_healthy_and_anything_else_is_not(server: http.server.HTTPServer) -> None:
    assert healthcheck.check(_url(server, "http", "/healthz"), None) is None
    assert "HTTP Error 503" in healthcheck.check(_url(server, "http", "/readyz"), None)


def test_nothing_listening_is_unhealthy(server: http.server.HTTPServer) -> None:
    url = _url(server, "http", "/healthz")
    server.shutdown()
    server.server_close()
    assert "refused" in healthcheck.check(url, None).lower()


def test_https_is_verified_with_the_given_ca(
    server: http.server.HTTPServer, tmp_path: Path
) -> None:
    ca, other = trustme.CA(), trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    url = _url(server, "https", "/healthz")
    assert healthcheck.check(url, str(tmp_path / "ca.pem")) is None
    assert "CERTIFICATE_VERIFY_FAILED" in healthcheck.check(url, str(tmp_path / "other.pem"))
