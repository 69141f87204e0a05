"""The agent's policy set when a controller drives it: the controller's state plus local files.

Two sources feed one snapshot: the controller's policies (pushed, persisted in the state
file) and the node's own ``--policies`` files. When both define the same policy name or the
same domain, **the local file wins on that node**: the controller's policy is *shadowed*
there (not served), and everything else still applies. A clash never stops the agent from
following the controller: every revision is applied and ACKed, and the ACK names the
shadowed controller policies with the reason (``GET /v1/agents`` shows them), so the
operator sees the conflict without the node going stale. Whether a policy is shadowed is
decided afresh from the two sources at every change of either, so editing the local file
(or the controller policy) away from the clash makes the controller's policy served at
once, and a restart (state file, then local files) ends in the same set.

The controller refuses a write that would clash with what a connected agent reported of its
local files (409, controller/services/policies.py); this side covers the rest (an agent that
was offline, a forced write, a local edit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.release import release
from agent.reload import PolicyWatcher
from dnsmesh.errors import PolicyError
from dnsmesh.logs import fields
from dnsmesh.policy import Policy
from dnsmesh.policyfile import SourcedPolicy, load_policy_path
from dnsmesh.protocol import (
    Ack,
    AppliedState,
    Delta,
    LocalPolicy,
    RevisionGap,
    ShadowedPolicy,
    SnapshotMessage,
    apply_update,
)
from dnsmesh.snapshot import NO_CONTEXT, CompileContext, compile_snapshot
from dnsmesh.snapshot import Snapshot as CompiledSnapshot

log = logging.getLogger(__name__)

Update = SnapshotMessage | Delta


@dataclass(frozen=True, slots=True)
class Clash:
    controller: Policy
    local: SourcedPolicy
    what: str  # "name" or "domain"

    def shadowed(self) -> ShadowedPolicy:
        """What the ACK says of the controller policy this local file shadows."""
        p, loc = self.controller, self.local
        value = p.name if self.what == "name" else p.spec.domain
        reason = (
            f"{self.what} {value!r} is also defined by local policy {loc.policy.name!r} in "
            f"{loc.source} (document {loc.document}); the local file wins on this node"
        )
        return ShadowedPolicy(name=p.name, reason=reason[:1024])


def find_clashes(local: Sequence[SourcedPolicy], controller: Mapping[str, Policy]) -> list[Clash]:
    """Every controller policy that shares a name or a domain with a local one."""
    by_name = {s.policy.name: s for s in local}
    by_domain = {s.policy.spec.domain: s for s in local}
    clashes = []
    for policy in controller.values():
        if policy.name in by_name:
            clashes.append(Clash(policy, by_name[policy.name], "name"))
        elif policy.spec.domain in by_domain:
            clashes.append(Clash(policy, by_domain[policy.spec.domain], "domain"))
    return clashes


def local_policies(local: Sequence[SourcedPolicy]) -> list[LocalPolicy]:
    """The local files as the hello and the ACK report them."""
    return [
        LocalPolicy(
            name=s.policy.name,
            domain=s.policy.spec.domain,
            source=f"{s.source} (document {s.document})"[:1024],
        )
        for s in local
    ]


@dataclass(frozen=True, slots=True)
class Applied:
    revision: int


@dataclass(frozen=True, slots=True)
class Refused:
    revision: int
    reason: str
    resync: bool = False  # a revision gap: the channel must start again from `running`


Outcome = Applied | Refused


@dataclass(slots=True)
class Prepared:
    """``PolicySources.prepare``'s result: the decision, and the state it was made from."""

    updates: Sequence[Update]
    running: AppliedState
    local: list[SourcedPolicy]
    refusals: list[Refused]
    view: AppliedState | None = None  # the new controller state, if any update applied
    verdict: Refused | None = None  # why `view` cannot run, or None
    snapshot: CompiledSnapshot | None = None  # `view` and the local files, compiled
    shadowed: list[ShadowedPolicy] | None = None  # what the local files shadow in `view`


class PolicySources:
    """Holds both sources, decides every change, and publishes one compiled snapshot.

    ``running`` is the controller state that the agent runs (and persists); the controller
    policies that a local file shadows are part of it but not served. ``publish`` is the
    server's snapshot swap; ``on_local_changed`` is called after a local reload took effect,
    so the sync client re-reports what is local and shadowed now.
    """

    def __init__(
        self,
        publish: Callable[[CompiledSnapshot], None],
        on_local_changed: Callable[[], None] | None = None,
        context: CompileContext = NO_CONTEXT,
    ) -> None:
        self.publish = publish
        self.context = context  # this node's labels, for slices
        self.local: list[SourcedPolicy] = []
        self.running = AppliedState.empty()
        self.on_local_changed = on_local_changed
        self._staged_local: (
            tuple[list[SourcedPolicy], AppliedState, list[ShadowedPolicy]] | None
        ) = None
        # The last snapshot published, which the next compile starts from (only the policies
        # that changed are compiled again), and what the local files shadow in what runs:
        # both are worked out where the compile runs (a worker thread), not on the loop.
        self.compiled: CompiledSnapshot | None = None
        self.shadowed: list[ShadowedPolicy] = []

    def acknowledgement(self) -> Ack:
        """The ACK of what runs, with what is local and shadowed."""
        return Ack(
            revision=self.running.revision,
            local=local_policies(self.local),
            shadowed=self.shadowed,
        )

    def _compile(
        self, local: Sequence[SourcedPolicy], state: AppliedState
    ) -> tuple[CompiledSnapshot, list[ShadowedPolicy]]:
        """The snapshot of both sources, and the controller policies the local ones shadow."""
        clashes = find_clashes(local, state.policies)
        shadowed = {c.controller.name for c in clashes}
        served = [p for name, p in state.policies.items() if name not in shadowed]
        # A controller policy's canary answers as its rollout says, 0 % without one; a local
        # file's canary answers by its weights as written (no engine moves it).
        shares = {p.name: state.rollouts.get(p.name, 0) for p in served if p.spec.canary}
        policies = [s.policy for s in local] + served
        # A scaled slice answers from the count the controller's scaling says; a local
        # file's, and a controller slice before the controller says, from its min.
        names = {p.name for p in served}
        counts = {name: c for name, c in state.slice_scale.items() if name in names}
        snapshot = compile_snapshot(
            policies,
            state.revision,
            canary_shares=shares,
            context=self.context,
            slice_counts=counts,
            previous=self.compiled,
        )
        return snapshot, [c.shadowed() for c in clashes]

    def _publish(self, snapshot: CompiledSnapshot, shadowed: list[ShadowedPolicy]) -> None:
        """Swap in a compiled snapshot (on the loop); logs when the shadowing changed."""
        before, self.shadowed = self.shadowed, shadowed
        self.compiled = snapshot
        self.publish(snapshot)
        self._log_shadowing(before)

    def _log_shadowing(self, before: Sequence[ShadowedPolicy]) -> None:
        after = self.shadowed
        if [s.name for s in after] == [s.name for s in before]:
            return
        if after:
            log.warning(
                "sync.policies_shadowed",
                extra=fields(
                    revision=self.running.revision,
                    shadowed=[s.name for s in after],
                    reason="; ".join(s.reason for s in after[:5])[:1000],
                ),
            )
        else:
            log.info("sync.shadowing_cleared", extra=fields(revision=self.running.revision))

    # -- the controller side -------------------------------------------------------------

    def start_from(self, state: AppliedState) -> None:
        """Serve ``state`` (from the state file) before any local file is loaded."""
        self.running = state
        self._publish(*self._compile(self.local, state))

    def receive(self, updates: Sequence[Update]) -> list[Outcome]:
        """Apply queued updates in order, compile once, swap once; outcomes by revision.

        Coalescing matters when the controller pushes faster than the agent compiles: a
        burst costs one compile, one swap and one state-file write, and the last
        revision's ACK covers the ones before it. ``prepare`` (the parsing and compiling)
        may run in a worker thread and ``commit`` on the loop; this does both here.
        """
        return self.commit(self.prepare(updates))

    def prepare(self, updates: Sequence[Update]) -> Prepared:
        """Everything ``receive`` decides, computed from the current state without changing it.

        Safe in a worker thread: it reads ``running`` and ``local`` once (they are replaced,
        never mutated) so that a big snapshot's compile does not stall DNS.
        """
        running, local = self.running, self.local
        refusals: list[Refused] = []
        view = running
        for update in updates:
            base = view
            if isinstance(update, Delta) and update.since != view.revision:
                # After a NACK the controller resends from what we run, not from `view`.
                base = running if update.since == running.revision else view
            try:
                view = apply_update(base, update)
            except RevisionGap as exc:
                refusals.append(Refused(update.revision, str(exc), resync=True))
                break  # everything after a gap is a gap too
            except PolicyError as exc:
                refusals.append(Refused(update.revision, f"invalid update: {exc}"))
        prepared = Prepared(updates, running, local, refusals)
        if view is running:
            return prepared
        prepared.view = view
        try:
            prepared.snapshot, prepared.shadowed = self._compile(local, view)
        except PolicyError as exc:  # what apply_update's set check cannot see
            prepared.verdict = Refused(view.revision, f"invalid update: {exc}")
        return prepared

    def commit(self, prepared: Prepared) -> list[Outcome]:
        """Swap in what ``prepare`` decided (on the loop); redone if the state moved since."""
        if prepared.running is not self.running or prepared.local is not self.local:
            # A local reload ran while this was prepared in a thread.
            prepared = self.prepare(prepared.updates)
        outcomes: list[Outcome] = list(prepared.refusals)
        for refusal in prepared.refusals:
            if not refusal.resync:
                log.error(
                    "sync.update_invalid",
                    extra=fields(revision=refusal.revision, error=refusal.reason[:500]),
                )
        view, verdict = prepared.view, prepared.verdict
        if view is not None and prepared.snapshot is not None:
            release(self.running)  # its policies dict is freed off the loop
            self.running = view
            self._publish(prepared.snapshot, prepared.shadowed or [])
            outcomes.append(Applied(view.revision))
        elif view is not None and verdict is not None:
            log.error(
                "sync.update_invalid",
                extra=fields(
                    revision=view.revision,
                    kept_revision=self.running.revision,
                    error=verdict.reason[:500],
                ),
            )
            outcomes.append(verdict)
        return sorted(outcomes, key=lambda o: o.revision)

    # -- the local side (called by LocalPolicyWatcher) -------------------------------------

    def stage_local(self, loaded: list[SourcedPolicy]) -> CompiledSnapshot:
        """The snapshot with these local files (shadowing what they clash with).

        Runs in the reloader's worker thread: it only reads ``running`` (one reference)
        and remembers what it compiled against, so ``commit_local`` can tell whether a
        controller update landed in between.
        """
        running = self.running
        snapshot, shadowed = self._compile(loaded, running)
        self._staged_local = (loaded, running, shadowed)
        return snapshot

    def commit_local(self, snapshot: CompiledSnapshot) -> None:
        """Publish the staged local files (on the loop), then report them."""
        shadowed = self.shadowed
        if self._staged_local is not None:
            loaded, compiled_with, shadowed = self._staged_local
            self._staged_local = None
            if compiled_with is not self.running:
                # A controller update was applied while the files were parsed: compile
                # again against what runs now, or a stale controller set would be swapped in.
                snapshot, shadowed = self._compile(loaded, self.running)
        else:
            loaded = self.local
        if loaded is not self.local:
            release(self.local)  # a list as long as the files' policies: freed off the loop
        self.local = loaded
        self._publish(snapshot, shadowed)
        if self.on_local_changed is not None:
            self.on_local_changed()


class LocalPolicyWatcher(PolicyWatcher):
    """The agent's file watcher, but each load is checked against the controller's policies."""

    def __init__(self, path: Path, sources: PolicySources, *, interval: float = 0.5) -> None:
        super().__init__(path, sources.publish, interval=interval)
        self.sources = sources

    def _compile(self) -> CompiledSnapshot:
        # Inside PolicyWatcher._build's error handling: a file that does not load is logged
        # as a failed reload and the previous local files stay in force.
        snapshot = self.sources.stage_local(load_policy_path(self.path, self.parsed))
        self.revision += 1
        return snapshot

    def _apply(self, snapshot: CompiledSnapshot) -> None:
        self.sources.commit_local(snapshot)
        log.info(
            "policy.reloaded",
            extra=fields(path=str(self.path), policies=len(self.sources.local)),
        )
