"""The ``policies`` table: find, list, add and delete policy rows (no transactions here)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Select, Text, cast, delete, select
from sqlalchemy.orm import Session

from controller.db.models import PolicyRow
from controller.errors import NotFound
from dnsmesh.protocol import Document

T = TypeVar("T")
K = TypeVar("K", str, int)


def find_policy(session: Session, name: str) -> PolicyRow | None:
    return session.scalars(select(PolicyRow).where(PolicyRow.name == name)).one_or_none()


def require_policy(session: Session, name: str) -> PolicyRow:
    row = find_policy(session, name)
    if row is None:
        raise NotFound(f"policy {name!r} does not exist")
    return row


# Names and domains go into IN (...) lists of at most this many: far under SQLite's 32,766
# bound parameters and PostgreSQL's 65,535, and one round trip for a set of 1,000.
_CHUNK = 1000


def find_policies(session: Session, names: Iterable[str]) -> dict[str, PolicyRow]:
    """The rows of every policy named in ``names`` that exists, by name."""
    found: dict[str, PolicyRow] = {}
    for chunk in _chunks(sorted(set(names))):
        for row in session.scalars(select(PolicyRow).where(PolicyRow.name.in_(chunk))):
            found[row.name] = row
    return found


def domain_owners(session: Session, domains: Iterable[str]) -> dict[str, str]:
    """The name of the policy that has each of ``domains`` (those that any policy has)."""
    owners: dict[str, str] = {}
    for chunk in _chunks(sorted(set(domains))):
        query = select(PolicyRow.domain, PolicyRow.name).where(PolicyRow.domain.in_(chunk))
        owners.update({domain: name for domain, name in session.execute(query)})
    return owners


def delete_policy_rows(session: Session, rows: Iterable[PolicyRow]) -> None:
    ids = [row.id for row in rows]
    for chunk in _chunks(ids):
        session.execute(delete(PolicyRow).where(PolicyRow.id.in_(chunk)))


def _chunks(values: list[K]) -> Iterator[list[K]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def domain_owner(session: Session, domain: str, *, other_than: str) -> str | None:
    """The name of the policy other than ``other_than`` whose domain is ``domain``."""
    return session.scalar(
        select(PolicyRow.name).where(PolicyRow.domain == domain, PolicyRow.name != other_than)
    )


def policy_rows(session: Session, labels: Mapping[str, str] | None) -> list[PolicyRow]:
    return list(session.scalars(_labelled(select(PolicyRow), labels)))


def policy_documents(session: Session, labels: Mapping[str, str] | None) -> list[Document]:
    return list(session.scalars(_labelled(select(PolicyRow.document), labels)))


def policy_documents_json(session: Session, labels: Mapping[str, str] | None) -> bytes:
    """The documents as one JSON array, from the stored JSON text (no decode and encode)."""
    query = _labelled(select(cast(PolicyRow.document, Text)), labels)
    return b"[" + ",".join(session.scalars(query)).encode() + b"]"


def policy_endpoints(session: Session) -> list[tuple[str, Document]]:
    """Every policy's name and document (for the endpoints each one names)."""
    return [
        (name, doc) for name, doc in session.execute(select(PolicyRow.name, PolicyRow.document))
    ]


def save_policy(
    session: Session,
    row: PolicyRow | None,
    *,
    name: str,
    domain: str,
    revision: int,
    labels: dict[str, str],
    document: Document,
    at: datetime,
) -> PolicyRow:
    """Writes the policy's columns into ``row``, or into a new row when it is None."""
    if row is None:
        row = PolicyRow(name=name, created_at=at)
        session.add(row)
    row.domain = domain
    row.revision = revision
    row.labels = labels
    row.document = document
    row.updated_at = at
    return row  # flushed with the change and audit rows (one flush for a set of many)


def delete_policy_row(session: Session, row: PolicyRow) -> None:
    session.execute(delete(PolicyRow).where(PolicyRow.id == row.id))


def _labelled(query: Select[T], labels: Mapping[str, str] | None) -> Select[T]:
    """Policies by name whose labels include every pair in ``labels``."""
    for key, value in (labels or {}).items():
        query = query.where(PolicyRow.labels[key].as_string() == value)
    return query.order_by(PolicyRow.name)
