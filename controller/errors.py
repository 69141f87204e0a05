"""What the controller's store refuses, each mapped once to an HTTP status by the API.

    ControllerError (dnsmesh.errors)
    └── StoreError
        ├── NotFound             404  no such policy, slice or token
        ├── AlreadyExists        409  the name (or slice id) is taken
        ├── DomainConflict       409  another policy already has the domain
        ├── LocalPolicyClash     409  a connected agent's local files define the name/domain
        ├── SafetyRuleBroken     409  a drain would break a policy's spec.safety (``force``),
        │                             or a policy write would with the drains in force
        ├── Conflict             409  the operation does not fit the state (no rollout, ...)
        ├── PreconditionFailed   412  If-Match names a revision that is no longer current
        ├── DatabaseUnavailable  503  the database cannot be reached or dropped the connection
        │   └── CommitUnknown    503  the connection dropped during COMMIT: it may have landed
        ├── SchemaNotCurrent          the database is not migrated to head (refuse to start)
        └── InvalidRequest       422  a value other than a policy document is unusable

Invalid documents raise ``dnsmesh.errors.PolicyError`` (422) with every offending field.
"""

from __future__ import annotations

from dnsmesh.errors import ControllerError, FieldError
from dnsmesh.safety import Violation


class StoreError(ControllerError):
    """The store refused an operation."""


class NotFound(StoreError):
    """The policy, slice or token does not exist."""


class AlreadyExists(StoreError):
    """The name is taken."""


class DomainConflict(StoreError):
    """Another policy already answers for the domain."""

    def __init__(self, message: str, fields: list[FieldError]) -> None:
        super().__init__(message)
        self.fields = fields


class LocalPolicyClash(StoreError):
    """A connected agent serves the name or domain from its own files (``?force`` writes)."""

    def __init__(self, message: str, fields: list[FieldError]) -> None:
        super().__init__(message)
        self.fields = fields


class SafetyRuleBroken(StoreError):
    """A drain, or a policy write with the drains in force, would leave a policy with less in
    service than its ``spec.safety`` asks."""

    def __init__(
        self, violation: Violation, action: str, hint: str = "drain with force to do it anyway"
    ) -> None:
        super().__init__(f"{action} would break a safety rule: {violation.message} ({hint})")
        self.violation = violation
        self.fields = [FieldError(f"spec.safety.{violation.rule}", violation.message)]


class Conflict(StoreError):
    """The operation does not fit what is stored (a rollout command without a rollout)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PreconditionFailed(StoreError):
    """If-Match does not match the current revision."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached or dropped the connection; nothing was changed."""


class CommitUnknown(DatabaseUnavailable):
    """The connection dropped while COMMIT was in flight: the write may or may not have
    landed, and only a re-read can tell. ``revision``: the one it would have (the last one,
    for a write of several), None when it took none.

    A kind of DatabaseUnavailable, so whatever treats an outage as "try later" (the agent
    recorder, the quorum monitor) still does; the API tells it apart (``commit_unknown``).
    """

    def __init__(self, message: str, revision: int | None) -> None:
        super().__init__(message)
        self.revision = revision


class SchemaNotCurrent(StoreError):
    """The database schema is not at the head migration."""


class InvalidRequest(StoreError):
    """A request value other than a policy document is unusable (a token name, a role)."""

    def __init__(self, message: str, fields: list[FieldError]) -> None:
        super().__init__(message)
        self.fields = fields
