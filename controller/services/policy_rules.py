"""Pure rules of policy writes: the If-Match precondition, name checks and slice edits.

No database here: controller.services.policies applies these inside its transactions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.db.models import PolicyRow
from controller.errors import AlreadyExists, NotFound, PreconditionFailed
from dnsmesh.errors import FieldError, PolicyError
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.protocol import Document

# Edits a policy's slice list in place; returns the index of the slice it wrote (-1: none).
SliceEdit = Callable[[list[Any]], int]


@dataclass(frozen=True, slots=True)
class IfMatch:
    """An If-Match precondition: ``revisions`` None means ``*`` (any current version)."""

    revisions: frozenset[int] | None

    def holds(self, current: int | None) -> bool:
        if current is None:  # RFC 9110 §13.1.1: no current representation, If-Match fails
            return False
        return self.revisions is None or current in self.revisions


def check_precondition(name: str, row: PolicyRow | None, if_match: IfMatch | None) -> None:
    if if_match is None or if_match.holds(row.revision if row else None):
        return
    if row is None:
        raise PreconditionFailed(f"If-Match given but policy {name!r} does not exist")
    raise PreconditionFailed(
        f"policy {name!r} is at revision {row.revision}, not the one If-Match names"
    )


def content(document: Document) -> Document:
    """A stored document without its revision: what an operator wrote, as validated."""
    copied = copy.deepcopy(document)
    copied.get("metadata", {}).pop("revision", None)
    return copied


def same_content(stored: Document, wanted: Document) -> bool:
    """Whether a stored document holds ``wanted`` (a document without its revision): the
    same as ``content(stored) == wanted`` without the deep copy, which was most of the cost
    of checking 1,000 unchanged policies of a set."""
    metadata = stored.get("metadata")
    if not isinstance(metadata, dict) or "revision" not in metadata:
        return stored == wanted
    bare = {key: value for key, value in metadata.items() if key != "revision"}
    return {**stored, "metadata": bare} == wanted


def slice_at(document: Document, index: int) -> Document:
    slices: list[Document] = document["spec"].get("slices", [])
    return slices[index] if 0 <= index < len(slices) else {}


def parse_named(document: object, name: str) -> Policy:
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


def append_slice(name: str, slice_doc: object) -> SliceEdit:
    """Appends a slice (slices match in order, so a new one goes last)."""
    slice_id = slice_doc.get("id") if isinstance(slice_doc, dict) else None

    def edit(slices: list[Any]) -> int:
        if slice_id is not None and any(s.get("id") == slice_id for s in slices):
            raise AlreadyExists(f"policy {name!r} already has a slice {slice_id!r}")
        slices.append(slice_doc)
        return len(slices) - 1

    return edit


@dataclass(slots=True)
class PutSlice:
    """Replaces slice ``slice_id`` in place, or appends it (``created``); ids must match."""

    slice_id: str
    body: object
    created: bool = False

    def __call__(self, slices: list[Any]) -> int:
        body = self.body
        if isinstance(body, dict) and body.get("id") != self.slice_id:
            index = next(
                (i for i, s in enumerate(slices) if s.get("id") == self.slice_id), len(slices)
            )
            raise PolicyError(
                [
                    FieldError(
                        f"spec.slices[{index}].id",
                        f"the slice id must match the path ({self.slice_id!r})",
                    )
                ]
            )
        for index, existing in enumerate(slices):
            if existing.get("id") == self.slice_id:
                slices[index] = body
                return index
        self.created = True
        slices.append(body)
        return len(slices) - 1


def put_slice(slice_id: str, slice_doc: object) -> PutSlice:
    body = slice_doc
    if isinstance(body, dict) and "id" not in body:
        body = {"id": slice_id, **body}
    return PutSlice(slice_id, body)


def remove_slice(name: str, slice_id: str) -> SliceEdit:
    def edit(slices: list[Any]) -> int:
        for index, existing in enumerate(slices):
            if existing.get("id") == slice_id:
                del slices[index]
                return -1
        raise NotFound(f"policy {name!r} has no slice {slice_id!r}")

    return edit
