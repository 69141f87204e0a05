"""How the controller knows its agents: by certificate (mTLS), else by bearer token.

One ``AgentTrust`` per app (controller/api/app.py), shared by the routes and the push hub:
the registry of issued certificates, the issuer (None without ``--tls``: then agents use
tokens), whether agents *must* present a certificate (``--require-agent-mtls``), and the
refusal counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from controller import ca
from controller.agent_certs import (
    DEFAULT_AGENT_CERT_TTL,
    CertificateIssuer,
    CertificateRegistry,
    IdentityRefused,
)
from controller.db.session import Database
from controller.identity import AgentIdentity, NotAnAgent, identity_of_pem
from controller.identity_refusals import IdentityRefusals, Refusal


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """``dnsmesh controller --tls`` flags: the CA that signs, and what agents must show."""

    signer: ca.Issued
    bundle: str  # the PEM clients trust, returned with every certificate issued
    trust_domain: str = ca.DEFAULT_TRUST_DOMAIN  # --trust-domain (an operator's CA names none)
    cert_ttl: timedelta = DEFAULT_AGENT_CERT_TTL
    require_mtls: bool = True


@dataclass(slots=True)
class AgentTrust:
    registry: CertificateRegistry
    issuer: CertificateIssuer | None = None
    bundle: str = ""
    require_mtls: bool = False
    refusals: IdentityRefusals = field(default_factory=IdentityRefusals)

    @classmethod
    def build(
        cls, db: Database, settings: TrustSettings | None, refusals: IdentityRefusals | None
    ) -> AgentTrust:
        counts = refusals or IdentityRefusals()
        if settings is None:
            return cls(CertificateRegistry(db), refusals=counts)
        issuer = CertificateIssuer(
            db, settings.signer, trust_domain=settings.trust_domain, ttl=settings.cert_ttl
        )
        return cls(
            CertificateRegistry(db),
            issuer,
            settings.bundle,
            settings.require_mtls,
            counts,
        )

    @property
    def trust_domain(self) -> str | None:
        return None if self.issuer is None else self.issuer.trust_domain

    def identify(self, pem: str, source: str) -> AgentIdentity:
        """The agent a verified client certificate names (blocking: reads the registry).

        IdentityRefused, noted, when it names none or was not issued here or was revoked.
        """
        domain = self.trust_domain
        try:
            if domain is None:
                raise NotAnAgent("this controller issues no agent certificates")
            identity = identity_of_pem(pem, domain)
        except NotAnAgent as error:
            self.refusals.note(Refusal.NOT_AN_AGENT, str(error), source=source)
            raise IdentityRefused(Refusal.NOT_AN_AGENT, str(error)) from None
        try:
            self.registry.check(identity)
        except IdentityRefused as refused:
            self.refusals.note(refused.reason, str(refused), node=identity.node_name, source=source)
            raise
        return identity
