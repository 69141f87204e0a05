"""The exception tree: every error dnsmesh raises on purpose derives from DnsmeshError.

    DnsmeshError
    ├── PolicyError          a policy (or a set of them) does not validate
    │   └── PolicyFileError  ... and it came from a file: names the file and document
    ├── ConfigError          a command-line or configuration value is unusable
    ├── UpstreamError        forwarding to upstream resolvers failed
    │   └── UpstreamTimeout  ... because none answered in time
    └── ControllerError      the controller API refused a request or was unreachable

Errors from libraries are converted to these once, at the edge
(``raise UpstreamTimeout(...) from exc``), so callers catch one tree.
"""

from __future__ import annotations

from dataclasses import dataclass


class DnsmeshError(Exception):
    """A dnsmesh operation failed."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One offending field: a dotted path such as ``spec.endpoints[1].weight``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyError(DnsmeshError):
    """A policy does not validate; ``errors`` names every offending field."""

    def __init__(self, errors: list[FieldError], *, policy: str | None = None) -> None:
        self.errors = errors
        self.policy = policy
        where = f"policy {policy!r}: " if policy else ""
        super().__init__(where + "; ".join(str(e) for e in errors))


class PolicyFileError(PolicyError):
    """A policy file (or one document in it) does not parse or validate."""

    def __init__(
        self, source: str, errors: list[FieldError], *, document: int | None = None
    ) -> None:
        self.source = source
        self.document = document
        super().__init__(errors)
        where = source if document is None else f"{source} (document {document})"
        self.args = (f"{where}: " + "; ".join(str(e) for e in errors),)


class ConfigError(DnsmeshError):
    """A command-line or configuration value is unusable."""


class UpstreamError(DnsmeshError):
    """Forwarding a query to the upstream resolvers failed."""


class UpstreamTimeout(UpstreamError):
    """No upstream resolver answered in time."""


class ControllerError(DnsmeshError):
    """The controller refused a request or could not be reached."""
