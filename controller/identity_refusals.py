"""Refused agent identities, each one logged (``identity.refused``) and counted by reason.

One per controller process, shared by the TLS layer (a client certificate the handshake
refused: controller/tls_peer.py) and the routes (a revoked certificate, a node asking for
another's stream, a spent join token, a token-only agent where mTLS is required). The
counts are this replica's since it started: ``GET /v1/ca/refusals``. Every refusal is
counted, but at most ``LOG_RATE`` lines a second per reason are logged (bursts of
``LOG_BURST``), so that a flood of handshakes cannot fill the disk; the lines left out are
counted in the next line of that reason (``suppressed=N``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum

from dnsmesh.admission import RateLimiter
from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.controller.identity")

LOG_RATE = 5.0
LOG_BURST = 20


class Refusal(StrEnum):
    OTHER_CA = "other_ca"  # a client certificate no CA of this mesh signed
    EXPIRED = "expired"  # a client certificate past its notAfter (or not yet valid)
    BAD_CERTIFICATE = "bad_certificate"  # another verification failure of the handshake
    NOT_AN_AGENT = "not_an_agent"  # a mesh certificate that names no agent of the domain
    UNKNOWN_CERTIFICATE = "unknown_certificate"  # signed by the CA, not issued here
    REVOKED = "revoked"
    WRONG_NODE = "wrong_node"  # a certificate of node A asking as node B
    TOKEN_ONLY = "token_only"  # no client certificate where mTLS is required
    JOIN_TOKEN_UNKNOWN = "join_token_unknown"
    JOIN_TOKEN_SPENT = "join_token_spent"
    JOIN_TOKEN_EXPIRED = "join_token_expired"
    JOIN_TOKEN_NODE = "join_token_node"  # a token bound to another node name


class IdentityRefusals:
    """Thread-safe: the handshake hook runs on the event loop, the routes on threads too."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.since = datetime.now(UTC)
        self._counts: Counter[Refusal] = Counter()
        self._suppressed: Counter[Refusal] = Counter()
        self._log_budget = RateLimiter(LOG_RATE, LOG_BURST)  # keyed by reason
        self._lock = threading.Lock()

    def note(self, reason: Refusal, message: str, **details: object) -> None:
        with self._lock:
            self._counts[reason] += 1
            if not self._log_budget.allow(reason.value, self._clock()):
                self._suppressed[reason] += 1
                return
            suppressed = self._suppressed.pop(reason, 0)
        if suppressed:
            details = {**details, "suppressed": suppressed}
        log.warning(
            "identity.refused",
            extra=fields(reason=reason.value, error=message, **details),
        )

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {reason.value: self._counts[reason] for reason in Refusal}
