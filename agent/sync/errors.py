"""The sync client's error split: fatal (the token), retryable, and the two that change course.

Like python-websockets' reconnect loop, the agent retries everything except what a retry
cannot fix; here that is only a refused token, and even that is retried, slowly, because
an operator may fix it on the controller without touching the node.
"""

from __future__ import annotations

from dnsmesh.errors import DnsmeshError


class SyncFatal(DnsmeshError):
    """The controller refused the token (401) or its role (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class JoinRefused(SyncFatal):
    """The controller refused the join token, or the certificate (a join or a renewal)."""


class SyncRetry(DnsmeshError):
    """The channel failed in a way a later attempt may not (reset, 5xx, close, timeout)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, clean: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # the controller's Retry-After, if it sent one
        # The controller closed a working channel on purpose (going away, restarting): the
        # next failure starts the backoff afresh.
        self.clean = clean


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (RFC 9110 §10.2.3); the HTTP-date form is not used by us."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), 60.0)  # a bound: a bad header must not park the agent


class WebSocketRefused(DnsmeshError):
    """The WebSocket upgrade was answered by something that will not upgrade it."""


class Resync(DnsmeshError):
    """A delta did not start at our revision: reconnect so the hello gets what we lack."""
