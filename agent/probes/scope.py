"""Which endpoints this agent probes in a coordinated mesh, and what it borrows for the rest.

The controller's revision says which agents probe which address (dnsmesh.probing, the
``probers`` of a snapshot or delta). This agent probes the addresses it is assigned and
those nobody is (every address, before a controller assigns anything or on a standalone
agent). For an address it does not probe it has no measurement of its own: the quorum's
down set still takes it out of service mesh-wide, and for ``latency-weighted`` policies it
borrows the latency its zone measured (the zone of its ``--label`` named by the revision's
``spread_label``; another zone's median when its own has none), sent with the assignment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dnsmesh.health import EndpointHealth
from dnsmesh.probing import NO_ASSIGNMENT, Assignment


@dataclass(slots=True)
class ProbeScope:
    """``assignment`` reads the running revision's; ``agent_id`` is known once the sync
    credentials are (None: probe everything, as a standalone agent does)."""

    assignment: Callable[[], Assignment] = lambda: NO_ASSIGNMENT
    labels: Mapping[str, str] = field(default_factory=dict)
    agent_id: str | None = None

    def probes(self, address: str) -> bool:
        return self.agent_id is None or self.assignment().probes(address, self.agent_id)

    def borrowed(self, addresses: Iterable[str]) -> dict[str, EndpointHealth]:
        """A latency-only health (seconds; never ejected: that is the down set's job) for
        each of ``addresses`` this agent does not probe and its zone measured."""
        if self.agent_id is None:
            return {}
        assignment = self.assignment()
        zone = self.labels.get(assignment.spread_label, "")
        found: dict[str, EndpointHealth] = {}
        for address in addresses:
            if assignment.probes(address, self.agent_id):
                continue
            latency_ms = assignment.borrowed_latency_ms(address, zone)
            if latency_ms is not None:
                found[address] = EndpointHealth(latency=latency_ms / 1000, samples=1)
        return found


EVERYTHING = ProbeScope()
