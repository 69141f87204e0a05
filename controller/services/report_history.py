"""Bounded probe report history: one row per (agent, address) per window, or per change.

Without it every report of every agent on every endpoint was a history row: 1,000 agents
reporting 100 endpoints every 5 s is 20,000 rows a second. Now a report becomes a history
row only when its state differs from the last row written for that (agent, address) or
``window_s`` has passed since; the probes of the reports in between are summed into the
row's ``samples``, so the history still counts every probe. With coordinated probing only
the assigned agents report an address at all. The latest report of each pair is kept
apart (``endpoint_health``) and is what the quorum reads, so nothing the rule needs waits
for a window. The last row written per pair is remembered per replica, in memory: a
restarted replica writes the next report of each pair at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(slots=True)
class _Written:
    at: datetime
    state: str
    pending_samples: int = 0  # probes of the reports since, not in any row yet


class HistorySampler:
    def __init__(self, window_s: float) -> None:
        self.window = timedelta(seconds=window_s)
        self._last: dict[tuple[str, str], _Written] = {}

    def keep(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The history row for this report, or None when it only adds to the next one."""
        key = (str(row["agent_id"]), str(row["address"]))
        at: datetime = row["reported_at"]
        last = self._last.get(key)
        if last is not None and last.state == row["state"] and at - last.at < self.window:
            last.pending_samples += int(row["samples"])
            return None
        pending = last.pending_samples if last is not None else 0
        self._last[key] = _Written(at, str(row["state"]))
        return {**row, "samples": int(row["samples"]) + pending}

    def forget_before(self, cutoff: datetime) -> None:
        """Drops pairs silent since ``cutoff`` (agents gone, endpoints removed)."""
        self._last = {k: v for k, v in self._last.items() if v.at >= cutoff}
