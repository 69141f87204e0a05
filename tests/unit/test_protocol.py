"""The controller <-> agent protocol: messages round-trip, updates apply whole or not at all."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dnsmesh.errors import PolicyError
from dnsmesh.policy import parse_policy
from dnsmesh.protocol import (
    Ack,
    AppliedState,
    Delta,
    EndpointReport,
    Hello,
    LocalPolicy,
    Nack,
    PolicyChange,
    ProtocolError,
    Report,
    RevisionGap,
    ShadowedPolicy,
    SnapshotMessage,
    apply_update,
    build_delta,
    build_snapshot,
    decode_message,
    decode_message_in_pieces,
    decode_state,
    encode_message,
    encode_state,
    encode_state_pieces,
)


def doc(name: str, address: str = "10.0.0.1", domain: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"domain": domain or f"{name}.mesh", "endpoints": [{"address": address}]},
    }


@pytest.mark.parametrize(
    "message",
    [
        Hello(agent_id="a1", node_name="node-1", labels={"zone": "a"}, software="0.1", revision=7),
        SnapshotMessage(revision=3, policies=[doc("web")]),
        Delta(since=3, revision=5, changes=[PolicyChange(name="web", policy=None)]),
        Ack(revision=5),
        Hello(
            agent_id="a1",
            node_name="node-1",
            local=[LocalPolicy(name="mine", domain="pay.mesh", source="/etc/p.yaml (document 1)")],
            shadowed=[ShadowedPolicy(name="payments", reason="domain 'pay.mesh' is local")],
        ),
        Ack(
            revision=5,
            local=[LocalPolicy(name="mine", domain="pay.mesh")],
            shadowed=[ShadowedPolicy(name="payments", reason="local file wins")],
        ),
        Nack(revision=5, reason="spec.domain: clash"),
        SnapshotMessage(revision=3, policies=[], down=["10.0.0.1", "fd00::1"]),
        Delta(since=3, revision=4, changes=[], down=[]),
        Report(
            endpoints=[
                EndpointReport(address="10.0.0.1", latency_ms=1.5, loss=0.0, state="healthy"),
                EndpointReport(
                    address="fd00::1", loss=1.0, state="ejected", consecutive_failures=5, samples=3
                ),
            ]
        ),
    ],
)
def test_messages_round_trip(message: Any) -> None:
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"type": "teleport"}',
        '{"type": "ack"}',
        '{"type": "ack", "revision": -1}',
        '{"v": 2, "type": "ack", "revision": 1}',
        '{"type": "ack", "revision": 1, "extra": true}',
        '{"type": "report", "endpoints": [{"address": "nope", "loss": 0, "state": "healthy"}]}',
        '{"type": "report", "endpoints": [{"address": "::1", "loss": 2, "state": "healthy"}]}',
        '{"type": "snapshot", "revision": 1, "policies": [], "down": ["10.0.0.999"]}',
    ],
)
def test_bad_messages_are_protocol_errors(text: str) -> None:
    with pytest.raises(ProtocolError):
        decode_message(text)


def test_a_snapshot_replaces_everything() -> None:
    state = apply_update(
        AppliedState.empty(), SnapshotMessage(revision=2, policies=[doc("a"), doc("b")])
    )
    assert state.revision == 2 and set(state.policies) == {"a", "b"}
    state = apply_update(state, SnapshotMessage(revision=9, policies=[doc("c")]))
    assert state.revision == 9 and set(state.policies) == {"c"}


def test_a_delta_puts_and_deletes_on_top_of_its_revision() -> None:
    state = apply_update(
        AppliedState.empty(), SnapshotMessage(revision=2, policies=[doc("a"), doc("b")])
    )
    delta = Delta(
        since=2,
        revision=4,
        changes=[
            PolicyChange(name="a", policy=None),
            PolicyChange(name="b", policy=doc("b", "10.0.0.2")),
            PolicyChange(name="c", policy=doc("c")),
        ],
    )
    after = apply_update(state, delta)
    assert after.revision == 4 and set(after.policies) == {"b", "c"}
    assert str(after.policies["b"].spec.endpoints[0].address) == "10.0.0.2"
    assert state.revision == 2 and set(state.policies) == {"a", "b"}  # the old state is untouched


def test_a_delta_with_a_gap_is_refused() -> None:
    state = AppliedState(5, {})
    with pytest.raises(RevisionGap, match="starts at revision 3, agent is at 5"):
        apply_update(state, Delta(since=3, revision=6, changes=[]))


@pytest.mark.parametrize(
    "update",
    [
        SnapshotMessage(revision=3, policies=[doc("a"), doc("b", "not-an-ip")]),
        SnapshotMessage(revision=3, policies=[doc("a"), doc("b", domain="a.mesh")]),
        Delta(since=1, revision=2, changes=[PolicyChange(name="x", policy=doc("y"))]),
        Delta(
            since=1, revision=2, changes=[PolicyChange(name="b", policy=doc("b", domain="a.mesh"))]
        ),
    ],
)
def test_an_update_that_does_not_validate_changes_nothing(update: SnapshotMessage | Delta) -> None:
    state = apply_update(AppliedState.empty(), SnapshotMessage(revision=1, policies=[doc("a")]))
    with pytest.raises(PolicyError):
        apply_update(state, update)
    assert state.revision == 1 and set(state.policies) == {"a"}


def test_a_snapshot_keeps_the_objects_of_the_policies_it_repeats() -> None:
    """A resync's snapshot mostly repeats what runs: those policies stay the same objects
    (their compiled form is kept), the changed and the new ones are new."""
    state = apply_update(
        AppliedState.empty(), SnapshotMessage(revision=1, policies=[doc("a"), doc("b")])
    )
    again = apply_update(
        state, SnapshotMessage(revision=2, policies=[doc("a"), doc("b", "10.0.0.2"), doc("c")])
    )
    assert again.policies["a"] is state.policies["a"]
    assert again.policies["b"] is not state.policies["b"] and set(again.policies) == {"a", "b", "c"}


def test_build_delta_keeps_each_names_last_change() -> None:
    delta = build_delta(10, 13, [("a", doc("a")), ("b", doc("b")), ("a", None)])
    assert delta.since == 10 and delta.revision == 13
    assert [(c.name, c.policy is None) for c in delta.changes] == [("b", False), ("a", True)]


def test_the_state_file_round_trips_and_refuses_corruption() -> None:
    state = apply_update(
        AppliedState.empty(), SnapshotMessage(revision=4, policies=[doc("a"), doc("b")])
    )
    restored = decode_state(encode_state(state))
    assert restored == state
    with pytest.raises(ProtocolError):
        decode_state(b'{"revision": 4, "policies": [')
    with pytest.raises(PolicyError):
        decode_state(
            SnapshotMessage(revision=1, policies=[doc("a", "x")]).model_dump_json().encode()
        )


def test_the_state_file_is_the_snapshot_message_of_the_state_written_in_pieces() -> None:
    """encode_state writes the policies one by one: the same message as dumping it whole."""
    policies = [parse_policy(d) for d in (doc("a"), doc("b"), doc("c"))]
    state = AppliedState(
        9,
        {p.name: p for p in policies},
        down=frozenset({"10.0.0.9"}),
        mesh_id="mesh-1",
        rollouts={"b": 25},
    )
    whole = build_snapshot(
        9, [p.to_document() for p in policies], state.down, "mesh-1", rollouts=state.rollouts
    )
    pieces = list(encode_state_pieces(state))
    assert len(pieces) == 2 + len(policies)  # head, a piece per policy, tail
    assert json.loads(b"".join(pieces)) == json.loads(whole.model_dump_json())
    assert json.loads(encode_state(AppliedState.empty()))["policies"] == []


@pytest.mark.parametrize(
    "message",
    [
        SnapshotMessage(revision=3, policies=[doc("a"), doc("b")], down=["10.0.0.2"], mesh_id="m"),
        SnapshotMessage(revision=0, policies=[], mesh_id=None),
        Delta(since=3, revision=4, changes=[PolicyChange(name="a", policy=doc("a"))]),
        Ack(revision=4),
    ],
    ids=["snapshot", "empty snapshot", "delta", "ack"],
)
def test_a_message_decoded_in_pieces_is_the_message_decoded_whole(message: Any) -> None:
    text = encode_message(message)
    assert decode_message_in_pieces(text) == decode_message(text) == message
    assert decode_message_in_pieces(text.encode()) == message


@pytest.mark.parametrize(
    "text",
    [
        '{"v": 1, "type": "snapshot", "revision": 1, "policies": ["a string"], "mesh_id": null}',
        '{"v": 1, "type": "snapshot", "revision": -1, "policies": [], "mesh_id": null}',
        '{"v": 1, "type": "snapshot", "revision": 1, "policies": [{}], "mesh_id": null, "x": 1}',
        '{"v": 1, "type": "nonsense"}',
        '{"v": 1, "type": "snapshot", "revision": 1, "policies": [',
        "[]",
    ],
)
def test_a_message_decoded_in_pieces_is_refused_as_a_whole_one_is(text: str) -> None:
    with pytest.raises(ProtocolError):
        decode_message(text)
    with pytest.raises(ProtocolError):
        decode_message_in_pieces(text)


def test_the_down_set_comes_whole_with_snapshots_and_only_when_changed_with_deltas() -> None:
    state = apply_update(
        AppliedState.empty(), SnapshotMessage(revision=1, policies=[doc("a")], down=["10.0.0.1"])
    )
    assert state.down == {"10.0.0.1"}
    unchanged = apply_update(state, Delta(since=1, revision=2, changes=[]))
    assert unchanged.down == {"10.0.0.1"}
    recovered = apply_update(unchanged, Delta(since=2, revision=3, changes=[], down=[]))
    assert recovered.down == frozenset()
    assert build_delta(3, 4, [], down={"fd00:0::1"}).down == ["fd00::1"]
    assert decode_state(encode_state(state)).down == {"10.0.0.1"}


def test_an_older_agents_hello_and_ack_say_nothing_local_or_shadowed() -> None:
    hello = decode_message('{"v": 1, "type": "hello", "agent_id": "a", "node_name": "n"}')
    ack = decode_message('{"v": 1, "type": "ack", "revision": 3}')
    assert isinstance(hello, Hello) and hello.local == [] and hello.shadowed == []
    assert isinstance(ack, Ack) and ack.local == [] and ack.shadowed == []
    with pytest.raises(ProtocolError):
        decode_message('{"v": 1, "type": "ack", "revision": 3, "shadowed": [{"name": "x"}]}')
