"""The certificates issued to agents: issuing them (join, renewal), and revoking them.

Every X.509-SVID the controller signs for an agent is recorded in ``agent_certificates``
(serial, node, expiry) in the transaction that issues it, so every replica knows it. A
client certificate is taken as an agent's identity only when it is recorded here and not
revoked: the CA's signature says the mesh made it, the record says it is still wanted.

* **Join** (``POST /v1/join``): a one-time join token (controller/join_tokens.py) and a
  CSR; the token is spent and the certificate recorded in one transaction.
* **Renewal** (``POST /v1/renew``): the agent's current, unrevoked certificate vouches for
  a new one of the same node. Renewal and revocation both lock the ``mesh_state`` row
  first, so a renewal racing a revocation either ends before it (and the new certificate
  is revoked with the others) or sees the revocation and is refused.
* **Revocation** (``dnsmesh ca revoke NODE``): every certificate of the node not yet
  revoked is marked so; replicas drop the node's open stream at their next catch-up round
  (at once on PostgreSQL: the revocation sends the same NOTIFY a commit does). The node
  can join again only with a new join token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from controller import ca
from controller.db.models import AgentCertificateRow, StateRow
from controller.db.session import Database, as_utc, iso
from controller.errors import InvalidRequest, NotFound
from controller.identity import AgentIdentity, agent_spiffe_id, serial_hex
from controller.identity_refusals import Refusal
from controller.join_tokens import JoinRefused, JoinTokens, check_join_node
from controller.notify import CHANNEL
from controller.repositories.history import append_audit
from controller.repositories.revision import current_mesh_id, current_revision
from dnsmesh.errors import FieldError

DEFAULT_AGENT_CERT_TTL = timedelta(hours=24)
MAX_CSR = 16 * 1024  # a P-256 CSR is under 1 KiB


class Standing(Enum):
    GOOD = "good"
    UNKNOWN = "unknown"  # signed by the CA, not issued by this controller (or forgotten)
    REVOKED = "revoked"


class IdentityRefused(Exception):
    """A certificate that may not act as an agent (why, as a Refusal)."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Issuance:
    node_name: str
    spiffe_id: str
    certificate: x509.Certificate
    mesh_id: str

    def to_json(self, bundle: str) -> dict[str, str]:
        return {
            "node_name": self.node_name,
            "spiffe_id": self.spiffe_id,
            "certificate": ca.pem(self.certificate).decode(),
            "ca_bundle": bundle,
            "not_after": iso(self.certificate.not_valid_after_utc),
            "mesh_id": self.mesh_id,
        }


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    serial: str
    node_name: str
    issued_at: str
    not_after: str
    issued_by: str
    revoked_at: str | None


def parse_csr(value: object) -> x509.CertificateSigningRequest:
    """A PEM CSR with a valid signature over an EC key, else 422 naming ``csr``."""

    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest("not a usable certificate signing request", [FieldError("csr", why)])

    if not isinstance(value, str) or not value.strip() or len(value) > MAX_CSR:
        raise refuse(f"a PEM certificate signing request (at most {MAX_CSR} characters)")
    try:
        csr = x509.load_pem_x509_csr(value.encode("ascii", "replace"))
    except ValueError as error:
        raise refuse(f"not a PEM certificate signing request: {error}") from None
    if not csr.is_signature_valid:
        raise refuse("its signature does not verify: it was not made with its key")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise refuse("its key must be an EC key (P-256)")
    return csr


class CertificateRegistry:
    """What every replica knows of agent certificates (the database's table)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def standing(self, serial: str) -> Standing:
        def work(session: Session) -> Standing:
            row = session.get(AgentCertificateRow, serial)
            if row is None:
                return Standing.UNKNOWN
            return Standing.GOOD if row.revoked_at is None else Standing.REVOKED

        return self.db.read(work)

    def check(self, identity: AgentIdentity) -> None:
        """IdentityRefused unless the certificate was issued here and is not revoked."""
        standing = self.standing(identity.serial)
        if standing is Standing.REVOKED:
            raise IdentityRefused(
                Refusal.REVOKED,
                f"the certificate of node {identity.node_name!r} was revoked "
                "(dnsmesh ca revoke); join again with a new join token",
            )
        if standing is Standing.UNKNOWN:
            raise IdentityRefused(
                Refusal.UNKNOWN_CERTIFICATE,
                f"the certificate (serial {identity.serial}) was not issued by this controller",
            )

    def revoked_among(self, serials: Iterable[str]) -> set[str]:
        wanted = sorted(set(serials))
        if not wanted:
            return set()

        def work(session: Session) -> set[str]:
            return set(
                session.scalars(
                    select(AgentCertificateRow.serial).where(
                        AgentCertificateRow.serial.in_(wanted),
                        AgentCertificateRow.revoked_at.is_not(None),
                    )
                )
            )

        return self.db.read(work)

    def list(self, node: str | None = None) -> list[IssuedCertificate]:
        def work(session: Session) -> list[IssuedCertificate]:
            query = select(AgentCertificateRow).order_by(
                AgentCertificateRow.node_name, AgentCertificateRow.issued_at
            )
            if node is not None:
                query = query.where(AgentCertificateRow.node_name == node)
            return [
                IssuedCertificate(
                    row.serial,
                    row.node_name,
                    iso(row.issued_at),
                    iso(row.not_after),
                    row.issued_by,
                    None if row.revoked_at is None else iso(row.revoked_at),
                )
                for row in session.scalars(query)
            ]

        return self.db.read(work)

    def revoke(self, node: str, *, actor: str) -> int:
        """Revokes every certificate of ``node`` not revoked yet; returns how many.

        NotFound when the node never had a certificate."""

        def work(session: Session) -> int:
            _lock_mesh(session)
            now = self.db.clock()
            serials = list(
                session.scalars(
                    select(AgentCertificateRow.serial).where(AgentCertificateRow.node_name == node)
                )
            )
            if not serials:
                raise NotFound(f"no certificate was ever issued to node {node!r}")
            revoked = list(
                session.scalars(
                    update(AgentCertificateRow)
                    .where(
                        AgentCertificateRow.node_name == node,
                        AgentCertificateRow.revoked_at.is_(None),
                    )
                    .values(revoked_at=now, revoked_by=actor)
                    .returning(AgentCertificateRow.serial)
                )
            )
            append_audit(
                session,
                at=now,
                actor=actor,
                operation="agent.revoke",
                target=f"agent/{node}",
                revision=None,
                before=None,
                after={"node": node, "revoked": sorted(revoked)},
            )
            if session.get_bind().dialect.name == "postgresql":
                # Wake every replica's hub now (it drops the node's stream), as a commit does.
                revision = current_revision(session)
                session.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": CHANNEL, "payload": str(revision)},
                )
            return len(revoked)

        return self.db.write(work)


class CertificateIssuer:
    """Signs agent certificates with the mesh CA: on join, and on renewal."""

    def __init__(
        self,
        db: Database,
        signer: ca.Issued,
        *,
        trust_domain: str,
        ttl: timedelta = DEFAULT_AGENT_CERT_TTL,
    ) -> None:
        # Our own CA names its trust domain; an operator's may not: --trust-domain then.
        domain = ca.trust_domain_of(signer.certificate) or trust_domain
        self.db = db
        self.signer = signer
        self.trust_domain = domain
        self.ttl = ttl
        self.tokens = JoinTokens(db)

    def join(self, secret: str, node: object, csr: x509.CertificateSigningRequest) -> Issuance:
        """Spends the join token and issues a certificate for ``node``; JoinRefused."""
        node_name = check_join_node(node, "node_name")

        def work(session: Session) -> Issuance:
            spent = self.tokens.spend(session, secret, node_name)
            return self._issue(session, node_name, csr, issued_by=spent.name, operation="join")

        return self.db.write(work)

    def renew(self, identity: AgentIdentity, csr: x509.CertificateSigningRequest) -> Issuance:
        """A new certificate for the node of a good certificate; IdentityRefused."""

        def work(session: Session) -> Issuance:
            _lock_mesh(session)  # after a revocation that committed, or before it begins
            row = session.get(AgentCertificateRow, identity.serial)
            if row is None or row.node_name != identity.node_name:
                raise IdentityRefused(
                    Refusal.UNKNOWN_CERTIFICATE,
                    f"the certificate (serial {identity.serial}) was not issued by this controller",
                )
            if row.revoked_at is not None:
                raise IdentityRefused(
                    Refusal.REVOKED, f"the certificate of node {identity.node_name!r} was revoked"
                )
            return self._issue(session, identity.node_name, csr, issued_by="renew", operation="")

        return self.db.write(work)

    def _issue(
        self,
        session: Session,
        node_name: str,
        csr: x509.CertificateSigningRequest,
        *,
        issued_by: str,
        operation: str,
    ) -> Issuance:
        now = self.db.clock()
        spiffe = agent_spiffe_id(self.trust_domain, node_name)
        certificate = ca.sign_csr(self.signer, csr, spiffe, self.ttl, now)
        session.add(
            AgentCertificateRow(
                serial=serial_hex(certificate),
                node_name=node_name,
                spiffe_id=spiffe,
                issued_at=now,
                not_after=certificate.not_valid_after_utc,
                issued_by=issued_by,
            )
        )
        if operation:  # a join is audited; renewals (every 12 h per agent) are only logged
            append_audit(
                session,
                at=now,
                actor=issued_by,
                operation=f"agent.{operation}",
                target=f"agent/{node_name}",
                revision=None,
                before=None,
                after={
                    "node": node_name,
                    "serial": serial_hex(certificate),
                    "not_after": iso(as_utc(certificate.not_valid_after_utc)),
                },
            )
        session.flush()
        return Issuance(node_name, spiffe, certificate, current_mesh_id(session))


def _lock_mesh(session: Session) -> None:
    """The mesh_state row lock (every revision-bumping write takes it too)."""
    session.execute(select(StateRow.id).where(StateRow.id == 1).with_for_update())


__all__ = [
    "CertificateIssuer",
    "CertificateRegistry",
    "IdentityRefused",
    "Issuance",
    "JoinRefused",
    "Standing",
    "parse_csr",
]
