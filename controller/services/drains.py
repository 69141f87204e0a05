"""Drains: an operator takes an endpoint out of service, and the safety rules guard it.

``drain`` is one transaction that bumps the revision, writes the drain row, appends a
change-log row of operation ``drain`` carrying the whole new set of drains (so the feed
pushes it like the down set) and an audit row. Before it writes, every policy the drain
touches is checked against its safety rules (dnsmesh.safety) with the drains already in
force and the quorum's down set counted as out of service; a drain that would break one is
refused (SafetyRuleBroken, 409 naming the rule and the policy) unless forced, and the
refusal is audited in a transaction of its own (no revision). ``undrain`` removes one;
``expire`` removes those whose ``until`` has passed (the controller's clock), each expiry a
revision of its own with actor ``drain-expiry``. Expired rows are left out of every read
at once, before their revision commits.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from controller.db.models import DrainRow
from controller.db.session import Database, iso
from controller.errors import InvalidRequest, NotFound, SafetyRuleBroken
from controller.repositories import drains as repo
from controller.repositories.health import read_down
from controller.repositories.history import DRAIN, append_audit, append_change
from controller.repositories.revision import bump_revision
from controller.services.parsed_policies import ParsedPolicies
from dnsmesh import safety
from dnsmesh.drains import Drained, DrainSet
from dnsmesh.errors import FieldError
from dnsmesh.policy import Policy

EXPIRY_ACTOR = "drain-expiry"
MAX_DRAIN_S = 366 * 86400.0  # a drain for longer than a year is a policy edit


@dataclass(frozen=True, slots=True)
class DrainResult:
    revision: int | None  # None: nothing changed (the same drain again)
    drain: dict[str, Any]
    violations: list[safety.Violation]  # broken rules a forced drain went past


def canonical_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidRequest(
            f"{value!r} is not an IPv4 or IPv6 address",
            [FieldError("address", "not an IPv4 or IPv6 address")],
        ) from None


def drain_json(row: DrainRow) -> dict[str, Any]:
    return {
        "address": row.address,
        "policy": row.policy_name or None,
        "revision": row.revision,
        "drained_at": iso(row.created_at),
        "drained_by": row.created_by,
        "until": iso(row.until) if row.until is not None else None,
        "forced": row.forced,
    }


def _document(drains: DrainSet) -> dict[str, Any]:
    return {"drained": [{"address": d.address, "policy": d.policy} for d in sorted(drains.entries)]}


class DrainService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._policies = ParsedPolicies()

    # -- reads -----------------------------------------------------------------------------

    def drains(self) -> list[DrainRow]:
        """The drains in force now."""
        return self.db.read(lambda session: repo.live(repo.drain_rows(session), self.db.clock()))

    # -- writes ----------------------------------------------------------------------------

    def drain(
        self,
        address: str,
        *,
        actor: str,
        policy: str | None = None,
        duration_s: float | None = None,
        force: bool = False,
    ) -> DrainResult:
        """Drains ``address`` in ``policy`` (None: every policy that has it), for
        ``duration_s`` seconds (None: until undrained)."""
        address = canonical_address(address)
        if duration_s is not None and not 0 < duration_s <= MAX_DRAIN_S:
            raise InvalidRequest(
                "a drain lasts more than 0 s and at most 366 days",
                [FieldError("for", "must be more than 0 s and at most 366 days")],
            )
        refused: list[safety.Violation] = []
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            now = self.db.clock()
            rows = repo.drain_rows(session)
            live = repo.live(rows, now)
            affected = self._affected(session, address, policy)
            until = now + timedelta(seconds=duration_s) if duration_s is not None else None
            existing = repo.find_drain(session, address, policy)
            if existing is not None and existing not in live:
                existing = None  # expired: removed below with the other expired ones
            if existing is not None and existing.until is None and until is None:
                transaction.discard()
                return DrainResult(None, drain_json(existing), [])
            others = [r for r in live if r is not existing]
            after = DrainSet([*repo.as_set(others).entries, Drained(address, policy)])
            down = frozenset(read_down(session))
            violations = [
                v for p in affected if (v := safety.check(p, after.of(p.name) | down)) is not None
            ]
            if violations and not force:
                transaction.discard()
                refused = violations
            else:
                before = repo.as_set(live)
                repo.delete_drains(session, [r for r in rows if r not in live])
                row = existing or DrainRow(address=address, policy_name=policy or repo.EVERY_POLICY)
                row.revision, row.created_at, row.created_by = revision, now, actor
                row.until, row.forced = until, bool(violations)
                if existing is None:
                    session.add(row)
                extra = {"forced_past": [v.message for v in violations]} if violations else {}
                self._log(session, revision, "endpoint.drain", address, actor, before, after, extra)
                written = drain_json(row)
        if refused:
            # In a transaction of its own, once the refused one has let go of the write lock.
            self._audit_refusal(address, policy, actor, refused)
            raise SafetyRuleBroken(refused[0], f"draining {address}")
        return DrainResult(revision, written, violations)

    def undrain(self, address: str, *, actor: str, policy: str | None = None) -> int:
        """Removes the drain of ``address`` in ``policy``; returns the revision."""
        address = canonical_address(address)
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            rows = repo.drain_rows(session)
            live = repo.live(rows, self.db.clock())
            existing = repo.find_drain(session, address, policy)
            if existing is None or existing not in live:
                where = f"in policy {policy!r}" if policy else "in every policy"
                raise NotFound(f"{address} is not drained {where}")
            before = repo.as_set(live)
            repo.delete_drains(session, [r for r in rows if r not in live or r is existing])
            after = repo.as_set([r for r in live if r is not existing])
            self._log(session, revision, "endpoint.undrain", address, actor, before, after, {})
            return revision

    def expire(self) -> int | None:
        """Removes the drains whose time is up; the revision, or None when none was."""
        now = self.db.clock()
        rows = self.db.read(repo.drain_rows)
        if len(repo.live(rows, now)) == len(rows):
            return None  # the common case: a read, no lock
        with self.db.writing() as transaction:
            session = transaction.session
            revision = bump_revision(session)
            rows = repo.drain_rows(session)  # again under the lock: a replica may have done it
            live = repo.live(rows, now)
            expired = [r for r in rows if r not in live]
            if not expired:
                transaction.discard()
                return None
            repo.delete_drains(session, expired)
            before, after = repo.as_set(rows), repo.as_set(live)
            target = ",".join(sorted({r.address for r in expired}))[:127]
            self._log(
                session, revision, "endpoint.undrain", target, EXPIRY_ACTOR, before, after, {}
            )
            return revision

    # -- internals -------------------------------------------------------------------------

    def _affected(self, session: Session, address: str, policy: str | None) -> list[Policy]:
        """The policies the drain takes ``address`` out of (it must be an endpoint there)."""
        policies = self._policies.read(session)
        if policy is not None:
            named = [p for p in policies if p.name == policy]
            if not named:
                raise NotFound(f"policy {policy!r} does not exist")
            policies = named
        having = [p for p in policies if address in {str(e.address) for e in p.spec.endpoints}]
        if not having:
            where = f"policy {policy!r}" if policy else "any policy"
            raise InvalidRequest(
                f"{address} is not an endpoint of {where}",
                [FieldError("address", f"not an endpoint of {where}")],
            )
        return having

    def _log(
        self,
        session: Session,
        revision: int,
        operation: str,
        target: str,
        actor: str,
        before: DrainSet,
        after: DrainSet,
        extra: dict[str, Any],
    ) -> None:
        now = self.db.clock()
        append_change(session, revision, "", DRAIN, _document(after), now)
        append_audit(
            session,
            at=now,
            actor=actor,
            operation=operation,
            target=target,
            revision=revision,
            before=_document(before),
            after={**_document(after), **extra},
        )
        session.flush()

    def _audit_refusal(
        self, address: str, policy: str | None, actor: str, violations: list[safety.Violation]
    ) -> None:
        def work(session: Session) -> None:
            append_audit(
                session,
                at=self.db.clock(),
                actor=actor,
                operation="endpoint.drain_refused",
                target=address,
                revision=None,
                before=None,
                after={
                    "address": address,
                    "policy": policy,
                    "refused": [
                        {"rule": v.rule, "policy": v.policy, "message": v.message}
                        for v in violations
                    ],
                },
            )

        self.db.write(work)
