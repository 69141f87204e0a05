"""The mesh-wide health rule: which endpoint addresses a quorum of agents sees as failing.

Pure: the controller hands in every agent's latest report per address, the time and the
current down set; nothing here reads a clock or a database.

The rule (docs/design.md, "The down set"), per endpoint address:

* A **voter** is an agent whose latest report on the address is at most ``stale_s`` old
  and whose state is ``healthy`` or ``ejected`` (``unknown``: it has not measured, so it
  has no opinion). Older reports do not count at all: an agent that went away stops
  voting after ``stale_s``.
* A voter sees the address **failing** when it reports it ``ejected`` or its loss EWMA is at
  least ``fail_loss`` (default 0.5). For an address that is down already, a loss of more
  than ``recover_loss`` (default 0.2) still counts as failing: the gap between the two
  thresholds is the hysteresis that keeps a lossy endpoint around 0.5 from flapping.
* An address goes **down** when at least ``min_agents`` (default 2) voters report on it and
  a strict majority of them see it failing. One agent alone never marks an address down:
  what only it sees is its own local matter (its own outlier ejection handles it).
* A down address comes back **up** only when the failing voters are fewer than half of the
  voters (a tie keeps it down), which includes the case where no voter is left (every
  report went stale: with no evidence, nobody is kept from the endpoint).

The result is a set; the controller commits a new revision only when it differs from the
stored one, so evaluating the same reports twice (two replicas, a retry) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QuorumRule:
    """The parameters of the rule (``dnsmesh controller --quorum-*`` flags)."""

    min_agents: int = 2  # voters needed before anything is marked down
    fail_loss: float = 0.5  # loss EWMA at or above which a healthy-state report is failing
    recover_loss: float = 0.2  # a down address counts as failing while loss stays above this
    stale_s: float = 30.0  # reports older than this do not vote

    def __post_init__(self) -> None:
        if self.min_agents < 1:
            raise ValueError("min_agents must be at least 1")
        if not 0.0 <= self.recover_loss <= self.fail_loss <= 1.0:
            raise ValueError("need 0 <= recover_loss <= fail_loss <= 1")
        if self.stale_s <= 0:
            raise ValueError("stale_s must be positive")


@dataclass(frozen=True, slots=True)
class Vote:
    """One agent's latest report on one address, as the rule needs it."""

    agent_id: str
    state: str  # healthy | ejected | unknown
    loss: float
    age_s: float  # how long ago the controller received it


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the voters on one address stand, and whether it is down."""

    address: str
    voters: int
    failing: int
    down: bool


def is_failing(vote: Vote, rule: QuorumRule, *, down: bool) -> bool:
    if vote.state == "ejected":
        return True
    threshold = vote.loss > rule.recover_loss if down else vote.loss >= rule.fail_loss
    return vote.state == "healthy" and threshold


def judge(address: str, votes: Iterable[Vote], rule: QuorumRule, *, down: bool) -> Verdict:
    """The verdict on one address, given whether it is down now (the hysteresis)."""
    counted = [v for v in votes if v.age_s <= rule.stale_s and v.state != "unknown"]
    failing = sum(1 for v in counted if is_failing(v, rule, down=down))
    voters = len(counted)
    if down:
        still = failing > 0 and 2 * failing >= voters
    else:
        still = voters >= rule.min_agents and 2 * failing > voters
    return Verdict(address, voters, failing, still)


def evaluate(
    votes: Mapping[str, Iterable[Vote]], down: Iterable[str], rule: QuorumRule
) -> dict[str, Verdict]:
    """The verdict on every address that has votes or is down now (by address)."""
    current = frozenset(down)
    addresses = set(votes) | current
    return {
        address: judge(address, votes.get(address, ()), rule, down=address in current)
        for address in sorted(addresses)
    }


def down_set(verdicts: Mapping[str, Verdict]) -> frozenset[str]:
    return frozenset(a for a, v in verdicts.items() if v.down)
