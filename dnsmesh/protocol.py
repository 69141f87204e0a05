"""The controller <-> agent protocol: versioned JSON messages and the pure rules for applying them.

Modelled on xDS and etcd watches (docs/design.md). One WebSocket per agent:

    agent -> controller   hello {agent_id, node_name, labels, software, revision,
                                 local, shadowed, mesh_id}
    controller -> agent   snapshot {revision, policies}            (new agent, or log compacted)
                          delta {since, revision, changes}          (everything after `since`)
    agent -> controller   ack {revision, local, shadowed} | nack {revision, reason}
    agent -> controller   report {endpoints}                        (probe results, every few s)
    agent -> controller   answers {counts}                          (answers since the last one)
    controller -> agent   error {code, message}                     (then closes)

Besides policies, a revision carries ``down``: the endpoint addresses that a quorum of
reporting agents sees as failing, so that every agent stops handing them out, including
agents that never probed them. It is a whole set: a snapshot always carries it, a delta
carries it only when it changed (``null``: unchanged). ``drained`` travels the same way:
the operators' drains (dnsmesh.drains), each an address and optionally the one policy it is
drained in, which no agent answers whatever its health. So does ``rollouts``: the
controller's canary rollouts, each a policy and its canary group's percent of the answers
(a controller policy with a canary and no entry answers its canary group 0 %). And
``probers`` (dnsmesh.probing): which agents probe which endpoint address, so that an
endpoint gets a bounded number of probes whatever the fleet's size. And ``slice_scale``
(dnsmesh.scaling): how many endpoints each demand-driven slice answers from, each a policy,
a slice id and a count (a scaled slice with no entry answers from its ``scale.min``).

Every update also names the ``mesh_id`` (a UUID made with the controller's database), and
the agent's hello names the mesh its state came from: an agent whose state came from
another mesh gets a snapshot, and a delta of another mesh is refused like a revision gap
(revision numbers of two meshes say nothing about each other). ``null``: not known (a
state from before mesh ids, or a controller that sends none).

An agent may also serve policies from its own ``--policies`` files. The hello and every ACK
carry them (``local``: each one's name and domain, so the controller can refuse a write that
would clash) and the controller policies that they shadow on that node (``shadowed``: a
controller policy whose name or domain a local file also defines is not served there; the
local file wins). An ACK is also sent, for the revision that runs, when the local files
change.

Policy documents travel as plain JSON and are validated by the agent when it applies them,
so that a document the agent cannot accept becomes a NACK with the reason rather than a
protocol failure. Applying is all or nothing: ``apply_update`` returns a new state or raises.
"""

from __future__ import annotations

import codecs
import functools
import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from dnsmesh.drains import NO_DRAINS, Drained, DrainSet
from dnsmesh.errors import DnsmeshError, FieldError, PolicyError
from dnsmesh.jsonpieces import load_object
from dnsmesh.policy import Labels, Policy, check_policy_set, field_errors, parse_policy
from dnsmesh.probing import DEFAULT_SPREAD_LABEL, NO_ASSIGNMENT, Assignment

PROTOCOL_VERSION: Literal[1] = 1

Document = dict[str, Any]


def _address_text(value: object) -> str:
    """An IP address in its canonical text, so the same endpoint is one key everywhere."""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


IPAddressText = Annotated[str, BeforeValidator(_address_text)]


class ProtocolError(DnsmeshError):
    """A message is not valid JSON or not a message of this protocol version."""


class RevisionGap(ProtocolError):
    """A delta does not start at the revision the agent has: the agent needs a resync."""


# The models an agent's start from its state file does without: their validators are built
# by ``prepare_messages`` (or on first use), not at import (~4-5 ms of the cold start).
_BUILT_LATER = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = PROTOCOL_VERSION


class LocalPolicy(BaseModel):
    """A policy an agent serves from its own files: what a controller write may not reuse."""

    model_config = _BUILT_LATER
    name: str = Field(min_length=1, max_length=253)
    domain: str = Field(min_length=1, max_length=253)
    source: str = Field(default="", max_length=1024, description="file (and document)")


class ShadowedPolicy(BaseModel):
    """A controller policy the agent does not serve because a local file defines it too."""

    model_config = _BUILT_LATER
    name: str = Field(min_length=1, max_length=253)
    reason: str = Field(max_length=1024)


LocalPolicies = Annotated[list[LocalPolicy], Field(max_length=10_000)]
ShadowedPolicies = Annotated[list[ShadowedPolicy], Field(max_length=10_000)]


class Hello(_Message):
    model_config = _BUILT_LATER
    type: Literal["hello"] = "hello"
    agent_id: str = Field(min_length=1, max_length=128)
    node_name: str = Field(min_length=1, max_length=253)
    labels: Labels = Field(default_factory=dict)  # the limits of a policy's labels
    software: str = Field(default="", max_length=64)
    revision: int = Field(default=0, ge=0, description="the last revision the agent applied")
    local: LocalPolicies = Field(default_factory=list, description="its --policies files")
    shadowed: ShadowedPolicies = Field(default_factory=list)
    mesh_id: str | None = Field(
        default=None, max_length=64, description="the mesh its state came from; null: none"
    )


DownSet = Annotated[list[IPAddressText], Field(max_length=100_000)]
MeshId = Annotated[str | None, Field(default=None, max_length=64)]


class DrainEntry(BaseModel):
    """An endpoint an operator drained: in ``policy`` only, or in every policy (null)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: IPAddressText
    policy: str | None = Field(default=None, min_length=1, max_length=63)


DrainList = Annotated[list[DrainEntry], Field(max_length=100_000)]


def drain_entries(drains: DrainSet) -> list[DrainEntry]:
    return [DrainEntry(address=d.address, policy=d.policy) for d in sorted(drains.entries)]


def drain_set(entries: Iterable[DrainEntry]) -> DrainSet:
    return DrainSet(Drained(e.address, e.policy) for e in entries)


class RolloutEntry(BaseModel):
    """A rollout in force: the canary group of ``policy`` gets ``share`` % of its answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    policy: str = Field(min_length=1, max_length=63)
    share: int = Field(ge=0, le=100)


RolloutList = Annotated[list[RolloutEntry], Field(max_length=100_000)]
Rollouts = Mapping[str, int]  # policy name -> the canary group's share in percent
NO_ROLLOUTS: Rollouts = {}


def rollout_entries(rollouts: Rollouts) -> list[RolloutEntry]:
    return [RolloutEntry(policy=name, share=rollouts[name]) for name in sorted(rollouts)]


def rollout_shares(entries: Iterable[RolloutEntry]) -> dict[str, int]:
    return {e.policy: e.share for e in entries}


class SliceScaleEntry(BaseModel):
    """A scaled slice's count in force: slice ``slice`` of ``policy`` answers from its first
    ``count`` endpoints (dnsmesh.policy.scalable_endpoints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    policy: str = Field(min_length=1, max_length=63)
    slice: str = Field(min_length=1, max_length=63)
    count: int = Field(ge=1, le=1024)


SliceScaleList = Annotated[list[SliceScaleEntry], Field(max_length=100_000)]
SliceCounts = Mapping[str, Mapping[str, int]]  # policy name -> slice id -> endpoint count
NO_SLICE_COUNTS: SliceCounts = {}


def slice_scale_entries(counts: SliceCounts) -> list[SliceScaleEntry]:
    return [
        SliceScaleEntry(policy=policy, slice=slice_id, count=counts[policy][slice_id])
        for policy in sorted(counts)
        for slice_id in sorted(counts[policy])
    ]


def slice_counts_of(entries: Iterable[SliceScaleEntry]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for entry in entries:
        out.setdefault(entry.policy, {})[entry.slice] = entry.count
    return out


class ProberEntry(BaseModel):
    """The agents that probe one endpoint address, and what each zone measured of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: IPAddressText
    agents: list[str] = Field(max_length=1000)
    zone_latency_ms: dict[str, float] = Field(default_factory=dict, max_length=1000)


class Probers(BaseModel):
    """Coordinated probing (dnsmesh.probing): an address listed here is probed only by its
    agents; every other address by every agent. ``spread_label`` names the node label whose
    value is an agent's zone (for ``zone_latency_ms``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    spread_label: str = Field(default=DEFAULT_SPREAD_LABEL, max_length=63)
    endpoints: list[ProberEntry] = Field(default_factory=list, max_length=100_000)


def prober_entries(assignment: Assignment) -> Probers:
    return Probers(
        spread_label=assignment.spread_label,
        endpoints=[
            ProberEntry(
                address=address,
                agents=list(agents),
                zone_latency_ms=dict(assignment.zone_latency_ms.get(address, {})),
            )
            for address, agents in sorted(assignment.probers.items())
        ],
    )


def assignment_of(probers: Probers) -> Assignment:
    return Assignment(
        probers={e.address: tuple(sorted(e.agents)) for e in probers.endpoints},
        zone_latency_ms={
            e.address: e.zone_latency_ms for e in probers.endpoints if e.zone_latency_ms
        },
        spread_label=probers.spread_label,
    )


class SnapshotMessage(_Message):
    type: Literal["snapshot"] = "snapshot"
    revision: int = Field(ge=0)
    policies: list[Document]
    down: DownSet = Field(default_factory=list, description="endpoints marked down mesh-wide")
    drained: DrainList = Field(default_factory=list, description="endpoints operators drained")
    rollouts: RolloutList = Field(default_factory=list, description="canary shares in force")
    probers: Probers = Field(default_factory=Probers, description="who probes which endpoint")
    mesh_id: MeshId
    slice_scale: SliceScaleList = Field(
        default_factory=list, description="scaled slices' endpoint counts"
    )


class PolicyChange(BaseModel):
    model_config = _BUILT_LATER
    name: str
    policy: Document | None = Field(description="the policy after the change; null: deleted")


class Delta(_Message):
    model_config = _BUILT_LATER
    type: Literal["delta"] = "delta"
    since: int = Field(ge=0, description="the revision this delta applies on top of")
    revision: int = Field(ge=0)
    changes: list[PolicyChange]
    down: DownSet | None = Field(default=None, description="the new down set; null: unchanged")
    drained: DrainList | None = Field(default=None, description="the new drains; null: unchanged")
    rollouts: RolloutList | None = Field(
        default=None, description="the new canary shares; null: unchanged"
    )
    probers: Probers | None = Field(default=None, description="the new probers; null: unchanged")
    mesh_id: MeshId
    slice_scale: SliceScaleList | None = Field(
        default=None, description="the new scaled slices' counts; null: unchanged"
    )


class Ack(_Message):
    model_config = _BUILT_LATER
    type: Literal["ack"] = "ack"
    revision: int = Field(ge=0)
    local: LocalPolicies = Field(default_factory=list, description="its --policies files")
    shadowed: ShadowedPolicies = Field(
        default_factory=list, description="controller policies at `revision` not served here"
    )


class Nack(_Message):
    model_config = _BUILT_LATER
    type: Literal["nack"] = "nack"
    revision: int = Field(ge=0)
    reason: str = Field(max_length=4096)


class EndpointReport(BaseModel):
    """What one agent measured of one endpoint address (probes of all its policies merged)."""

    model_config = _BUILT_LATER
    address: IPAddressText
    latency_ms: float | None = Field(default=None, ge=0, description="EWMA; null: no success")
    loss: float = Field(ge=0.0, le=1.0, description="EWMA of failed probes")
    state: Literal["healthy", "ejected", "unknown"]
    consecutive_failures: int = Field(default=0, ge=0)
    samples: int = Field(default=0, ge=0, description="probes since the last report")


class Report(_Message):
    model_config = _BUILT_LATER
    type: Literal["report"] = "report"
    endpoints: list[EndpointReport] = Field(max_length=100_000)


class AnswerCount(BaseModel):
    """Answers one agent gave naming one endpoint of one policy's slice, since its last
    ``answers`` message (a delta, not a running total)."""

    model_config = _BUILT_LATER
    policy: str = Field(min_length=1, max_length=63)
    slice: str = Field(min_length=1, max_length=63, description="slice id; _default: none")
    endpoint: IPAddressText
    answers: int = Field(ge=1, le=2**40)


class AnswerReport(_Message):
    """Sent only to a controller that accepts it (``ANSWERS_FEATURE``): an older one would
    close the stream on a message type it does not know."""

    model_config = _BUILT_LATER
    type: Literal["answers"] = "answers"
    counts: list[AnswerCount] = Field(max_length=100_000)


# The WebSocket upgrade response of a controller that takes ``answers`` messages names it in
# this header; a polling agent learns it from POST /v1/agents/{id}/answers not being 404.
FEATURES_HEADER = "Dnsmesh-Accepts"
ANSWERS_FEATURE = "answers"


class ErrorMessage(_Message):
    model_config = _BUILT_LATER
    type: Literal["error"] = "error"
    code: str
    message: str


Message = Annotated[
    Hello | SnapshotMessage | Delta | Ack | Nack | Report | AnswerReport | ErrorMessage,
    Field(discriminator="type"),
]

_DEFERRED: tuple[type[BaseModel], ...] = (
    LocalPolicy,
    ShadowedPolicy,
    Hello,
    PolicyChange,
    Delta,
    Ack,
    Nack,
    EndpointReport,
    Report,
    AnswerCount,
    AnswerReport,
    ErrorMessage,
)


@functools.cache
def _message_adapter() -> TypeAdapter[Message]:
    """The validator of any message, built on first use: building it (and the deferred
    models above) costs ~15 ms that an agent's start from its state file does without."""
    return TypeAdapter(Message)


def prepare_messages() -> None:
    """Build every message's validator and serializer now: the sync stack calls this from
    a worker thread so that the first message sent or received does not build them on the
    event loop."""
    _message_adapter()
    for model in _DEFERRED:
        model.model_rebuild()  # a no-op for one built already


def encode_message(message: _Message) -> str:
    return message.model_dump_json()


def decode_message(data: str | bytes) -> Message:
    """One message from its JSON text; ProtocolError names what is wrong."""
    try:
        return _message_adapter().validate_json(data)
    except ValidationError as exc:
        raise _not_a_message(exc) from exc


# Messages from this size on are worth ``decode_message_in_pieces`` in a worker thread.
PIECEWISE_FROM = 1 << 20


def decode_message_in_pieces(data: str | bytes) -> Message:
    """``decode_message`` made of short calls, for a big message in a worker thread.

    ``validate_json`` of a snapshot of 100,000 policies (30 MiB) is one call of 0.4 s that
    holds the GIL, a stall of the event loop however it is threaded. Here the JSON is
    decoded a member or an element at a time (dnsmesh.jsonpieces), UTF-8 a MiB at a time
    before that (the whole 30 MiB at once: 14 ms with the GIL held), and a snapshot's
    policies, which ``apply_update`` validates one by one anyway, are only checked to be
    objects: the envelope alone goes through the message's validator.
    """
    try:
        document = load_object(data if isinstance(data, str) else _utf8_in_slices(data))
    except ValueError as exc:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        raise ProtocolError(f"not a dnsmesh/v{PROTOCOL_VERSION} message: {exc}") from exc
    policies = document.get("policies")
    try:
        if (
            document.get("type") == "snapshot"
            and isinstance(policies, list)
            and all(isinstance(p, dict) for p in policies)
        ):
            envelope = SnapshotMessage.model_validate({**document, "policies": []})
            return envelope.model_copy(update={"policies": policies})
        return _message_adapter().validate_python(document)
    except ValidationError as exc:
        raise _not_a_message(exc) from exc


_UTF8_SLICE = 1 << 20


def _utf8_in_slices(data: bytes) -> str:
    """``data.decode()`` a MiB per call; UnicodeDecodeError as that would."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    parts = [decoder.decode(view[at : at + _UTF8_SLICE]) for at in range(0, len(data), _UTF8_SLICE)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


def _not_a_message(exc: ValidationError) -> ProtocolError:
    detail = "; ".join(str(e) for e in field_errors(exc)[:5])
    return ProtocolError(f"not a dnsmesh/v{PROTOCOL_VERSION} message: {detail}")


@dataclass(frozen=True, slots=True)
class AppliedState:
    """What an agent runs: a revision, the policies at that revision by name, the
    endpoint addresses marked down mesh-wide and the operators' drains."""

    revision: int
    policies: Mapping[str, Policy]
    down: frozenset[str] = frozenset()
    mesh_id: str | None = None  # the controller's mesh the revision belongs to
    drains: DrainSet = NO_DRAINS
    rollouts: Rollouts = field(default_factory=dict)
    probers: Assignment = NO_ASSIGNMENT  # coordinated probing: who probes which address
    slice_scale: SliceCounts = field(default_factory=dict)  # demand-driven slices' counts

    @classmethod
    def empty(cls) -> AppliedState:
        return cls(0, {})


def apply_update(state: AppliedState, update: SnapshotMessage | Delta) -> AppliedState:
    """The state after ``update``, or PolicyError/RevisionGap and the state is unchanged.

    A snapshot replaces everything; a delta must start exactly at ``state.revision`` (a gap
    means a message was missed and the agent must resync instead of guessing) and come
    from the mesh the state came from.
    """
    if isinstance(update, SnapshotMessage):
        policies = {p.name: _same_if_equal(p, state) for p in map(parse_policy, update.policies)}
        check_policy_set(list(policies.values()))
        return AppliedState(
            update.revision,
            policies,
            frozenset(update.down),
            update.mesh_id,
            drain_set(update.drained),
            rollout_shares(update.rollouts),
            assignment_of(update.probers),
            slice_counts_of(update.slice_scale),
        )
    if update.mesh_id is not None and state.mesh_id not in (None, update.mesh_id):
        raise RevisionGap(f"delta of mesh {update.mesh_id}, agent's state is of {state.mesh_id}")
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
    down = state.down if update.down is None else frozenset(update.down)
    drains = state.drains if update.drained is None else drain_set(update.drained)
    rollouts = state.rollouts if update.rollouts is None else rollout_shares(update.rollouts)
    probers = state.probers if update.probers is None else assignment_of(update.probers)
    scaled = (
        state.slice_scale if update.slice_scale is None else slice_counts_of(update.slice_scale)
    )
    mesh_id = update.mesh_id or state.mesh_id
    return AppliedState(update.revision, merged, down, mesh_id, drains, rollouts, probers, scaled)


def _same_if_equal(policy: Policy, state: AppliedState) -> Policy:
    """The policy of that name in ``state`` if it equals ``policy``, else ``policy``.

    A snapshot after a reconnect mostly repeats what the agent runs: keeping the objects
    lets the compile keep their compiled form and health decide again only what changed
    (for 100,000 policies, on the event loop), as a delta would.
    """
    before = state.policies.get(policy.name)
    return before if before is not None and before == policy else policy


def build_delta(
    since: int,
    revision: int,
    changes: Iterable[tuple[str, Document | None]],
    down: Iterable[str] | None = None,
    mesh_id: str | None = None,
    drains: DrainSet | None = None,
    rollouts: Rollouts | None = None,
    probers: Assignment | None = None,
    slice_scale: SliceCounts | None = None,
) -> Delta:
    """A delta from change-log rows in revision order; only each name's last change is kept."""
    last: dict[str, Document | None] = {}
    for name, document in changes:
        last.pop(name, None)  # re-insert so the order follows each name's latest change
        last[name] = document
    return Delta(
        since=since,
        revision=revision,
        changes=[PolicyChange(name=name, policy=doc) for name, doc in last.items()],
        down=None if down is None else sorted(down),
        drained=None if drains is None else drain_entries(drains),
        rollouts=None if rollouts is None else rollout_entries(rollouts),
        probers=None if probers is None else prober_entries(probers),
        mesh_id=mesh_id,
        slice_scale=None if slice_scale is None else slice_scale_entries(slice_scale),
    )


def build_snapshot(
    revision: int,
    documents: Iterable[Document],
    down: Iterable[str] = (),
    mesh_id: str | None = None,
    drains: DrainSet = NO_DRAINS,
    rollouts: Rollouts = NO_ROLLOUTS,
    probers: Assignment = NO_ASSIGNMENT,
    slice_scale: SliceCounts = NO_SLICE_COUNTS,
) -> SnapshotMessage:
    return SnapshotMessage(
        revision=revision,
        policies=list(documents),
        down=sorted(down),
        drained=drain_entries(drains),
        rollouts=rollout_entries(rollouts),
        probers=prober_entries(probers),
        mesh_id=mesh_id,
        slice_scale=slice_scale_entries(slice_scale),
    )


def encode_state(state: AppliedState) -> bytes:
    """The agent's state file: the last applied snapshot, so a restart answers at once."""
    return b"".join(encode_state_pieces(state))


def encode_state_pieces(state: AppliedState) -> Iterator[bytes]:
    """``encode_state`` in pieces: a snapshot message, its policies last, one per line.

    Each piece is one short call. A worker thread writing the state of 100,000 policies
    thus lets the event loop in at every GIL switch, where one ``model_dump_json`` of the
    whole snapshot held the GIL for 0.5 s (and the validation of 100,000 documents into it
    0.12 s more), a stall of every query on every controller change.
    """
    envelope = build_snapshot(
        state.revision,
        (),
        state.down,
        state.mesh_id,
        state.drains,
        state.rollouts,
        state.probers,
        state.slice_scale,
    )
    head = envelope.model_dump_json(exclude={"policies"})
    yield head[:-1].encode() + b',\n"policies": ['
    separator = b"\n"
    for policy in state.policies.values():
        # The JSON of to_document() (aliases, no nulls), without the dict in between.
        yield separator + policy.model_dump_json(by_alias=True, exclude_none=True).encode()
        separator = b",\n"
    yield b"\n]}\n"


def decode_state(data: bytes) -> AppliedState:
    """A state file back into a state; ProtocolError or PolicyError if it is corrupt."""
    try:
        snapshot = SnapshotMessage.model_validate_json(data)
    except ValidationError as exc:
        raise ProtocolError(f"not a dnsmesh state file: {exc.error_count()} errors") from exc
    return apply_update(AppliedState.empty(), snapshot)


def message_json(message: _Message) -> Document:
    """A message as a JSON-ready dict (for HTTP polling bodies)."""
    loaded: Document = json.loads(encode_message(message))
    return loaded
