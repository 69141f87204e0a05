"""Re-weighting a compiled snapshot: the same policies, some with other endpoint weights.

Pure (no I/O, no clock): the agent's health monitor (agent/probes/monitor.py) decides the
weights and calls this to build the snapshot it serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dnsmesh.snapshot import CompiledPolicy, ServfailPolicy, Snapshot, debug_index

# policy name -> endpoint address -> weight
Weights = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True, slots=True)
class Effective:
    """What health decided for a snapshot: the ``weights`` that differ from the configured
    ones, and the policies that answer SERVFAIL (every endpoint down, on_all_down servfail)."""

    weights: Weights = field(default_factory=dict)
    servfail: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.weights) or bool(self.servfail)


CONFIGURED = Effective()

# policy name -> (policy, revision, weights, the policy compiled with those weights)
Compiled = dict[str, tuple[object, int, Mapping[str, int], CompiledPolicy]]


def reweigh(
    base: Snapshot,
    weights: Weights,
    cache: Compiled | None = None,
    servfail: frozenset[str] = frozenset(),
) -> Snapshot:
    """``base`` with the policies in ``weights`` compiled again with those weights, and those
    in ``servfail`` replaced by a ServfailPolicy.

    ``cache`` keeps the compiled policy of the last call when its policy, revision and
    weights are unchanged: compiling is the expensive part, and usually one endpoint of
    one policy moved.
    """
    if not weights and not servfail:
        if cache is not None:
            cache.clear()
        return base
    kept: Compiled = {}

    def one(compiled: CompiledPolicy) -> CompiledPolicy:
        failing = compiled.name in servfail
        wanted: Mapping[str, int] | None = {} if failing else weights.get(compiled.name)
        if wanted is None:
            return compiled
        hit = cache.get(compiled.name) if cache is not None else None
        if (
            hit is not None
            and hit[0] is compiled.policy
            and hit[1] == base.revision
            and hit[2] == wanted
            and isinstance(hit[3], ServfailPolicy) == failing
        ):
            fresh = hit[3]
        elif failing:
            fresh = ServfailPolicy(
                compiled.policy,
                base.revision,
                compiled.canary_share,
                compiled.context,
                compiled.slice_counts,
            )
        else:
            fresh = CompiledPolicy(
                compiled.policy,
                base.revision,
                wanted,
                compiled.canary_share,
                compiled.context,
                compiled.slice_counts,
            )
        kept[compiled.name] = (compiled.policy, base.revision, wanted, fresh)
        return fresh

    exact = {key: one(c) for key, c in base.exact.items()}
    wildcards = {key: one(c) for key, c in base.wildcards.items()}
    if cache is not None:
        cache.clear()
        cache.update(kept)
    return Snapshot(base.revision, exact, wildcards, base.wildcard_lengths, debug_index(exact))
