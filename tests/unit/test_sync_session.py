"""The sync session without sockets: feed messages, assert the decisions that come out.

In the style of python-websockets' protocol tests: no event loop, no transport.
"""

from __future__ import annotations

import pytest

from agent.sync.policy_sources import Applied, Refused
from agent.sync.session import (
    Apply,
    Closed,
    ControllerError,
    Disconnect,
    LocalChanged,
    PollNext,
    Resync,
    Send,
    SyncSession,
)
from dnsmesh.protocol import (
    Ack,
    Delta,
    ErrorMessage,
    Hello,
    Nack,
    ProtocolError,
    Report,
    ShadowedPolicy,
    SnapshotMessage,
)


def snapshot(revision: int) -> SnapshotMessage:
    return SnapshotMessage(revision=revision, policies=[])


def delta(since: int, revision: int) -> Delta:
    return Delta(since=since, revision=revision, changes=[])


def test_one_update_is_applied() -> None:
    update = snapshot(3)
    assert SyncSession().receive([update]) == [Apply((update,))]


def test_consecutive_updates_are_applied_together() -> None:
    first, second, third = snapshot(3), delta(3, 4), delta(4, 5)
    assert SyncSession().receive([first, second, third]) == [Apply((first, second, third))]


def test_a_report_between_updates_splits_them_and_keeps_the_order() -> None:
    first, second = snapshot(3), delta(3, 4)
    report = Report(endpoints=[])
    assert SyncSession().receive([first, report, second]) == [
        Apply((first,)),
        Send(report),
        Apply((second,)),
    ]


def test_a_local_change_is_acked_again_with_what_is_shadowed_now() -> None:
    ack = Ack(revision=7, shadowed=[ShadowedPolicy(name="web", reason="local file")])
    assert SyncSession().receive([LocalChanged(ack)]) == [Send(ack)]


def test_a_controller_error_is_reported_and_the_channel_stays() -> None:
    message = ErrorMessage(code="bad_request", message="no")
    assert SyncSession().receive([message]) == [ControllerError("bad_request", "no")]


def test_a_close_disconnects_with_a_hint_for_a_known_code() -> None:
    (decision,) = SyncSession().receive([Closed(4409, "duplicate")])
    assert isinstance(decision, Disconnect)
    assert "(4409 duplicate)" in decision.reason
    assert "another connection uses this agent id" in decision.reason


def test_a_close_with_an_unknown_code_has_no_hint() -> None:
    assert SyncSession().receive([Closed(4000, "odd")]) == [
        Disconnect("the controller closed the stream (4000 odd)")
    ]


@pytest.mark.parametrize("code", [1000, 1001, 1012])
def test_a_controller_going_away_or_restarting_is_a_clean_close(code: int) -> None:
    (decision,) = SyncSession().receive([Closed(code, "bye")])
    assert decision == Disconnect(f"the controller closed the stream ({code} bye)", clean=True)


@pytest.mark.parametrize("code", [None, 1006, 1011, 4409])
def test_a_failure_or_a_refusal_is_not_a_clean_close(code: int | None) -> None:
    (decision,) = SyncSession().receive([Closed(code, "x")])
    assert isinstance(decision, Disconnect) and not decision.clean


def test_updates_before_a_close_are_applied_first() -> None:
    update = snapshot(2)
    decisions = SyncSession().receive([update, Closed(None, "reset")])
    assert decisions[0] == Apply((update,))
    assert isinstance(decisions[1], Disconnect)


def test_a_message_only_agents_send_is_a_protocol_error() -> None:
    hello = Hello(agent_id="a", node_name="n", labels={}, software="s", revision=0)
    with pytest.raises(ProtocolError, match="unexpected message"):
        SyncSession().receive([hello])


RUNS = Ack(revision=9, shadowed=[ShadowedPolicy(name="web", reason="local file")])


def test_each_applied_revision_is_acked_with_what_is_shadowed() -> None:
    assert SyncSession().applied([Applied(4)], RUNS) == [
        Send(Ack(revision=4, shadowed=RUNS.shadowed))
    ]


def test_a_refused_revision_is_nacked_with_its_reason() -> None:
    assert SyncSession().applied([Refused(4, "invalid update: x")], RUNS) == [
        Send(Nack(revision=4, reason="invalid update: x"))
    ]


def test_a_gap_is_nacked_then_resynced() -> None:
    outcomes = [Applied(4), Refused(6, "gap", resync=True)]
    assert SyncSession().applied(outcomes, Ack(revision=4)) == [
        Send(Ack(revision=4)),
        Send(Nack(revision=6, reason="gap")),
        Resync("gap"),
    ]


def test_polling_goes_on_from_what_runs_after_an_ack() -> None:
    assert SyncSession.poll_next([Applied(5)], snapshot(5), running=5) == PollNext(5)


def test_polling_asks_from_what_runs_after_a_gap() -> None:
    outcomes = [Refused(9, "gap", resync=True)]
    assert SyncSession.poll_next(outcomes, delta(8, 9), running=3) == PollNext(3)


def test_polling_pauses_after_a_refusal_that_did_not_advance() -> None:
    outcomes = [Refused(9, "invalid update: x")]
    assert SyncSession.poll_next(outcomes, snapshot(9), running=3) == PollNext(9, pause=True)
