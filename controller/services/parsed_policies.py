"""Stored policy documents as ``Policy`` objects, parsed once per revision of each.

The quorum and the drain checks need every policy's endpoints, weights and rules every
evaluation (every second, on every replica); parsing a thousand documents each time would
cost more than the query that reads them.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from controller.repositories.policies import policy_endpoints
from dnsmesh.policy import Policy, parse_policy


class ParsedPolicies:
    def __init__(self) -> None:
        self._by_name: dict[str, tuple[int, Policy]] = {}

    def read(self, session: Session) -> list[Policy]:
        """Every stored policy, parsed (those unchanged since the last call: not again)."""
        kept: dict[str, tuple[int, Policy]] = {}
        for name, document in policy_endpoints(session):
            revision = int(document.get("metadata", {}).get("revision") or 0)
            hit = self._by_name.get(name)
            if hit is None or hit[0] != revision:
                hit = (revision, parse_policy(document))
            kept[name] = hit
        self._by_name = kept  # one assignment: a concurrent reader sees the old or the new
        return [policy for _, policy in kept.values()]
