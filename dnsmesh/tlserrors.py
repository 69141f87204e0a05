"""Finding the certificate failure inside the exceptions that TLS clients raise.

httpx and websockets wrap ``ssl.SSLCertVerificationError`` in their own errors (as the
cause or the context), so "was the peer's certificate refused?" means walking the chain.
The CLI, the agent's sync client and its DoH upstreams all ask it, to say "not trusted"
rather than "connection failed".
"""

from __future__ import annotations

import ssl


def certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc`` (itself, a cause or a context)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
