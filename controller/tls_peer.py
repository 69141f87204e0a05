"""Client certificates on the controller's HTTPS listener, and the peer certificate in ASGI.

**Asking for certificates.** The serving context asks every client for a certificate
signed by the mesh CA, optionally (``CERT_OPTIONAL``): operators' bearer tokens keep
working over HTTPS with no certificate, while a certificate that *is* sent must verify
(chain to the CA bundle, within its validity) or the handshake fails. A failed
verification never reaches the application, so the context's ``sslobject_class`` (a
documented hook of ``ssl.SSLContext``, used by asyncio's and uvloop's TLS transports alike)
notes it first: logged and counted as ``other_ca``, ``expired`` or ``bad_certificate``
(controller/identity_refusals.py).

**The peer certificate in the ASGI scope.** uvicorn does not put it there. Rather than run
another server, the controller keeps uvicorn (its WebSocket pings, size limits and
graceful shutdown are configured and tested) and gives it protocol classes that are
uvicorn's own (whatever ``http``/``ws`` "auto" picks) with one addition: when a connection
is made, the certificate the TLS transport verified (``ssl_object.getpeercert``) is put in
the scope of every request on that connection as the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``, PEM; the leaf only, which is all
``getpeercert`` returns). The routes read only that extension, so another server that
fills it in would do as well. Cost: one PEM encoding per connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controller.identity_refusals import IdentityRefusals, Refusal

# OpenSSL X509_V_ERR_* codes of a client certificate the mesh CA did not sign...
_OTHER_CA = frozenset({2, 7, 18, 19, 20, 21})
# ... and of one outside its validity period (not yet valid, expired).
_EXPIRED = frozenset({9, 10})

TlsScope = dict[str, Any]


def server_context_factory(
    bundle: Path, refusals: IdentityRefusals
) -> Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """uvicorn's ``ssl_context_factory``: its own context, plus optional client certificates."""

    def factory(_config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()  # the serving certificate, key and uvicorn's other settings
        context.load_verify_locations(cafile=str(bundle))
        context.verify_mode = ssl.CERT_OPTIONAL
        context.sslobject_class = _noting_refusals(refusals)
        return context

    return factory


def _noting_refusals(refusals: IdentityRefusals) -> type[ssl.SSLObject]:
    class NotingHandshake(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except ssl.SSLCertVerificationError as error:
                # Only the peer's certificate is verified on this side: the client's.
                code = error.verify_code
                reason = (
                    Refusal.OTHER_CA
                    if code in _OTHER_CA
                    else Refusal.EXPIRED
                    if code in _EXPIRED
                    else Refusal.BAD_CERTIFICATE
                )
                refusals.note(reason, str(error.verify_message), layer="tls", verify_code=code)
                raise

    return NotingHandshake


def tls_extension(transport: asyncio.BaseTransport) -> TlsScope | None:
    """The ASGI TLS extension for a connection (None when it is not TLS)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }


def peer_certificate(scope: Mapping[str, Any]) -> str | None:
    """The PEM client certificate of the request's connection, if it presented one."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return str(chain[0]) if chain else None


class _WithTls:
    """An ASGI app wrapper that adds one connection's TLS extension to each scope."""

    def __init__(self, app: Any, tls: TlsScope) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": self.tls}}
        await self.app(scope, receive, send)


def with_peer_certificate(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn protocol class) that puts the peer certificate in the scope.

    uvicorn's protocols call the app they hold as ``self.app``; the WebSocket protocol an
    upgrade hands the connection to is made anew, so it is wrapped too.
    """

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _WithTls(self.app, tls)

    return type(f"PeerCertificate{base.__name__}", (base,), {"connection_made": connection_made})


def uvicorn_protocols() -> dict[str, type[asyncio.Protocol]]:
    """``http=`` and ``ws=`` for uvicorn.Config: its "auto" choices, certificate-aware (and
    the WebSocket one paced, controller.keepalive)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from controller.keepalive import paced_websockets

    return {
        "http": with_peer_certificate(AutoHTTPProtocol),
        "ws": with_peer_certificate(paced_websockets()),
    }
