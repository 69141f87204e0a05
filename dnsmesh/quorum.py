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

Two rules then bound what the verdicts may change (``settle``):

* **Anti-flap.** An address flips (up to down, or back) only after its verdict said so in
  ``fall`` (respectively ``rise``) consecutive evaluations, the policies' explicit
  ``spec.health.fall``/``rise`` (the smallest of the policies that have the address;
  unset: 1). Unset means 1 because the votes are already debounced by the same numbers
  on each agent (an agent reports ``ejected`` only after ``fall`` failed probes, and
  ``healthy`` again after ``rise`` successes), and counting again would double the time
  to detect by default; an operator who asks for it explicitly gets both.
* **Safety.** An address goes down only while every policy that has it keeps its
  ``spec.safety`` with the drains and the rest of the down set counted out
  (dnsmesh.safety); addresses are admitted in address order, the ones already down first.

The result is a set; the controller commits a new revision only when it differs from the
stored one, so evaluating the same reports twice (two replicas, a retry) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dnsmesh import safety
from dnsmesh.drains import DrainSet
from dnsmesh.policy import Policy


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


@dataclass(frozen=True, slots=True)
class Settled:
    """The down set after anti-flap and safety; the streaks to pass to the next evaluation;
    the addresses the safety rules kept up although their verdict is down."""

    down: frozenset[str]
    streaks: dict[str, int]
    held: frozenset[str]


def flips_needed(policies: Iterable[Policy]) -> dict[tuple[str, bool], int]:
    """(address, going down) -> consecutive evaluations needed, where a policy asks for
    more than 1 (the smallest ``fall``/``rise`` set explicitly among the policies)."""
    needed: dict[tuple[str, bool], int] = {}
    for policy in policies:
        health = policy.spec.health
        if health is None:
            continue
        for address in {str(e.address) for e in policy.spec.endpoints}:
            for going_down, value in ((True, health.fall), (False, health.rise)):
                key = (address, going_down)
                asked = 1 if value is None else value
                needed[key] = min(needed.get(key, asked), asked)
    return needed


def settle(
    verdicts: Mapping[str, Verdict],
    stored: frozenset[str],
    streaks: Mapping[str, int],
    policies: Sequence[Policy],
    drains: DrainSet,
) -> Settled:
    """The down set that ``verdicts`` make of ``stored``, under anti-flap and safety."""
    needed = flips_needed(policies)
    counts: dict[str, int] = {}
    wanted: set[str] = set()
    for address in sorted(set(verdicts) | stored):
        is_down = address in stored
        says_down = verdicts[address].down if address in verdicts else False
        if says_down != is_down:
            count = streaks.get(address, 0) + 1
            if count >= needed.get((address, says_down), 1):
                is_down = says_down  # said so often enough in a row: it flips
            else:
                counts[address] = count
        if is_down:
            wanted.add(address)
    by_address: dict[str, list[Policy]] = {}
    for policy in policies:
        for endpoint in policy.spec.endpoints:
            by_address.setdefault(str(endpoint.address), []).append(policy)
    down: set[str] = set()
    held: set[str] = set()
    for address in sorted(wanted, key=lambda a: (a not in stored, a)):
        after = down | {address}
        if all(
            safety.check(p, drains.of(p.name) | after) is None for p in by_address.get(address, [])
        ):
            down.add(address)
        else:
            held.add(address)
    return Settled(frozenset(down), counts, frozenset(held))
