"""Encrypted upstream transports: DNS over TLS (dot.py) and DNS over HTTPS (doh.py).

Both take a question and return an UpstreamAnswer or raise StreamFailure; the upstream
client (agent/upstream.py) judges the server by that, as it does a plain upstream. Neither
ever falls back to plain DNS: a certificate that does not verify is a failed attempt.

No 0x20 here: it defends UDP against off-path forgers, and a forger cannot inject into an
authenticated TLS stream, so names go out as cached (lower case) and the answer's case is not
checked.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from dnsmesh.dnsforward import (
    BadUpstreamResponse,
    UpstreamAnswer,
    build_question,
    build_upstream_query,
    parse_upstream_response,
)


class StreamFailure(Exception):
    """A DoT/DoH exchange failed (connection, certificate, HTTP status, bad answer)."""


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying TLS client context: the system trust store, or only ``ca_file``'s CAs.

    ``create_default_context`` checks the host name and the chain (CERT_REQUIRED); given a
    cafile it loads that instead of the system store, so a private CA does not widen trust.
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8310 §9 / RFC 8484 §5: TLS 1.2+
    return context


class Question:
    """One question as sent over an encrypted transport, and how its answer is read."""

    __slots__ = ("max_ttl", "qclass", "qname", "qtype", "wire")

    def __init__(self, qname: bytes, qtype: int, qclass: int, max_ttl: int) -> None:
        self.qname, self.qtype, self.qclass, self.max_ttl = qname, qtype, qclass, max_ttl
        self.wire = build_question(qname, qtype, qclass)

    def packet(self, msg_id: int) -> bytes:
        return build_upstream_query(self.wire[:-4], self.qtype, self.qclass, msg_id)

    def answer(self, data: bytes, msg_id: int) -> UpstreamAnswer:
        try:
            return parse_upstream_response(
                data,
                msg_id,
                self.wire,
                restore_name=self.qname,
                max_ttl=self.max_ttl,
                exact_case=False,  # authenticated stream: 0x20 is no defence here
            )
        except BadUpstreamResponse as exc:
            raise StreamFailure(f"bad answer: {exc}") from None
