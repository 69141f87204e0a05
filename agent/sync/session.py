"""The sync rules without I/O: messages in, decisions out.

Both transports (agent/sync/websocket.py, agent/sync/polling.py) drive one ``SyncSession``
the way python-websockets drives its Sans-I/O ``Protocol``: they feed it what arrived
(decoded controller messages, and the agent's own events that must be sent in order) and
carry out the decisions it returns. Applying an update is the one decision with an
answer: the transport applies it (agent/sync/policy_sources.py decides each revision) and
feeds the outcomes back, which the session turns into ACKs, NACKs and a resync. So the
ACK/NACK/resync rules exist here once; the session reads no clock, socket or file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.sync.policy_sources import Applied, Outcome, Refused
from dnsmesh.protocol import (
    Ack,
    AnswerReport,
    Delta,
    ErrorMessage,
    Hello,
    Nack,
    ProtocolError,
    Report,
    SnapshotMessage,
)

Update = SnapshotMessage | Delta


# -- what a transport feeds in, besides the controller's messages ------------------------


@dataclass(frozen=True, slots=True)
class Closed:
    """The channel closed (cleanly or not), or a message could not be decoded."""

    code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class LocalChanged:
    """The local files changed: ACK what runs again, with what is local and shadowed now."""

    ack: Ack


# What a controller may send, and the agent's own reports that go out in order with it.
Event = (
    Hello
    | SnapshotMessage
    | Delta
    | Ack
    | Nack
    | Report
    | AnswerReport
    | ErrorMessage
    | Closed
    | LocalChanged
)


# -- what comes out ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply these updates together (one compile, one swap), then call ``applied``."""

    updates: tuple[Update, ...]


@dataclass(frozen=True, slots=True)
class Send:
    """Send this message to the controller."""

    message: Ack | Nack | Report | AnswerReport


@dataclass(frozen=True, slots=True)
class ControllerError:
    """The controller reported an error; it is logged and the channel stays open."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The channel is over; reconnect with backoff (afresh after a clean close)."""

    reason: str
    clean: bool = False


@dataclass(frozen=True, slots=True)
class Resync:
    """A revision gap: close the channel and start again from what runs."""

    reason: str


Decision = Apply | Send | ControllerError | Disconnect | Resync

# Close codes of controller/hub.py worth a word in the log (RFC 6455 §7.4.2: 4000-4999 are
# the application's).
# Normal closure, going away (a controller stopping), service restart (RFC 6455 §7.4.1, the
# IANA registry): the controller ended a channel that worked, and will be back.
CLEAN_CLOSES = frozenset({1000, 1001, 1012})
CLOSE_HINTS = {
    4409: ": another connection uses this agent id; is the state folder shared between nodes?",
    4400: ": the controller did not understand this agent (versions apart?)",
    4403: ": the controller refused this agent's certificate (revoked?) or its hello",
}


@dataclass(frozen=True, slots=True)
class PollNext:
    """Where the polling transport asks from next, and whether it pauses first."""

    since: int
    pause: bool = False


class SyncSession:
    """The decisions of one channel; a new channel gets a new session."""

    def receive(self, events: Sequence[Event]) -> list[Decision]:
        """Decisions for a batch of events, in order; consecutive updates apply together.

        Coalescing matters when the controller pushes faster than the agent compiles: a
        burst costs one compile, one swap and one state-file write, and the last
        revision's ACK covers the ones before it.
        """
        decisions: list[Decision] = []
        updates: list[Update] = []
        for event in events:
            if isinstance(event, SnapshotMessage | Delta):
                updates.append(event)
                continue
            if updates:
                decisions.append(Apply(tuple(updates)))
                updates = []
            decisions.extend(self._other(event))
        if updates:
            decisions.append(Apply(tuple(updates)))
        return decisions

    def _other(self, event: Event) -> list[Decision]:
        if isinstance(event, Report | AnswerReport):
            return [Send(event)]
        if isinstance(event, LocalChanged):
            return [Send(event.ack)]
        if isinstance(event, ErrorMessage):
            return [ControllerError(event.code, event.message)]
        if isinstance(event, Closed):
            hint = CLOSE_HINTS.get(event.code or 0, "")
            reason = f"the controller closed the stream ({event.code} {event.reason}){hint}"
            return [Disconnect(reason, clean=event.code in CLEAN_CLOSES)]
        raise ProtocolError(f"unexpected message from the controller: {event!r}"[:200])

    def applied(self, outcomes: Iterable[Outcome], ack: Ack) -> list[Decision]:
        """An ACK per applied revision, a NACK per refused one, then a resync after a gap.

        ``ack`` is the ACK of what runs now (what is local and shadowed); each applied
        revision is acknowledged with it.
        """
        decisions: list[Decision] = []
        gap: Refused | None = None
        for outcome in outcomes:
            if isinstance(outcome, Applied):
                decisions.append(Send(ack.model_copy(update={"revision": outcome.revision})))
                continue
            decisions.append(Send(Nack(revision=outcome.revision, reason=outcome.reason)))
            if outcome.resync and gap is None:
                gap = outcome
        if gap is not None:
            decisions.append(Resync(gap.reason))
        return decisions

    @staticmethod
    def poll_next(outcomes: Sequence[Outcome], asked: Update, *, running: int) -> PollNext:
        """Where to poll from after ``asked`` was applied, given the revision that runs."""
        refusals = [o for o in outcomes if isinstance(o, Refused)]
        if refusals and not any(r.resync for r in refusals) and running < asked.revision:
            # Refused without advancing (an invalid document): asking again at once would
            # get the same update; wait, then ask for anything newer than it.
            return PollNext(asked.revision, pause=True)
        return PollNext(running)  # after a gap: the controller sends what we lack
