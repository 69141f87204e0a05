"""What /v1/endpoints and /v1/topology show: the latest reports and the down set, as of now."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.db.models import DownRow, DrainRow, EndpointHealthRow
from controller.db.session import as_utc, iso
from dnsmesh import quorum


def endpoint_address(value: object) -> str:
    """An address in its canonical text form (as reports carry it), else as given."""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return str(value)


@dataclass(frozen=True, slots=True)
class HealthView:
    """The latest reports, the down set, the agents and the policies' endpoints, as of ``now``."""

    revision: int
    now: datetime
    rows: list[EndpointHealthRow]
    down: dict[str, DownRow]
    agents: dict[str, tuple[str, dict[str, str]]]  # agent id -> node name, labels
    policies: dict[str, list[str]]  # policy name -> its endpoint addresses
    rule: quorum.QuorumRule
    drains: list[DrainRow] = field(default_factory=list)  # in force at ``now``

    def drains_of(self, address: str, policies: set[str]) -> list[DrainRow]:
        """The drains of ``address`` that reach any of ``policies``."""
        return [
            d
            for d in self.drains
            if d.address == address and (not d.policy_name or d.policy_name in policies)
        ]

    def age_s(self, row: EndpointHealthRow) -> float:
        return (self.now - as_utc(row.reported_at)).total_seconds()

    def report_json(self, row: EndpointHealthRow) -> dict[str, Any]:
        age = self.age_s(row)
        down = row.address in self.down
        vote = quorum.Vote(row.agent_id, row.state, row.loss, age)
        voting = age <= self.rule.stale_s and row.state != "unknown"
        return {
            "agent_id": row.agent_id,
            "node_name": self.agents.get(row.agent_id, (None, {}))[0],
            "state": row.state,
            "latency_ms": row.latency_ms,
            "loss": row.loss,
            "consecutive_failures": row.consecutive_failures,
            "samples": row.samples,
            "reported_at": iso(row.reported_at),
            "age_s": round(age, 3),
            "stale": age > self.rule.stale_s,
            "failing": voting and quorum.is_failing(vote, self.rule, down=down),
        }
