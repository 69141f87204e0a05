"""Policies and their slices: the reads, and one transaction per write.

Every write is one transaction that bumps the global revision, writes the policy, appends
the change log row and the audit row, or does none of them; a write that changes nothing
(the same document again) discards its transaction and says so in its result. A write that
gives a policy a name or domain that a connected agent serves from its own ``--policies``
files is refused (LocalPolicyClash, 409) unless forced: that agent would shadow it
(agent/sync/policy_sources.py), so the operator is told before, not after. A write that,
with the drains in force and the quorum's down set counted as out of service, would break
the policy's own ``spec.safety`` rule is refused too (SafetyRuleBroken, 409 naming the rule,
as a drain that would is) unless forced; a breach a forced drain already made does not
block an edit that takes no more out (dnsmesh.safety.check_edit). Documents are
validated with ``dnsmesh.policy.parse_policy`` (a slice change as the whole resulting
policy), so the REST API, YAML files and the agents agree on what a valid policy is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from controller.db.models import PolicyRow
from controller.db.session import Database
from controller.errors import (
    AlreadyExists,
    DomainConflict,
    LocalPolicyClash,
    NotFound,
    PreconditionFailed,
    SafetyRuleBroken,
    StoreError,
)
from controller.repositories import agents, history, policies
from controller.repositories.drains import read_drains
from controller.repositories.health import read_down
from controller.repositories.history import AuditEntry, Change, Operation
from controller.repositories.probers import read_probers
from controller.repositories.revision import bump_revision, current_mesh_id, current_revision
from controller.repositories.rollouts import read_shares
from controller.repositories.scaling import read_counts
from controller.services.policy_rules import (
    IfMatch,
    SliceEdit,
    append_slice,
    check_precondition,
    content,
    parse_named,
    put_slice,
    remove_slice,
    same_content,
    slice_at,
)
from dnsmesh import safety
from dnsmesh.drains import NO_DRAINS, DrainSet
from dnsmesh.errors import FieldError, PolicyError
from dnsmesh.policy import Policy, check_policy_set, parse_policy
from dnsmesh.probing import NO_ASSIGNMENT, Assignment
from dnsmesh.protocol import Document

__all__ = [
    "IfMatch",
    "PolicyList",
    "PolicyService",
    "SetApplied",
    "SetOutcome",
    "StoredPolicy",
    "Written",
]

# PushSettings' default (three 10 s heartbeats plus the longest 30 s long-poll).
AGENT_STALE_AFTER = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    name: str
    revision: int
    document: Document


@dataclass(frozen=True, slots=True)
class PolicyList:
    revision: int  # the global revision the items are the state of
    items: list[Document]
    down: list[str] = field(default_factory=list)  # endpoints down mesh-wide at ``revision``
    drains: DrainSet = NO_DRAINS  # the operators' drains in force at ``revision``
    rollouts: Mapping[str, int] = field(default_factory=dict)  # canary shares at ``revision``
    probers: Assignment = NO_ASSIGNMENT  # the probe assignment at ``revision``
    # the scaled slices' counts at ``revision``
    slice_scale: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Written:
    """A write's outcome: the policy after it, and whether it was created or left unchanged."""

    policy: StoredPolicy
    created: bool = False
    changed: bool = True


@dataclass(slots=True)
class SetOutcome:
    """What became of one document of a set (or of one policy pruned)."""

    index: int  # the document's position in the set; pruned ones come after the set
    name: str | None  # None when the document has no usable name
    outcome: str  # created | configured | unchanged | pruned | refused
    refusal: StoreError | PolicyError | None = None

    def refuse(self, refusal: StoreError | PolicyError) -> None:
        self.outcome, self.refusal = "refused", refusal


@dataclass(frozen=True, slots=True)
class SetApplied:
    revision: int  # after the set (dry run or refused: what it would have been)
    applied: bool  # False: refused or a dry run, nothing stored
    items: list[SetOutcome]


class PolicyService:
    def __init__(self, db: Database, *, agent_stale_after: timedelta = AGENT_STALE_AFTER) -> None:
        self.db = db
        # An agent not heard from for this long is not connected: its local files do not
        # block writes (controller.push_settings.PushSettings.stale_after).
        self.agent_stale_after = agent_stale_after

    # -- reads ---------------------------------------------------------------------------

    def current_revision(self) -> int:
        return self.db.current_revision()

    def mesh_id(self) -> str:
        return self.db.read(current_mesh_id)

    def changes_since(self, revision: int, limit: int | None = None) -> list[Change]:
        """Every change with a revision above ``revision``, oldest first."""
        return self.db.read(lambda session: history.read_changes_since(session, revision, limit))

    def audit(self, *, limit: int = 50, before: int | None = None) -> list[AuditEntry]:
        """Audit entries newest first; ``before`` (an entry id) pages back in time."""
        return self.db.read(lambda session: history.read_audit(session, limit, before))

    def compact_changes(self, keep_after_revision: int) -> int:
        """Deletes change-log rows at or below ``keep_after_revision``; returns how many.

        Agents further behind than what is kept get a full snapshot instead of a delta
        (controller.hub), so compaction bounds the log without losing anyone.
        """
        return self.db.write(
            lambda session: history.delete_changes_through(session, keep_after_revision)
        )

    def list_policies(self, labels: Mapping[str, str] | None = None) -> PolicyList:
        """All policies (by name), or those whose labels include every pair in ``labels``."""

        def work(session: Session) -> PolicyList:
            # One snapshot (see Database.read): the items are the state at exactly this
            # revision, so a client can list and then ask for the changes since it.
            revision = current_revision(session)
            items = policies.policy_documents(session, labels)
            drains = read_drains(session, self.db.clock())
            shares = read_shares(session)
            probers = read_probers(session)
            scaled = read_counts(session)
            return PolicyList(revision, items, read_down(session), drains, shares, probers, scaled)

        return self.db.read(work)

    def list_policies_json(self, labels: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """``list_policies`` as the JSON array text, straight from the database.

        Decoding a thousand documents only to encode them again costs three times the
        query itself; the stored JSON text is already valid JSON.
        """
        return self.db.read(
            lambda session: (
                current_revision(session),
                policies.policy_documents_json(session, labels),
            )
        )

    def get_policy(self, name: str) -> StoredPolicy:
        return self.db.read(lambda session: _stored(policies.require_policy(session, name)))

    def list_slices(self, name: str) -> tuple[int, list[Document]]:
        policy = self.get_policy(name)
        return policy.revision, list(policy.document["spec"].get("slices", []))

    def get_slice(self, name: str, slice_id: str) -> tuple[int, Document]:
        policy = self.get_policy(name)
        for slice_doc in policy.document["spec"].get("slices", []):
            if slice_doc.get("id") == slice_id:
                return policy.revision, slice_doc
        raise NotFound(f"policy {name!r} has no slice {slice_id!r}")

    # -- policy writes -------------------------------------------------------------------

    def create_policy(
        self, document: object, *, actor: str, dry_run: bool = False, force: bool = False
    ) -> StoredPolicy:
        """Creates a policy; AlreadyExists when the name is taken.

        ``dry_run``: every check of the write runs in its transaction, which is then
        discarded: the result is what would be stored, and nothing is (no revision, no
        change row, no audit row, so no push). ``force``: even if a connected agent's local
        files define the policy's name or domain (LocalPolicyClash otherwise).
        """
        policy = parse_policy(document)
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            if policies.find_policy(session, policy.name) is not None:
                raise AlreadyExists(f"policy {policy.name!r} already exists")
            if not force:
                self._refuse_local_clashes(session, policy, None)
                _refuse_unsafe(_OutOfService.read(session, self.db), policy, None)
            written = self._save(session, revision, policy, None, actor, "policy.create")
            if dry_run:
                transaction.discard()
            return written.policy

    def put_policy(
        self,
        name: str,
        document: object,
        *,
        actor: str,
        if_match: IfMatch | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> Written:
        """Creates or replaces ``name``; an unchanged document is not a change (no revision).

        ``dry_run`` as for ``create_policy``: checked in full, then discarded.
        """
        policy = parse_named(document, name)
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            row = policies.find_policy(session, name)
            check_precondition(name, row, if_match)
            if row is not None and same_content(
                row.document, policy.to_document(with_revision=False)
            ):
                transaction.discard()
                return Written(_stored(row), changed=False)
            if not force:
                self._refuse_local_clashes(session, policy, row)
                _refuse_unsafe(_OutOfService.read(session, self.db), policy, row)
            operation = "policy.update" if row else "policy.create"
            written = self._save(session, revision, policy, row, actor, operation)
            if dry_run:
                transaction.discard()
            return written

    def delete_policy(
        self,
        name: str,
        *,
        actor: str,
        if_match: IfMatch | None = None,
        dry_run: bool = False,
    ) -> int:
        """Deletes ``name``; returns the revision of the deletion (``dry_run``: it would have)."""
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            row = policies.require_policy(session, name)
            check_precondition(name, row, if_match)
            before = row.document
            policies.delete_policy_row(session, row)
            self._log(session, revision, name, "delete", None, actor, "policy.delete", before)
            if dry_run:
                transaction.discard()
            return revision

    def apply_set(
        self,
        documents: list[object],
        *,
        actor: str,
        prune: Mapping[str, str] | None = None,
        dry_run: bool = False,
        force: bool = False,
        if_match: IfMatch | None = None,
    ) -> SetApplied:
        """Creates, replaces (and with ``prune``, deletes) to match a set: all or none, as
        **one revision**.

        Every document is validated first, and the set as a whole (a name or domain twice);
        then, in one transaction, each is checked as a single write would be (a domain held
        by a policy outside the set, a connected agent's local files unless ``force``).
        ``prune``: the policies with these labels (``{}``: every policy) that the set does
        not name are deleted in the same revision, so a domain can move from a pruned
        policy to a new one, or between policies of the set. Every document gets its
        outcome; when any is refused, or for ``dry_run``, the transaction is discarded.
        ``if_match``: the mesh revision the set was planned against (PreconditionFailed
        when another write came first). One change-log row and one audit row per policy
        changed, all at the set's revision; a set that changes nothing takes none.
        The reads are one query per kind for the whole set (chunked), and the rows are
        written in one flush: a set of 1,000 costs a few round trips, not thousands.
        """
        parsed, outcomes = _parse_set(documents)
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            if if_match is not None and not if_match.holds(revision - 1):
                raise PreconditionFailed(
                    f"the mesh is at revision {revision - 1}, not the one If-Match names"
                )
            valid = [p for p in parsed if p is not None]
            rows = policies.find_policies(session, (p.name for p in valid))
            doomed: list[PolicyRow] = []
            if prune is not None:
                keep = {outcome.name for outcome in outcomes}
                doomed = [r for r in policies.policy_rows(session, prune) if r.name not in keep]
            moving = {p.name for p in valid} | {r.name for r in doomed}
            owners = policies.domain_owners(session, (p.spec.domain for p in valid))
            locals_ = None if force else self._live_local_policies(session)
            out = None if force else _OutOfService.read(session, self.db)
            changed: list[tuple[Policy, PolicyRow | None]] = []
            for outcome, candidate in zip(outcomes, parsed, strict=True):
                if candidate is None or outcome.refusal is not None:
                    continue
                current = rows.get(candidate.name)
                owner = owners.get(candidate.spec.domain)
                if owner is not None and owner not in moving:
                    message = f"{candidate.spec.domain!r} is already the domain of policy {owner!r}"
                    outcome.refuse(DomainConflict(message, [FieldError("spec.domain", message)]))
                    continue
                wanted = candidate.to_document(with_revision=False)
                if current is not None and same_content(current.document, wanted):
                    continue
                if locals_ is not None:
                    try:
                        _refuse_local_clashes(locals_, candidate, current)
                    except LocalPolicyClash as refusal:
                        outcome.refuse(refusal)
                        continue
                if out is not None:
                    try:
                        _refuse_unsafe(out, candidate, current)
                    except SafetyRuleBroken as refusal:
                        outcome.refuse(refusal)
                        continue
                outcome.outcome = "configured" if current else "created"
                changed.append((candidate, current))
            pruned = [
                SetOutcome(len(documents) + i, row.name, "pruned") for i, row in enumerate(doomed)
            ]
            applied = all(o.refusal is None for o in outcomes)
            if not changed and not doomed:
                transaction.discard()  # nothing to change: no revision
                return SetApplied(revision - 1, False, outcomes)
            if applied:
                self._write_set(session, revision, changed, doomed, actor)
            if dry_run or not applied:
                transaction.discard()
        return SetApplied(revision, applied and not dry_run, outcomes + pruned)

    # -- slice writes (each one a change of the whole policy) -----------------------------

    def create_slice(
        self,
        name: str,
        slice_doc: object,
        *,
        actor: str,
        if_match: IfMatch | None = None,
        dry_run: bool = False,
    ) -> tuple[StoredPolicy, Document]:
        """Appends a slice (slices match in order, so a new one goes last)."""
        edit = append_slice(name, slice_doc)
        return self._edit_slices(name, edit, actor, "slice.create", if_match, dry_run)

    def put_slice(
        self,
        name: str,
        slice_id: str,
        slice_doc: object,
        *,
        actor: str,
        if_match: IfMatch | None = None,
        dry_run: bool = False,
    ) -> tuple[StoredPolicy, Document, bool]:
        """Replaces slice ``slice_id`` in place, or appends it; the body's id must match."""
        edit = put_slice(slice_id, slice_doc)
        policy, stored_slice = self._edit_slices(
            name, edit, actor, "slice.update", if_match, dry_run
        )
        return policy, stored_slice, edit.created

    def delete_slice(
        self,
        name: str,
        slice_id: str,
        *,
        actor: str,
        if_match: IfMatch | None = None,
        dry_run: bool = False,
    ) -> StoredPolicy:
        edit = remove_slice(name, slice_id)
        policy, _ = self._edit_slices(name, edit, actor, "slice.delete", if_match, dry_run)
        return policy

    # -- internals -----------------------------------------------------------------------

    def _live_local_policies(self, session: Session) -> list[agents.LocalEntry]:
        return agents.live_local_policies(session, self.db.clock() - self.agent_stale_after)

    def _write_set(
        self,
        session: Session,
        revision: int,
        changed: list[tuple[Policy, PolicyRow | None]],
        doomed: list[PolicyRow],
        actor: str,
    ) -> None:
        """The rows of a set at one revision, deletions first (their domains move), then one
        flush: SQLAlchemy sends each table's rows as one batched statement."""
        now = self.db.clock()
        if doomed:
            policies.delete_policy_rows(session, doomed)
        for gone in doomed:
            history.append_change(session, revision, gone.name, "delete", None, now)
            history.append_audit(
                session,
                at=now,
                actor=actor,
                operation="policy.delete",
                target=gone.name,
                revision=revision,
                before=gone.document,
                after=None,
            )
        if doomed:
            # The deleted rows' domains and names are free before the new rows go in.
            for gone in doomed:
                session.expunge(gone)
            session.flush()
        for policy, row in changed:
            document = policy.to_document(with_revision=False)
            document["metadata"]["revision"] = revision
            before = row.document if row is not None else None
            policies.save_policy(
                session,
                row,
                name=policy.name,
                domain=policy.spec.domain,
                revision=revision,
                labels=dict(policy.metadata.labels),
                document=document,
                at=now,
            )
            history.append_change(
                session, revision, policy.name, "update" if row else "create", document, now
            )
            history.append_audit(
                session,
                at=now,
                actor=actor,
                operation="policy.update" if row else "policy.create",
                target=policy.name,
                revision=revision,
                before=before,
                after=document,
            )
        session.flush()

    def _refuse_local_clashes(
        self, session: Session, policy: Policy, row: PolicyRow | None
    ) -> None:
        if row is not None and row.domain == policy.spec.domain:
            return  # no new clash: skip the read
        _refuse_local_clashes(self._live_local_policies(session), policy, row)

    def _edit_slices(
        self,
        name: str,
        edit: SliceEdit,
        actor: str,
        operation: str,
        if_match: IfMatch | None,
        dry_run: bool,
    ) -> tuple[StoredPolicy, Document]:
        """``edit`` applied to the policy's slices (``dry_run``: checked, then discarded)."""
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            row = policies.require_policy(session, name)
            check_precondition(name, row, if_match)
            document = content(row.document)
            slices: list[Any] = list(document["spec"].get("slices", []))
            index = edit(slices)
            document["spec"]["slices"] = slices
            policy = parse_policy(document)  # the whole resulting policy must validate
            if same_content(row.document, policy.to_document(with_revision=False)):
                # The same slice again: not a change (no revision), as for a policy PUT.
                transaction.discard()
                return _stored(row), slice_at(row.document, index)
            written = self._save(session, revision, policy, row, actor, operation)
            if dry_run:
                transaction.discard()
            return written.policy, slice_at(written.policy.document, index)

    def _save(
        self,
        session: Session,
        revision: int,
        policy: Policy,
        row: PolicyRow | None,
        actor: str,
        operation: str,
    ) -> Written:
        domain = policy.spec.domain
        taken = policies.domain_owner(session, domain, other_than=policy.name)
        if taken is not None:
            message = f"{domain!r} is already the domain of policy {taken!r}"
            raise DomainConflict(message, [FieldError("spec.domain", message)])
        document = policy.to_document(with_revision=False)
        document["metadata"]["revision"] = revision
        before = row.document if row is not None else None
        created = row is None
        policies.save_policy(
            session,
            row,
            name=policy.name,
            domain=domain,
            revision=revision,
            labels=dict(policy.metadata.labels),
            document=document,
            at=self.db.clock(),
        )
        change: Operation = "create" if created else "update"
        self._log(session, revision, policy.name, change, document, actor, operation, before)
        return Written(StoredPolicy(policy.name, revision, document), created=created)

    def _log(
        self,
        session: Session,
        revision: int,
        name: str,
        change: Operation,
        document: Document | None,
        actor: str,
        operation: str,
        before: Document | None,
    ) -> None:
        now = self.db.clock()
        history.append_change(session, revision, name, change, document, now)
        history.append_audit(
            session,
            at=now,
            actor=actor,
            operation=operation,
            target=name,
            revision=revision,
            before=before,
            after=document,
        )
        session.flush()


@dataclass(frozen=True, slots=True)
class _OutOfService:
    """What the safety rules count as out of service besides a policy's own weights: the
    drains in force and the quorum's down set, read in the write's transaction."""

    drains: DrainSet
    down: frozenset[str]

    @classmethod
    def read(cls, session: Session, db: Database) -> _OutOfService:
        return cls(read_drains(session, db.clock()), frozenset(read_down(session)))

    def of(self, policy: str) -> frozenset[str]:
        return self.drains.of(policy) | self.down


def _refuse_unsafe(out: _OutOfService, policy: Policy, row: PolicyRow | None) -> None:
    """SafetyRuleBroken if ``policy``, written over ``row``, would break its safety rule
    with what is out of service now."""
    gone = out.of(policy.name)
    if not gone or safety.check(policy, gone) is None:
        return  # the common case: the stored document is not parsed
    before = parse_policy(row.document) if row is not None else None
    violation = safety.check_edit(before, policy, gone)
    if violation is not None:
        raise SafetyRuleBroken(
            violation,
            f"writing policy {policy.name!r} with the drains in force",
            "write with force=true to do it anyway",
        )


def _refuse_local_clashes(
    entries: list[agents.LocalEntry], policy: Policy, row: PolicyRow | None
) -> None:
    """LocalPolicyClash if a live agent's local files define the name or domain this
    write brings; a name or domain the policy already had is no new clash."""
    domain = policy.spec.domain
    if row is not None and row.domain == domain:
        return
    found = agents.matching_definitions(
        entries, name=policy.name if row is None else None, domain=domain
    )
    if not found:
        return
    described = [
        f"agent {d.agent_id} (node {d.node_name}) serves {d.what} "
        f"{policy.name if d.what == 'name' else domain!r} from local policy "
        f"{d.local.get('name')!r} in {d.local.get('source') or 'its --policies files'}"
        for d in found[:5]
    ]
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    message = (
        f"policy {policy.name!r} clashes with agents' local policies: "
        + "; ".join(described)
        + more
        + " (those agents would keep serving their local file); write with force=true "
        "to store it anyway"
    )
    path = "metadata.name" if found[0].what == "name" else "spec.domain"
    raise LocalPolicyClash(message, [FieldError(path, described[0])])


def _parse_set(documents: list[object]) -> tuple[list[Policy | None], list[SetOutcome]]:
    """Each document validated, then the set (a name or domain twice): every refusal named
    by the document's index."""
    parsed: list[Policy | None] = []
    outcomes: list[SetOutcome] = []
    for index, document in enumerate(documents):
        try:
            policy = parse_policy(document)
        except PolicyError as refusal:
            parsed.append(None)
            outcomes.append(SetOutcome(index, _name_of(document), "refused", refusal))
        else:
            parsed.append(policy)
            outcomes.append(SetOutcome(index, policy.name, "unchanged"))
    valid = [p for p in parsed if p is not None]
    positions = [i for i, p in enumerate(parsed) if p is not None]
    for error in _set_errors(valid):
        outcomes[positions[error.index]].refuse(PolicyError([error.field]))
    return parsed, outcomes


@dataclass(frozen=True, slots=True)
class _SetError:
    index: int  # in the list of valid policies
    field: FieldError


def _set_errors(valid: list[Policy]) -> list[_SetError]:
    """A repeated name or domain within the set, each blamed on the later document."""
    try:
        check_policy_set(valid)
    except PolicyError as error:
        found = []
        for field_error in error.errors:
            index, _, path = field_error.path[1:].partition("].")
            found.append(_SetError(int(index), FieldError(path, field_error.message)))
        return found
    return []


def _name_of(document: object) -> str | None:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def _stored(row: PolicyRow) -> StoredPolicy:
    return StoredPolicy(row.name, row.revision, row.document)
