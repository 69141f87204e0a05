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

from dnsmesh.snapshot import DEFAULT_SLICE, CompiledPolicy, Snapshot

AnswerKey = tuple[str, str, str]  # (policy, slice, endpoint address)


class AnswerCounts:
    def __init__(self) -> None:
        self._retired: dict[AnswerKey, int] = {}

    def retire(self, old: Snapshot, new: Snapshot) -> None:
        """``new`` replaced ``old``: keep the counts of the compiled policies that left."""
        staying = {id(compiled) for compiled in new.policies()}
        retired = self._retired
        for compiled in old.policies():
            if id(compiled) not in staying:
                # take_answered zeroes them: a compiled policy that comes back later (the
                # base one, once health weights are lifted) is not counted twice.
                for key, count in _answered(compiled).items():
                    retired[key] = retired.get(key, 0) + count
        declared = {key for compiled in new.policies() for key in _declared(compiled)}
        for key in [key for key in retired if key not in declared]:
            del retired[key]

    def totals(self, current: Snapshot) -> dict[AnswerKey, int]:
        """Every count: the retired ones plus the live ones of ``current``, which are moved
        into the retired ones on the way (reading them zeroes them)."""
        retired = self._retired
        for compiled in current.policies():
            for key, count in _answered(compiled).items():
                retired[key] = retired.get(key, 0) + count
        return dict(retired)


def _answered(compiled: CompiledPolicy) -> dict[AnswerKey, int]:
    return {
        (compiled.name, slice_id, address): count
        for (slice_id, address), count in compiled.take_answered().items()
    }


def _declared(compiled: CompiledPolicy) -> list[AnswerKey]:
    spec = compiled.policy.spec
    slices = [DEFAULT_SLICE, *(slice_.id for slice_ in spec.slices)]
    return [(compiled.name, s, str(e.address)) for s in slices for e in spec.endpoints]
