"""What a client trusts when it talks to an https:// controller: ``--ca-file`` or the system's.

A controller with ``--tls`` usually has a certificate from its own CA, which no system trust
store holds: the client is given that CA's bundle (``--ca-file``, ``$DNSMESH_CA_FILE``,
from ``dnsmesh ca export``). Verification is never turned off: a certificate the bundle does
not vouch for (another CA, a name not in it) fails the connection.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from dnsmesh.errors import ConfigError


def client_context(ca_file: str | Path | None, *, flag: str = "--ca-file") -> ssl.SSLContext:
    """A verifying TLS client context: the bundle in ``ca_file``, else the system's CAs."""
    if ca_file is None or str(ca_file) == "":
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{flag} {ca_file}: not a readable PEM CA bundle ({exc})") from exc
