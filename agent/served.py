"""What the agent answers: one holder of the snapshot that the query path reads.

Three inputs make the answers, and this is the one object that owns them all:

* the **base** snapshot, compiled from the local policy files or the controller's revision;
* the mesh-wide **down** set that comes with each controller revision (empty without one);
* the operators' **drains** that come with each controller revision (none without one);
* what health decides (``Effective``): the **weights** (the agent's probes, ejections, the
  down set and the drains), policy name -> endpoint -> weight, only where they differ from
  the configured ones, and the policies that answer SERVFAIL because all their endpoints
  are down.

Whenever the base or the weights change, the effective snapshot is built by the pure
``dnsmesh.reweigh.reweigh`` and published in one assignment of ``snapshot``: a query sees
the old answers or the new ones, whole, never a blend. Health produces weights and hands
them here; it never swaps a snapshot itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.answer_counts import AnswerCounts
from agent.release import release
from dnsmesh.drains import NO_DRAINS, DrainSet
from dnsmesh.reweigh import CONFIGURED, Compiled, Effective, reweigh
from dnsmesh.slicelimit import BucketKey, SliceBucket, carry_buckets
from dnsmesh.snapshot import Snapshot, compile_snapshot


class ServedSnapshot:
    """``snapshot`` is what queries read; ``set_base`` and ``set_weights`` change it."""

    __slots__ = (
        "_compiled",
        "_down",
        "_drains",
        "answers",
        "base",
        "base_since",
        "clock",
        "effective",
        "snapshot",
    )

    def __init__(
        self,
        down: Callable[[], frozenset[str]] = frozenset,
        drains: Callable[[], DrainSet] = lambda: NO_DRAINS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``down`` and ``drains`` read the mesh-wide down set and the operators' drains
        from where revisions arrive (the sync)."""
        self.clock = clock
        self.base: Snapshot = compile_snapshot([])
        self.base_since: float | None = None  # when the first or latest base was set
        self.effective: Effective = CONFIGURED
        self.snapshot: Snapshot = self.base
        self._down = down
        self._drains = drains
        self._compiled: Compiled = {}  # reweigh's cache: unchanged policies are not recompiled
        self.answers = AnswerCounts()  # answers per policy, slice and endpoint (metrics)

    @property
    def down(self) -> frozenset[str]:
        return self._down()

    @property
    def drains(self) -> DrainSet:
        return self._drains()

    def set_base(self, base: Snapshot, effective: Effective) -> None:
        """A newly compiled policy set with what health decided for it, at once."""
        changed = base.changed_since(self.base)
        if self.base is not self.snapshot:
            release(self.base)
        self.base = base
        self.base_since = self.clock()
        before, self.effective = self.effective, effective
        self._publish(None if changed is None else _touched(changed, before, effective))

    def set_weights(self, effective: Effective) -> None:
        """What health decided anew for the base being served."""
        before, self.effective = self.effective, effective
        self._publish(_touched(frozenset(), before, effective))

    def _publish(self, touched: frozenset[str] | None) -> None:
        """``touched``: the names whose served policy may change (None: any may)."""
        old = self.snapshot
        effective = self.effective
        new = reweigh(self.base, effective.weights, self._compiled, effective.servfail)
        # Before it is served: the slices' token buckets go on from where they were.
        carry_buckets(_buckets(old, touched), _buckets(new, touched))
        self.snapshot = new  # the one assignment
        self.answers.retire(old, new, touched)
        if old is not new:
            release(old)  # its dicts are freed off the loop


def _buckets(
    snapshot: Snapshot, names: frozenset[str] | None
) -> list[tuple[BucketKey, SliceBucket]]:
    """The slices' token buckets of the named policies (None: of every one). A policy not
    touched is the same compiled object on both sides, so its buckets need no carrying."""
    if names is None:
        return snapshot.buckets()
    by_name = snapshot.by_name
    return [pair for name in names if (c := by_name.get(name)) is not None for pair in c.buckets()]


def _touched(changed: frozenset[str], before: Effective, after: Effective) -> frozenset[str]:
    """The policies whose served form may differ: those the base changed, and those health
    re-weighs (or stops re-weighing) on either side of the swap."""
    return changed.union(before.weights, before.servfail, after.weights, after.servfail)
