"""The agent's certificate identity in its state folder: ``identity.pem`` (mode 0600).

The file holds the agent's EC P-256 private key (made here; it never leaves the node) and
the X.509-SVID the controller issued for it (``spiffe://TRUST_DOMAIN/agent/NODE``), in one
file replaced in one rename (agent/sync/state_file.py ``write_atomically``), so a crash
never leaves a key beside another key's certificate. ``ssl.SSLContext.load_cert_chain``
reads both from it.

Pure apart from the file: making a key and a CSR, reading which node and which period a
certificate names, and when to renew it (at half its validity).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.sync.config import IDENTITY_FILE
from agent.sync.state_file import write_atomically
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields

log = logging.getLogger(__name__)

_AGENT_PATH = "/agent/"


@dataclass(frozen=True, slots=True)
class Identity:
    """A key and its certificate, as stored."""

    path: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def spiffe_id(self) -> str:
        return spiffe_of(self.certificate)

    @property
    def node_name(self) -> str:
        return self.spiffe_id.rpartition(_AGENT_PATH)[2]

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def renew_at(self) -> datetime:
        """Half way through its validity (what SPIRE agents do too)."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after

    def client_context(self, ca_file: Path | None) -> ssl.SSLContext:
        """A verifying client context that presents this certificate."""
        context = (
            ssl.create_default_context()
            if ca_file is None
            else ssl.create_default_context(cafile=str(ca_file))
        )
        context.load_cert_chain(str(self.path))
        return context


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(key: ec.EllipticCurvePrivateKey, node_name: str) -> str:
    """A CSR for the key; the controller decides the identity, the CN is a hint only."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, node_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def spiffe_of(certificate: x509.Certificate) -> str:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ""
    uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 and _AGENT_PATH in uris[0] else ""


class IdentityFile:
    """``STATE_DIR/identity.pem``: loaded at start, replaced on join and on each renewal."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / IDENTITY_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> Identity | None:
        """The stored identity, None if there is none; ConfigError if it is damaged."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the agent identity {self.path}: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(raw, password=None)
            certificates = x509.load_pem_x509_certificates(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{self.path} is not an agent identity (a key and its certificate): {exc}; "
                "move it away and join again with a new join token"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not spiffe_of(certificates[0]):
            raise ConfigError(f"{self.path} holds no EC key with an agent certificate")
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("sync.identity_readable", extra=fields(file=str(self.path), mode=oct(mode)))
        return Identity(self.path, key, certificates[0])

    def store(self, key: ec.EllipticCurvePrivateKey, certificate_pem: str) -> Identity:
        """Replace the identity (0600, one rename); ConfigError for a certificate of
        another key (a controller answer that does not fit what was asked)."""
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        public = certificate.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or (
            public.public_numbers() != key.public_key().public_numbers()
        ):
            raise ConfigError("the controller issued a certificate for another key")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        write_atomically(self.path, key_pem + cert_pem)  # 0600 from its first byte
        return Identity(self.path, key, certificate)
