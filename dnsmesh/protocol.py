"""The controller <-> agent protocol: versioned JSON messages and the pure rules for applying them.

Modelled on xDS and etcd watches (DESIGN.md). One WebSocket per agent:

    agent -> controller   hello {agent_id, node_name, labels, software, revision}
    controller -> agent   snapshot {revision, policies}            (new agent, or log compacted)
                          delta {since, revision, changes}          (everything after `since`)
    agent -> controller   ack {revision} | nack {revision, reason}
    controller -> agent   error {code, message}                     (then closes)

Policy documents travel as plain JSON and are validated by the agent when it applies them,
so that a document the agent cannot accept becomes a NACK with the reason rather than a
protocol failure. Applying is all or nothing: ``apply_update`` returns a new state or raises.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from dnsmesh.errors import DnsmeshError, FieldError, PolicyError
from dnsmesh.policy import Policy, check_policy_set, field_errors, parse_policy

PROTOCOL_VERSION: Literal[1] = 1

Document = dict[str, Any]


class ProtocolError(DnsmeshError):
    """A message is not valid JSON or not a message of this protocol version."""


class RevisionGap(ProtocolError):
    """A delta does not start at the revision the agent has: the agent needs a resync."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = PROTOCOL_VERSION


class Hello(_Message):
    type: Literal["hello"] = "hello"
    agent_id: str = Field(min_length=1, max_length=128)
    node_name: str = Field(min_length=1, max_length=253)
    labels: dict[str, str] = Field(default_factory=dict)
    software: str = Field(default="", max_length=64)
    revision: int = Field(default=0, ge=0, description="the last revision the agent applied")


class Snapshot(_Message):
    type: Literal["snapshot"] = "snapshot"
    revision: int = Field(ge=0)
    policies: list[Document]


class PolicyChange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    policy: Document | None = Field(description="the policy after the change; null: deleted")


class Delta(_Message):
    type: Literal["delta"] = "delta"
    since: int = Field(ge=0, description="the revision this delta applies on top of")
    revision: int = Field(ge=0)
    changes: list[PolicyChange]


class Ack(_Message):
    type: Literal["ack"] = "ack"
    revision: int = Field(ge=0)


class Nack(_Message):
    type: Literal["nack"] = "nack"
    revision: int = Field(ge=0)
    reason: str = Field(max_length=4096)


class ErrorMessage(_Message):
    type: Literal["error"] = "error"
    code: str
    message: str


Message = Annotated[
    Hello | Snapshot | Delta | Ack | Nack | ErrorMessage, Field(discriminator="type")
]
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def encode_message(message: _Message) -> str:
    return message.model_dump_json()


def decode_message(data: str | bytes) -> Message:
    """One message from its JSON text; ProtocolError names what is wrong."""
    try:
        return _MESSAGE.validate_json(data)
    except ValidationError as exc:
        detail = "; ".join(str(e) for e in field_errors(exc)[:5])
        raise ProtocolError(f"not a dnsmesh/v{PROTOCOL_VERSION} message: {detail}") from exc


@dataclass(frozen=True, slots=True)
class AppliedState:
    """What an agent runs: a revision and the policies at that revision, by name."""

    revision: int
    policies: Mapping[str, Policy]

    @classmethod
    def empty(cls) -> AppliedState:
        return cls(0, {})


def apply_update(state: AppliedState, update: Snapshot | Delta) -> AppliedState:
    """The state after ``update``, or PolicyError/RevisionGap and the state is unchanged.

    A snapshot replaces everything; a delta must start exactly at ``state.revision`` (a gap
    means a message was missed and the agent must resync instead of guessing).
    """
    if isinstance(update, Snapshot):
        policies = {p.name: p for p in map(parse_policy, update.policies)}
        check_policy_set(list(policies.values()))
        return AppliedState(update.revision, policies)
    if update.since != state.revision:
        raise RevisionGap(f"delta starts at revision {update.since}, agent is at {state.revision}")
    merged = dict(state.policies)
    for change in update.changes:
        if change.policy is None:
            merged.pop(change.name, None)
            continue
        policy = parse_policy(change.policy)
        if policy.name != change.name:
            mismatch = FieldError("metadata.name", f"is not the change's name {change.name!r}")
            raise PolicyError([mismatch], policy=policy.name)
        merged[change.name] = policy
    check_policy_set(list(merged.values()))
    return AppliedState(update.revision, merged)


def build_delta(since: int, revision: int, changes: Iterable[tuple[str, Document | None]]) -> Delta:
    """A delta from change-log rows in revision order; only each name's last change is kept."""
    last: dict[str, Document | None] = {}
    for name, document in changes:
        last.pop(name, None)  # re-insert so the order follows each name's latest change
        last[name] = document
    return Delta(
        since=since,
        revision=revision,
        changes=[PolicyChange(name=name, policy=doc) for name, doc in last.items()],
    )


def build_snapshot(revision: int, documents: Iterable[Document]) -> Snapshot:
    return Snapshot(revision=revision, policies=list(documents))


def encode_state(state: AppliedState) -> bytes:
    """The agent's state file: the last applied snapshot, so a restart answers at once."""
    snapshot = build_snapshot(state.revision, (p.to_document() for p in state.policies.values()))
    return snapshot.model_dump_json(indent=1).encode()


def decode_state(data: bytes) -> AppliedState:
    """A state file back into a state; ProtocolError or PolicyError if it is corrupt."""
    try:
        snapshot = Snapshot.model_validate_json(data)
    except ValidationError as exc:
        raise ProtocolError(f"not a dnsmesh state file: {exc.error_count()} errors") from exc
    return apply_update(AppliedState.empty(), snapshot)


def message_json(message: _Message) -> Document:
    """A message as a JSON-ready dict (for HTTP polling bodies)."""
    loaded: Document = json.loads(encode_message(message))
    return loaded
