"""The knobs of the push path: pings, timeouts, catch-up, heartbeats, long-polls, quorum."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from controller.quorum_monitor import HealthSettings
from controller.services.served_share import ShareSettings


def default_replica_id() -> str:
    """Unique per process: a restarted replica is a new one (its old rows go stale)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Knobs of the push path (``dnsmesh controller`` flags; short values in tests)."""

    ping_interval_s: float = 5.0  # WebSocket pings; a peer silent for ~2 of these is dropped
    hello_timeout_s: float = 10.0
    catch_up_s: float = 1.0  # read the revision this often even without a notification
    change_retention: int = 10_000  # keep this many revisions of change log; 0: keep all
    heartbeat_s: float = 10.0  # refresh last_seen of this replica's agents
    max_wait_s: float = 30.0  # the longest long-poll
    window: int = 1024  # recent changes kept in memory for deltas
    # permessage-deflate (RFC 7692) keeps a zlib state per connection, ~40 KiB per agent in
    # the controller (measured: 86 vs 44 KiB/agent), for messages that are mostly small
    # deltas; off unless asked for (--ws-deflate), e.g. for large snapshots over a WAN.
    ws_deflate: bool = False
    replica_id: str = field(default_factory=default_replica_id)
    health: HealthSettings = field(default_factory=HealthSettings)  # reports and the quorum
    share: ShareSettings = field(default_factory=ShareSettings)  # answer reports, drift

    @property
    def stale_after(self) -> timedelta:
        """Three heartbeats plus the longest long-poll: a row older belongs to no live agent."""
        return timedelta(seconds=3 * self.heartbeat_s + self.max_wait_s)
