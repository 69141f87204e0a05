"""The agent's policy set when a controller drives it: the controller's state plus local files.

Two sources feed one snapshot: the controller's policies (pushed, persisted in the state
file) and the node's own ``--policies`` files. They must not define the same policy name
or the same domain, because which one should answer would be a guess. **The set that is
running wins; the change that would create the clash is refused, loudly, with a reason
that names both sides:**

* a controller update that clashes with a local file is NACKed (the reason names the local
  file and document); the agent keeps serving its last good set and remembers the
  controller's newer state as *pending*: deltas keep applying on top of it, and it runs
  (and is ACKed) as soon as the clash is gone, e.g. when the local file is edited;
* a local file edit that clashes with a running controller policy is refused by the
  reloader like any bad file (``policy.reload_failed`` names the file, document and the
  controller policy); the previous local files stay in force.

At start the state file is read first (it is what the controller last had applied), then
the local files are checked against it exactly as an edit would be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.reload import PolicyWatcher
from dnsmesh.errors import FieldError, PolicyError, PolicyFileError
from dnsmesh.logs import fields
from dnsmesh.policy import Policy
from dnsmesh.policyfile import SourcedPolicy, load_policy_path
from dnsmesh.protocol import AppliedState, Delta, RevisionGap, SnapshotMessage, apply_update
from dnsmesh.snapshot import Snapshot as CompiledSnapshot
from dnsmesh.snapshot import compile_snapshot

log = logging.getLogger(__name__)

Update = SnapshotMessage | Delta


@dataclass(frozen=True, slots=True)
class Clash:
    controller: Policy
    local: SourcedPolicy
    what: str  # "name" or "domain"

    def for_controller(self) -> str:
        """The NACK reason: the controller's policy is refused because of a local file."""
        p, loc = self.controller, self.local
        value = p.name if self.what == "name" else p.spec.domain
        return (
            f"policy {p.name!r}: {self.what} {value!r} is also defined by local policy "
            f"{loc.policy.name!r} in {loc.source} (document {loc.document}); the agent's "
            "local files and the controller may not define the same name or domain"
        )

    def for_local(self, controller_revision: int) -> FieldError:
        """The reload error: the local file is refused because of a controller policy."""
        p = self.controller
        path = "metadata.name" if self.what == "name" else "spec.domain"
        value = p.name if self.what == "name" else p.spec.domain
        return FieldError(
            path,
            f"{value!r} is also the {self.what} of controller policy {p.name!r} "
            f"(revision {controller_revision}); a local file may not override the controller",
        )


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
    start: AppliedState
    local: list[SourcedPolicy]
    refusals: list[Refused]
    view: AppliedState | None = None  # the new controller state, if any update applied
    verdict: Refused | None = None  # why `view` cannot run, or None
    pending: bool = False  # `verdict` is a clash with local files: keep `view` pending
    snapshot: CompiledSnapshot | None = None  # `view` and the local files, compiled


class PolicySources:
    """Holds both sources, decides every change, and publishes one compiled snapshot.

    ``running`` is the controller state being served (and persisted); ``view`` is the
    newest controller state the agent knows, which is ``running`` unless an update was
    refused for a clash (then it is pending). ``publish`` is the server's snapshot swap.
    """

    def __init__(
        self,
        publish: Callable[[CompiledSnapshot], None],
        on_pending_applied: Callable[[AppliedState], None] | None = None,
    ) -> None:
        self.publish = publish
        self.local: list[SourcedPolicy] = []
        self.running = AppliedState.empty()
        self.view = self.running
        # Called with the new running state when a local edit lets a pending one run.
        self.on_pending_applied = on_pending_applied
        self._staged_local: tuple[list[SourcedPolicy], AppliedState] | None = None

    @property
    def pending(self) -> bool:
        return self.view is not self.running

    def _compile(self, local: Sequence[SourcedPolicy], state: AppliedState) -> CompiledSnapshot:
        policies = [s.policy for s in local] + list(state.policies.values())
        return compile_snapshot(policies, state.revision)

    # -- the controller side -------------------------------------------------------------

    def start_from(self, state: AppliedState) -> None:
        """Serve ``state`` (from the state file) before any local file is loaded."""
        self.running = self.view = state
        self.publish(self._compile(self.local, state))

    def resync(self) -> None:
        """A new channel starts from what runs: forget any pending controller state."""
        self.view = self.running

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

        Safe in a worker thread: it reads ``running``, ``view`` and ``local`` once (they are
        replaced, never mutated) so that a big snapshot's compile does not stall DNS.
        """
        running, start, local = self.running, self.view, self.local
        refusals: list[Refused] = []
        view = start
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
        prepared = Prepared(updates, running, start, local, refusals)
        if view is start:
            return prepared
        prepared.view = view
        clashes = find_clashes(local, view.policies)
        if clashes:
            reason = "; ".join(c.for_controller() for c in clashes[:5])
            prepared.verdict = Refused(view.revision, reason)
            prepared.pending = True
            return prepared
        try:
            prepared.snapshot = self._compile(local, view)
        except PolicyError as exc:  # a repeated name/domain inside the controller's set
            prepared.verdict = Refused(view.revision, f"invalid update: {exc}")
        return prepared

    def commit(self, prepared: Prepared) -> list[Outcome]:
        """Swap in what ``prepare`` decided (on the loop); redone if the state moved since."""
        if (
            prepared.running is not self.running
            or prepared.start is not self.view
            or prepared.local is not self.local
        ):
            # A local reload or a pending state ran while this was prepared in a thread.
            prepared = self.prepare(prepared.updates)
        outcomes: list[Outcome] = list(prepared.refusals)
        for refusal in prepared.refusals:
            if not refusal.resync:
                log.error(
                    "sync.update_invalid",
                    extra=fields(revision=refusal.revision, error=refusal.reason[:500]),
                )
        view, verdict = prepared.view, prepared.verdict
        if view is not None and verdict is None and prepared.snapshot is not None:
            self.running = self.view = view
            self.publish(prepared.snapshot)
            outcomes.append(Applied(view.revision))
        elif view is not None and verdict is not None:
            event = "sync.update_clashes" if prepared.pending else "sync.update_invalid"
            log.error(
                event,
                extra=fields(
                    revision=view.revision,
                    kept_revision=self.running.revision,
                    reason=verdict.reason[:500],
                ),
            )
            # A clash leaves the controller's newer state pending (deltas apply on top of
            # it, and a local edit may let it run); an invalid set is forgotten.
            self.view = view if prepared.pending else self.running
            outcomes.append(verdict)
        return sorted(outcomes, key=lambda o: o.revision)

    def _run_view(self) -> Outcome:
        view = self.view
        clashes = find_clashes(self.local, view.policies)
        if clashes:
            reason = "; ".join(c.for_controller() for c in clashes[:5])
            log.error(
                "sync.update_clashes",
                extra=fields(
                    revision=view.revision, kept_revision=self.running.revision, reason=reason
                ),
            )
            return Refused(view.revision, reason)
        try:
            snapshot = self._compile(self.local, view)
        except PolicyError as exc:  # a repeated name/domain inside the controller's set
            log.error("sync.update_invalid", extra=fields(revision=view.revision, error=str(exc)))
            self.view = self.running
            return Refused(view.revision, f"invalid update: {exc}")
        self.running = view
        self.publish(snapshot)
        return Applied(view.revision)

    # -- the local side (called by LocalPolicyWatcher) -------------------------------------

    def stage_local(self, loaded: list[SourcedPolicy]) -> CompiledSnapshot:
        """The snapshot with these local files, or PolicyFileError naming the clash.

        Runs in the reloader's worker thread: it only reads ``running`` (one reference)
        and remembers what it checked against, so ``commit_local`` can tell whether a
        controller update landed in between.
        """
        running = self.running
        self._check_local(loaded, running)
        snapshot = self._compile(loaded, running)
        self._staged_local = (loaded, running)
        return snapshot

    def _check_local(self, loaded: list[SourcedPolicy], running: AppliedState) -> None:
        clashes = find_clashes(loaded, running.policies)
        if clashes:
            first = clashes[0]
            errors = [c.for_local(running.revision) for c in clashes[:5]]
            raise PolicyFileError(first.local.source, errors, document=first.local.document)

    def commit_local(self, snapshot: CompiledSnapshot) -> bool:
        """Publish the staged local files (on the loop); False if they clash after all."""
        if self._staged_local is None:
            self.publish(snapshot)
            return True
        loaded, checked = self._staged_local
        self._staged_local = None
        if checked is not self.running:
            # A controller update was applied while the files were parsed: check and
            # compile again against what runs now, or a stale set would be swapped in.
            try:
                self._check_local(loaded, self.running)
                snapshot = self._compile(loaded, self.running)
            except PolicyError as exc:
                log.error(
                    "policy.reload_failed",
                    extra=fields(error=str(exc), kept_revision=self.running.revision),
                )
                return False
        self.local = loaded
        self.publish(snapshot)
        if self.pending and not find_clashes(self.local, self.view.policies):
            outcome = self._run_view()
            if isinstance(outcome, Applied) and self.on_pending_applied is not None:
                log.info("sync.pending_applied", extra=fields(revision=outcome.revision))
                self.on_pending_applied(self.running)
        return True


class LocalPolicyWatcher(PolicyWatcher):
    """The agent's file watcher, but each load is checked against the controller's policies."""

    def __init__(self, path: Path, sources: PolicySources, *, interval: float = 0.5) -> None:
        super().__init__(path, sources.publish, interval=interval)
        self.sources = sources

    def _compile(self) -> CompiledSnapshot:
        # Inside PolicyWatcher._build's error handling: a clash is logged as a failed reload
        # and the previous local files stay in force.
        snapshot = self.sources.stage_local(load_policy_path(self.path))
        self.revision += 1
        return snapshot

    def _apply(self, snapshot: CompiledSnapshot) -> None:
        if self.sources.commit_local(snapshot):
            log.info(
                "policy.reloaded",
                extra=fields(path=str(self.path), policies=len(self.sources.local)),
            )
