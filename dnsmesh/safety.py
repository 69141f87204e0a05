"""The safety rules (Route 53 ARC's assertion rules): what a policy keeps in service.

Pure. ``spec.safety`` asks that at least ``min_endpoints`` endpoints (default 1) and
``min_weight_percent`` of the policy's configured weight (default 0) stay in service. The
endpoints counted are those with a configured weight above 0; one is out of service when it
is drained, ejected by the agent's probes or in the quorum's down set.

Every way of taking endpoints out goes through here: an operator's drain is refused when it
would break a rule (``check``, unless forced), so is a policy write that would break one
with the drains already in force (``check_edit``, unless forced), and ejections and the
down set take out only as many as the rules allow (``admit``), so health can never empty a
policy that an operator said must keep a floor.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from dnsmesh.policy import Policy

Rule = Literal["min_endpoints", "min_weight_percent"]


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken rule: which one, of which policy, and a sentence saying how."""

    rule: Rule
    policy: str
    message: str


def _weights(policy: Policy) -> dict[str, int]:
    return {str(e.address): e.weight for e in policy.spec.endpoints if e.weight > 0}


def check(policy: Policy, out: Collection[str]) -> Violation | None:
    """The first rule ``policy`` breaks with the addresses ``out`` out of service, or None."""
    weights = _weights(policy)
    rule = policy.spec.safety_rule
    serving = {a: w for a, w in weights.items() if a not in out}
    if len(serving) < rule.min_endpoints:
        return Violation(
            "min_endpoints",
            policy.name,
            f"policy {policy.name!r} would keep {len(serving)} of {len(weights)} endpoints in "
            f"service; spec.safety.min_endpoints is {rule.min_endpoints}",
        )
    total = sum(weights.values())
    kept = sum(serving.values())
    if kept * 100 < rule.min_weight_percent * total:
        return Violation(
            "min_weight_percent",
            policy.name,
            f"policy {policy.name!r} would keep {kept * 100 / total:.0f}% of its weight in "
            f"service; spec.safety.min_weight_percent is {rule.min_weight_percent}",
        )
    return None


def _kept(policy: Policy, out: Collection[str]) -> tuple[int, float]:
    """How many endpoints, and what percentage of the configured weight, stay in service."""
    weights = _weights(policy)
    serving = [w for a, w in weights.items() if a not in out]
    total = sum(weights.values())
    return len(serving), (sum(serving) * 100 / total if total else 100.0)


def check_edit(before: Policy | None, after: Policy, out: Collection[str]) -> Violation | None:
    """The rule a policy write breaks with the addresses ``out`` out of service, or None.

    A write is not refused for a breach it did not make: when the stored policy ``before``
    already broke a rule with the same ``out`` (a forced drain went past it), ``after`` is
    refused only if it keeps fewer endpoints or less of its weight in service than it did,
    so an unrelated edit (a TTL) still goes through, and one that takes more out does not.
    """
    violation = check(after, out)
    if violation is None or before is None or check(before, out) is None:
        return violation
    count, percent = _kept(after, out)
    was_count, was_percent = _kept(before, out)
    return violation if count < was_count or percent < was_percent else None


def admit(
    policy: Policy, out: Collection[str], candidates: Iterable[str], limit: int | None = None
) -> tuple[str, ...]:
    """The candidates (in their order) that may go out of service besides ``out``: each is
    taken while the rules still hold with it out, at most ``limit`` of them."""
    taken: list[str] = []
    gone = set(out)
    for address in candidates:
        if limit is not None and len(taken) >= limit:
            break
        if check(policy, gone | {address}) is None:
            taken.append(address)
            gone.add(address)
    return tuple(taken)
