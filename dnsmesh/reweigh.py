"""Re-weighting a compiled snapshot: the same policies, some with other endpoint weights.

Pure (no I/O, no clock): the agent's health monitor (agent/probes/monitor.py) decides the
weights and calls this to build the snapshot it serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dnsmesh.snapshot import CompiledPolicy, ServfailPolicy, Snapshot

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
    one policy moved. Only the named policies are visited; the rest of ``base``'s indexes
    is copied whole (a C-level dict copy, not a walk over 100,000 policies).
    """
    if not weights and not servfail:
        if cache is not None:
            cache.clear()
        return base
    kept: Compiled = {}
    exact = dict(base.exact)
    wildcards = dict(base.wildcards)
    by_name = dict(base.by_name)
    debug = dict(base.debug)
    for name in weights.keys() | servfail:
        compiled = base.by_name.get(name)
        if compiled is None:
            continue  # decided for a policy this base does not hold
        failing = name in servfail
        wanted: Mapping[str, int] = {} if failing else weights[name]
        hit = cache.get(name) if cache is not None else None
        if (
            hit is not None
            and hit[0] is compiled.policy
            and hit[1] == compiled.revision
            and hit[2] == wanted
            and isinstance(hit[3], ServfailPolicy) == failing
        ):
            fresh = hit[3]
        elif failing:
            fresh = ServfailPolicy(
                compiled.policy,
                compiled.revision,
                compiled.canary_share,
                compiled.context,
                compiled.slice_counts,
            )
        else:
            fresh = CompiledPolicy(
                compiled.policy,
                compiled.revision,
                wanted,
                compiled.canary_share,
                compiled.context,
                compiled.slice_counts,
            )
        kept[name] = (compiled.policy, compiled.revision, wanted, fresh)
        by_name[name] = fresh
        (wildcards if compiled.wildcard else exact)[compiled.zone] = fresh
        if fresh.debug_names:
            # Its debug names answer as the re-weighed policy (a name a policy holds stays).
            debug.update((n, v) for n, v in fresh.debug_names.items() if n not in exact)
    if cache is not None:
        cache.clear()
        cache.update(kept)
    return Snapshot(base.revision, exact, wildcards, base.wildcard_lengths, by_name, debug)
