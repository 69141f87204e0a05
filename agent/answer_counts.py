"""Policy answers per (policy, slice, endpoint), kept across snapshot swaps.

The compiled pickers count the answers they give in plain ints (dnsmesh/snapshot.py). A
reload or a health re-weighing replaces compiled policies, and with them those ints, so on
every swap the counts of the policies that leave are moved here (``retire``); a scrape adds
the live ones to them (``totals``). The counters stay monotonic, as Prometheus needs.

What is kept is bounded by the policies being served: counts of a policy, slice or endpoint
that the new snapshot does not declare are dropped with it (its series ends). An endpoint
ejected by health is still declared, so its count survives its ejection.

Everything here runs on the event loop's thread, like the queries, so a scrape never sees a
count in two places.
"""

from __future__ import annotations

from collections.abc import Iterable

from dnsmesh.snapshot import DEFAULT_SLICE, CompiledPolicy, Snapshot

AnswerKey = tuple[str, str, str]  # (policy, slice, endpoint address)
Counted = dict[tuple[str, str], int]  # (slice, endpoint address) -> answers


class AnswerCounts:
    def __init__(self) -> None:
        self._retired: dict[str, Counted] = {}  # by policy name

    def retire(self, old: Snapshot, new: Snapshot, names: Iterable[str] | None = None) -> None:
        """``new`` replaced ``old``: keep the counts of the compiled policies that left.

        ``names``: the policies whose compiled form may differ between the two (what a
        swap changed); None compares them all. A change of one policy among 100,000 then
        costs one policy's work on the loop, not a walk over the others.
        """
        if names is None:
            names = old.by_name.keys() | new.by_name.keys()
        retired = self._retired
        for name in names:
            before = old.by_name.get(name)
            after = new.by_name.get(name)
            if before is not None and before is not after:
                # take_answered zeroes them: a compiled policy that comes back later (the
                # base one, once health weights are lifted) is not counted twice.
                kept = retired.setdefault(name, {})
                for key, count in before.take_answered().items():
                    kept[key] = kept.get(key, 0) + count
            if after is None:
                retired.pop(name, None)  # its series end with it
            elif name in retired:
                declared = _declared(after)
                kept = retired[name]
                for key in [key for key in kept if key not in declared]:
                    del kept[key]

    def totals(self, current: Snapshot) -> dict[AnswerKey, int]:
        """Every count: the retired ones plus the live ones of ``current``, which are moved
        into the retired ones on the way (reading them zeroes them)."""
        retired = self._retired
        for compiled in current.policies():
            answered = compiled.take_answered()
            if answered:
                kept = retired.setdefault(compiled.name, {})
                for key, count in answered.items():
                    kept[key] = kept.get(key, 0) + count
        return {
            (name, slice_id, address): count
            for name, kept in retired.items()
            for (slice_id, address), count in kept.items()
        }


def _declared(compiled: CompiledPolicy) -> set[tuple[str, str]]:
    spec = compiled.policy.spec
    slices = [DEFAULT_SLICE, *(slice_.id for slice_ in spec.slices)]
    return {(s, str(e.address)) for s in slices for e in spec.endpoints}
