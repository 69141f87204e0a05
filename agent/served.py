"""What the agent answers: one holder of the snapshot that the query path reads.

Three inputs make the answers, and this is the one object that owns them all:

* the **base** snapshot, compiled from the local policy files or the controller's revision;
* the mesh-wide **down** set that comes with each controller revision (empty without one);
* the **weights** that health decides (the agent's probes, ejections and the down set),
  policy name -> endpoint -> weight, only where they differ from the configured ones.

Whenever the base or the weights change, the effective snapshot is built by the pure
``dnsmesh.reweigh.reweigh`` and published in one assignment of ``snapshot``: a query sees
the old answers or the new ones, whole, never a blend. Health produces weights and hands
them here; it never swaps a snapshot itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.answer_counts import AnswerCounts
from dnsmesh.reweigh import Compiled, Weights, reweigh
from dnsmesh.snapshot import Snapshot, compile_snapshot


class ServedSnapshot:
    """``snapshot`` is what queries read; ``set_base`` and ``set_weights`` change it."""

    __slots__ = (
        "_compiled",
        "_down",
        "answers",
        "base",
        "base_since",
        "clock",
        "snapshot",
        "weights",
    )

    def __init__(
        self,
        down: Callable[[], frozenset[str]] = frozenset,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``down`` reads the mesh-wide down set from where revisions arrive (the sync)."""
        self.clock = clock
        self.base: Snapshot = compile_snapshot([])
        self.base_since: float | None = None  # when the first or latest base was set
        self.weights: Weights = {}
        self.snapshot: Snapshot = self.base
        self._down = down
        self._compiled: Compiled = {}  # reweigh's cache: unchanged policies are not recompiled
        self.answers = AnswerCounts()  # answers per policy, slice and endpoint (metrics)

    @property
    def down(self) -> frozenset[str]:
        return self._down()

    def set_base(self, base: Snapshot, weights: Weights) -> None:
        """A newly compiled policy set with the weights health decided for it, at once."""
        self.base = base
        self.base_since = self.clock()
        self.weights = weights
        self._publish()

    def set_weights(self, weights: Weights) -> None:
        """New weights from health for the base being served."""
        self.weights = weights
        self._publish()

    def _publish(self) -> None:
        old = self.snapshot
        self.snapshot = reweigh(self.base, self.weights, self._compiled)  # the one assignment
        self.answers.retire(old, self.snapshot)
