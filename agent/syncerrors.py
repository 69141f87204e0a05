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


class SyncRetry(DnsmeshError):
    """The channel failed in a way a later attempt may not (reset, 5xx, close, timeout)."""


class WebSocketRefused(DnsmeshError):
    """The WebSocket upgrade was answered by something that will not upgrade it."""


class Resync(DnsmeshError):
    """A delta did not start at our revision: reconnect so the hello gets what we lack."""
