"""Policies and their slices in the database: validated writes, the change log and the audit.

Every write is one transaction that bumps the global revision, writes the policy, appends
the change log row and the audit row, or does none of them. Documents are validated with
``dnsmesh.policy.parse_policy`` (a slice change as the whole resulting policy), so the
REST API, YAML files and the agents agree on what a valid policy is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Select, Text, cast, delete, select
from sqlalchemy.orm import Session

from controller.db.models import AuditRow, ChangeRow, PolicyRow
from controller.db.session import Database, Rollback, current_revision_in
from controller.errors import AlreadyExists, DomainConflict, NotFound, PreconditionFailed
from controller.health import read_down
from controller.history import AuditEntry, Change, Operation, read_audit, read_changes_since
from dnsmesh.errors import FieldError, PolicyError
from dnsmesh.policy import Policy, parse_policy

Document = dict[str, Any]
T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class Written:
    """A write's outcome: the policy after it, and whether it was created or left unchanged."""

    policy: StoredPolicy
    created: bool = False
    changed: bool = True


@dataclass(frozen=True, slots=True)
class IfMatch:
    """An If-Match precondition: ``revisions`` None means ``*`` (any current version)."""

    revisions: frozenset[int] | None

    def holds(self, current: int | None) -> bool:
        if current is None:  # RFC 9110 §13.1.1: no current representation, If-Match fails
            return False
        return self.revisions is None or current in self.revisions


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads ---------------------------------------------------------------------------

    def current_revision(self) -> int:
        return self.db.current_revision()

    def changes_since(self, revision: int, limit: int | None = None) -> list[Change]:
        """Every change with a revision above ``revision``, oldest first."""
        return self.db.read(lambda session: read_changes_since(session, revision, limit))

    def audit(self, *, limit: int = 50, before: int | None = None) -> list[AuditEntry]:
        """Audit entries newest first; ``before`` (an entry id) pages back in time."""
        return self.db.read(lambda session: read_audit(session, limit, before))

    def compact_changes(self, keep_after_revision: int) -> int:
        """Deletes change-log rows at or below ``keep_after_revision``; returns how many.

        Agents further behind than what is kept get a full snapshot instead of a delta
        (controller.hub), so compaction bounds the log without losing anyone.
        """

        def work(session: Session) -> int:
            result = session.execute(
                delete(ChangeRow).where(ChangeRow.revision <= keep_after_revision)
            )
            return int(getattr(result, "rowcount", 0) or 0)

        return self.db.write(work)

    def list_policies(self, labels: Mapping[str, str] | None = None) -> PolicyList:
        """All policies (by name), or those whose labels include every pair in ``labels``."""

        def work(session: Session) -> PolicyList:
            # One snapshot (see Database.read): the items are the state at exactly this
            # revision, so a client can list and then ask for the changes since it.
            revision = current_revision_in(session)
            query = _labelled(select(PolicyRow.document), labels)
            return PolicyList(revision, list(session.scalars(query)), read_down(session))

        return self.db.read(work)

    def list_policies_json(self, labels: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """``list_policies`` as the JSON array text, straight from the database.

        Decoding a thousand documents only to encode them again costs three times the
        query itself; the stored JSON text is already valid JSON.
        """

        def work(session: Session) -> tuple[int, bytes]:
            revision = current_revision_in(session)
            query = _labelled(select(cast(PolicyRow.document, Text)), labels)
            return revision, b"[" + ",".join(session.scalars(query)).encode() + b"]"

        return self.db.read(work)

    def get_policy(self, name: str) -> StoredPolicy:
        return self.db.read(lambda session: _stored(_require(session, name)))

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

    def create_policy(self, document: object, *, actor: str) -> StoredPolicy:
        """Creates a policy; AlreadyExists when the name is taken."""
        policy = parse_policy(document)

        def work(session: Session, revision: int) -> StoredPolicy:
            if _find(session, policy.name) is not None:
                raise AlreadyExists(f"policy {policy.name!r} already exists")
            return self._save(session, revision, policy, None, actor, "policy.create").policy

        return self.db.write_revision(work)

    def put_policy(
        self, name: str, document: object, *, actor: str, if_match: IfMatch | None = None
    ) -> Written:
        """Creates or replaces ``name``; an unchanged document is not a change (no revision)."""
        policy = _parse_named(document, name)

        def work(session: Session, revision: int) -> Written:
            row = _find(session, name)
            _check_precondition(name, row, if_match)
            if row is not None and _content(row.document) == policy.to_document(
                with_revision=False
            ):
                raise Rollback(Written(_stored(row), changed=False))
            operation = "policy.update" if row else "policy.create"
            return self._save(session, revision, policy, row, actor, operation)

        return self.db.write_revision(work)

    def delete_policy(self, name: str, *, actor: str, if_match: IfMatch | None = None) -> int:
        """Deletes ``name``; returns the revision of the deletion."""

        def work(session: Session, revision: int) -> int:
            row = _find(session, name)
            if row is None:
                raise NotFound(f"policy {name!r} does not exist")
            _check_precondition(name, row, if_match)
            before = row.document
            session.execute(delete(PolicyRow).where(PolicyRow.id == row.id))
            self._log(session, revision, name, "delete", None, actor, "policy.delete", before)
            return revision

        return self.db.write_revision(work)

    # -- slice writes (each one a change of the whole policy) -----------------------------

    def create_slice(
        self, name: str, slice_doc: object, *, actor: str, if_match: IfMatch | None = None
    ) -> tuple[StoredPolicy, Document]:
        """Appends a slice (slices match in order, so a new one goes last)."""
        slice_id = slice_doc.get("id") if isinstance(slice_doc, dict) else None

        def edit(slices: list[Any]) -> int:
            if slice_id is not None and any(s.get("id") == slice_id for s in slices):
                raise AlreadyExists(f"policy {name!r} already has a slice {slice_id!r}")
            slices.append(slice_doc)
            return len(slices) - 1

        return self._edit_slices(name, edit, actor, "slice.create", if_match)

    def put_slice(
        self,
        name: str,
        slice_id: str,
        slice_doc: object,
        *,
        actor: str,
        if_match: IfMatch | None = None,
    ) -> tuple[StoredPolicy, Document, bool]:
        """Replaces slice ``slice_id`` in place, or appends it; the body's id must match."""
        body = slice_doc
        if isinstance(body, dict) and "id" not in body:
            body = {"id": slice_id, **body}
        created = False

        def edit(slices: list[Any]) -> int:
            nonlocal created
            if isinstance(body, dict) and body.get("id") != slice_id:
                index = next(
                    (i for i, s in enumerate(slices) if s.get("id") == slice_id), len(slices)
                )
                raise PolicyError(
                    [
                        FieldError(
                            f"spec.slices[{index}].id",
                            f"the slice id must match the path ({slice_id!r})",
                        )
                    ]
                )
            for index, existing in enumerate(slices):
                if existing.get("id") == slice_id:
                    slices[index] = body
                    return index
            created = True
            slices.append(body)
            return len(slices) - 1

        policy, stored_slice = self._edit_slices(name, edit, actor, "slice.update", if_match)
        return policy, stored_slice, created

    def delete_slice(
        self, name: str, slice_id: str, *, actor: str, if_match: IfMatch | None = None
    ) -> StoredPolicy:
        def edit(slices: list[Any]) -> int:
            for index, existing in enumerate(slices):
                if existing.get("id") == slice_id:
                    del slices[index]
                    return -1
            raise NotFound(f"policy {name!r} has no slice {slice_id!r}")

        policy, _ = self._edit_slices(name, edit, actor, "slice.delete", if_match)
        return policy

    # -- internals -----------------------------------------------------------------------

    def _edit_slices(
        self,
        name: str,
        edit: Callable[[list[Any]], int],
        actor: str,
        operation: str,
        if_match: IfMatch | None,
    ) -> tuple[StoredPolicy, Document]:
        def work(session: Session, revision: int) -> tuple[StoredPolicy, Document]:
            row = _require(session, name)
            _check_precondition(name, row, if_match)
            document = _content(row.document)
            slices: list[Any] = list(document["spec"].get("slices", []))
            index: int = edit(slices)
            document["spec"]["slices"] = slices
            policy = parse_policy(document)  # the whole resulting policy must validate
            if policy.to_document(with_revision=False) == _content(row.document):
                # The same slice again: not a change (no revision), as for a policy PUT.
                raise Rollback((_stored(row), _slice_at(row.document, index)))
            written = self._save(session, revision, policy, row, actor, operation)
            return written.policy, _slice_at(written.policy.document, index)

        result: tuple[StoredPolicy, Document] = self.db.write_revision(work)
        return result

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
        taken = session.scalar(
            select(PolicyRow.name).where(PolicyRow.domain == domain, PolicyRow.name != policy.name)
        )
        if taken is not None:
            raise DomainConflict(
                f"{domain!r} is already the domain of policy {taken!r}",
                [
                    FieldError(
                        "spec.domain", f"{domain!r} is already the domain of policy {taken!r}"
                    )
                ],
            )
        document = policy.to_document(with_revision=False)
        document["metadata"]["revision"] = revision
        now = self.db.clock()
        before = row.document if row is not None else None
        created = row is None
        if row is None:
            row = PolicyRow(name=policy.name, created_at=now)
            session.add(row)
        row.domain = domain
        row.revision = revision
        row.labels = dict(policy.metadata.labels)
        row.document = document
        row.updated_at = now
        session.flush()
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
        session.add(
            ChangeRow(
                revision=revision,
                policy_name=name,
                operation=change,
                document=document,
                created_at=now,
            )
        )
        session.add(
            AuditRow(
                at=now,
                actor=actor,
                operation=operation,
                target=name,
                revision=revision,
                before=before,
                after=document,
            )
        )
        session.flush()


def _slice_at(document: Document, index: int) -> Document:
    slices: list[Document] = document["spec"].get("slices", [])
    return slices[index] if 0 <= index < len(slices) else {}


def _labelled(query: Select[T], labels: Mapping[str, str] | None) -> Select[T]:
    """Policies by name whose labels include every pair in ``labels``."""
    for key, value in (labels or {}).items():
        query = query.where(PolicyRow.labels[key].as_string() == value)
    return query.order_by(PolicyRow.name)


def _find(session: Session, name: str) -> PolicyRow | None:
    return session.scalars(select(PolicyRow).where(PolicyRow.name == name)).one_or_none()


def _require(session: Session, name: str) -> PolicyRow:
    row = _find(session, name)
    if row is None:
        raise NotFound(f"policy {name!r} does not exist")
    return row


def _stored(row: PolicyRow) -> StoredPolicy:
    return StoredPolicy(row.name, row.revision, row.document)


def _content(document: Document) -> Document:
    """A stored document without its revision: what an operator wrote, as validated."""
    copied = copy.deepcopy(document)
    copied.get("metadata", {}).pop("revision", None)
    return copied


def _check_precondition(name: str, row: PolicyRow | None, if_match: IfMatch | None) -> None:
    if if_match is None or if_match.holds(row.revision if row else None):
        return
    if row is None:
        raise PreconditionFailed(f"If-Match given but policy {name!r} does not exist")
    raise PreconditionFailed(
        f"policy {name!r} is at revision {row.revision}, not the one If-Match names"
    )


def _parse_named(document: object, name: str) -> Policy:
    """Validates ``document`` and that its metadata.name is ``name``, naming every bad field."""
    errors: list[FieldError] = []
    policy: Policy | None = None
    try:
        policy = parse_policy(document)
    except PolicyError as error:
        errors.extend(error.errors)
    metadata = document.get("metadata") if isinstance(document, dict) else None
    given = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(given, str) and given != name:
        errors.append(
            FieldError("metadata.name", f"{given!r} does not match the name in the path {name!r}")
        )
    if errors or policy is None:
        raise PolicyError(errors, policy=name)
    return policy
