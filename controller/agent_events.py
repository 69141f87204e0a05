"""What the hub and the polling routes report of agents, to be written to the agents table.

Events, not protocol messages (those are dnsmesh.protocol's): an agent connected, ACKed,
NACKed, went away or was seen alive. controller.recorder queues them and
controller.services.agent_state writes them in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Transport = Literal["websocket", "poll"]
# JSON-ready {name, domain, source} of each local policy, {name, reason} of each shadowed one.
Entries = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class AgentConnected:
    """An agent (re)connected or polled: who it is, what it runs, where it is connected."""

    agent_id: str
    node_name: str
    labels: dict[str, str]
    software: str
    revision: int
    transport: Transport
    replica: str
    session: str
    local: Entries = field(default_factory=list)
    shadowed: Entries = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Acked:
    agent_id: str
    revision: int
    local: Entries = field(default_factory=list)
    shadowed: Entries = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Nacked:
    agent_id: str
    revision: int
    reason: str


@dataclass(frozen=True, slots=True)
class Gone:
    """The connection ``session`` of the agent ended."""

    agent_id: str
    session: str


@dataclass(frozen=True, slots=True)
class Seen:
    """The agent is alive (a long-poll): only ``last_seen`` moves."""

    agent_id: str


Event = AgentConnected | Acked | Nacked | Gone | Seen
