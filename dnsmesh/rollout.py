"""Rollouts, pure: which group answers a client (cohorts), and the canary engine's decisions.

Two parts, no I/O and no clock (the caller passes "now"):

* **Sides and cohorts.** A policy with ``spec.canary`` answers from two sides, its canary
  group (``share`` % of the answers) and every other endpoint (the rest); one with
  ``spec.split`` from each of its groups at its share. With cohort ``client`` the side is
  chosen by weighted rendezvous hashing of (client address, policy name) over the sides
  with their shares: raising a side's share only raises its scores, so clients only move
  *into* it (a client on the canary at 10 % is still on it at 25 %, and every client is back
  on the stable side at 0). With cohort ``random`` it is a fresh weighted draw per query.
* **The engine** (``decide``): the probe readings of the canary group's endpoints in, one
  decision out: step up, roll back, complete, or nothing (with the figures it used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from dnsmesh.policy import Canary, Endpoint, PolicySpec
from dnsmesh.selection import rendezvous_score

STABLE: Final = "stable"  # the label of a canary policy's side that is not the canary group


@dataclass(frozen=True, slots=True)
class Side:
    """One part of a policy's answers: the endpoints of ``groups`` (or, ``others``, every
    endpoint outside them), given ``share`` percent of the answers."""

    label: str
    share: int
    groups: frozenset[str]
    others: bool = False

    def holds(self, endpoint: Endpoint) -> bool:
        return (endpoint.group in self.groups) != self.others


def traffic_sides(spec: PolicySpec, canary_share: int | None) -> tuple[Side, ...] | None:
    """The sides a policy's answers are split into, or None when they are not split (no
    canary and no split, or a canary whose share is not known: weights as written)."""
    if spec.split is not None:
        return tuple(
            Side(group, share, frozenset((group,))) for group, share in spec.split.shares.items()
        )
    if spec.canary is None or canary_share is None:
        return None
    group = frozenset((spec.canary.group,))
    return (
        Side(spec.canary.group, canary_share, group),
        Side(STABLE, 100 - canary_share, group, others=True),
    )


def side_key(policy: str, label: str) -> bytes:
    """The per-side part of the cohort hash: the policy is in it so that a client's cohort in
    one policy says nothing about its cohort in another."""
    return f"{policy}\x00{label}\x00".encode()


def cohort_of(client: str, keys: Sequence[bytes], shares: Sequence[int]) -> int:
    """The index of the side ``client`` belongs to: the highest weighted rendezvous score
    among the sides whose share is above 0 (at least one must be)."""
    encoded = client.encode("utf-8", "surrogateescape")
    best, best_score = -1, -1.0
    for index, (key, share) in enumerate(zip(keys, shares, strict=True)):
        if share > 0:
            score = rendezvous_score(encoded, key, share)
            if score > best_score:
                best, best_score = index, score
    if best < 0:
        raise ValueError("at least one share must be above 0")
    return best


# -- the engine -------------------------------------------------------------------------------


class RolloutState(StrEnum):
    PROGRESSING = "progressing"  # stepping up one step per interval while healthy
    PAUSED = "paused"  # an operator stopped the steps (a breach still rolls back)
    ROLLED_BACK = "rolled_back"  # the engine took the canary to 0 on a breach
    PROMOTED = "promoted"  # an operator took it to 100
    ABORTED = "aborted"  # an operator took it to 0
    COMPLETE = "complete"  # the last step was reached while healthy


# The states a breach rolls back. At 100 % (complete or promoted) the canary group carries
# every answer and the stable side still exists, so a breach there is the worst time to
# stop watching: it rolls back as at any step, until the operator removes the canary.
# At 0 (rolled back, aborted) there is nothing to take back.
WATCHED: Final = frozenset(
    (
        RolloutState.PROGRESSING,
        RolloutState.PAUSED,
        RolloutState.COMPLETE,
        RolloutState.PROMOTED,
    )
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One agent's latest report on one endpoint, with its age by the controller's clock."""

    agent_id: str
    address: str
    loss: float
    latency_ms: float | None
    state: str  # healthy | ejected | unknown
    age_s: float


@dataclass(frozen=True, slots=True)
class Current:
    """Where a rollout is: its step (an index into the canary's steps), share and state."""

    step: int
    share: int
    state: RolloutState
    next_step_at: datetime | None


@dataclass(frozen=True, slots=True)
class Figures:
    """The health figures a decision was made from (shown by ``dnsmesh rollout status``)."""

    reporters: int  # the fewest fresh agents reporting on any canary endpoint
    max_loss: float | None  # the worst fresh loss of a canary endpoint
    max_latency_ms: float | None  # the worst fresh latency of a canary endpoint
    down: tuple[str, ...]  # canary endpoints in the quorum's down set
    breach: str | None  # what broke the canary's bounds, or None

    def as_json(self) -> dict[str, object]:
        return {
            "reporters": self.reporters,
            "max_loss": self.max_loss,
            "max_latency_ms": self.max_latency_ms,
            "down": list(self.down),
            "breach": self.breach,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """A transition to commit: the rollout's new place and why."""

    step: int
    share: int
    state: RolloutState
    next_step_at: datetime | None
    reason: str
    figures: Figures


def canary_addresses(spec: PolicySpec) -> tuple[str, ...]:
    """The canary group's endpoints that can answer (weight above 0), in policy order."""
    if spec.canary is None:
        return ()
    group = spec.canary.group
    return tuple(str(e.address) for e in spec.endpoints if e.group == group and e.weight > 0)


def measure(
    canary: Canary,
    addresses: Sequence[str],
    readings: Sequence[Reading],
    down: frozenset[str],
    stale_s: float,
) -> Figures:
    """The figures of the canary endpoints from the fresh readings, and the first breach."""
    fresh = [r for r in readings if r.age_s <= stale_s and r.address in addresses]
    per_address = {a: {r.agent_id for r in fresh if r.address == a} for a in addresses}
    reporters = min((len(agents) for agents in per_address.values()), default=0)
    losses = [r.loss for r in fresh]
    latencies = [r.latency_ms for r in fresh if r.latency_ms is not None]
    down_here = tuple(a for a in addresses if a in down)
    breach: str | None = None
    if down_here:
        breach = f"{down_here[0]} is down by quorum"
    for reading in fresh:
        if breach is not None:
            break
        if reading.state == "ejected":
            breach = f"{reading.address} ejected by agent {reading.agent_id}"
        elif reading.loss > canary.max_loss:
            breach = (
                f"{reading.address} loss {reading.loss:.3f} > {canary.max_loss} "
                f"(agent {reading.agent_id})"
            )
        elif (
            canary.max_latency_ms is not None
            and reading.latency_ms is not None
            and reading.latency_ms > canary.max_latency_ms
        ):
            breach = (
                f"{reading.address} latency {reading.latency_ms:.1f} ms > "
                f"{canary.max_latency_ms} ms (agent {reading.agent_id})"
            )
    return Figures(
        reporters,
        max(losses) if losses else None,
        max(latencies) if latencies else None,
        down_here,
        breach,
    )


def start(canary: Canary, now: datetime) -> Current:
    """A rollout begins at the first step."""
    return Current(0, canary.steps[0], _progress_state(canary, 0), _next(canary, 0, now))


def decide(canary: Canary, current: Current, figures: Figures, now: datetime) -> Decision | None:
    """The next transition of a watched rollout, or None (keep going as it is).

    A breach rolls back to 0 whatever the step (paused, complete and promoted included).
    Otherwise a progressing
    rollout whose interval has passed moves one step up when at least ``min_reports``
    fresh agents report on every canary endpoint; with fewer it waits.
    """
    if current.state not in WATCHED:
        return None
    if figures.breach is not None:
        return Decision(
            current.step,
            0,
            RolloutState.ROLLED_BACK,
            None,
            f"rolled back: {figures.breach}",
            figures,
        )
    if current.state is not RolloutState.PROGRESSING or current.next_step_at is None:
        return None
    if now < current.next_step_at or figures.reporters < canary.reports_needed:
        return None
    step = current.step + 1
    if step >= len(canary.steps):
        return None  # already at the last step: nothing is left to step to
    loss = "n/a" if figures.max_loss is None else f"{figures.max_loss:.3f}"
    reason = (
        f"step {step + 1} of {len(canary.steps)}: healthy for {canary.interval:g} s "
        f"({figures.reporters} reporting agents, worst loss {loss})"
    )
    return Decision(
        step,
        canary.steps[step],
        _progress_state(canary, step),
        _next(canary, step, now),
        reason,
        figures,
    )


def _progress_state(canary: Canary, step: int) -> RolloutState:
    last = step == len(canary.steps) - 1
    return RolloutState.COMPLETE if last else RolloutState.PROGRESSING


def _next(canary: Canary, step: int, now: datetime) -> datetime | None:
    if step == len(canary.steps) - 1:
        return None
    return now + timedelta(seconds=canary.interval)
