"""The controller as certificate authority: make a CA, issue serving certificates, sign CSRs.

Pure: every function takes the time it treats as now and returns objects; reading and
writing files is controller/tls_store.py. Keys are EC P-256 (small, fast, what every TLS
stack and SPIFFE implementation accepts). The CA certificate carries its trust domain as
the URI SAN ``spiffe://TRUST_DOMAIN`` (the SPIFFE X.509-SVID spec lets a signing
certificate do so), which is how a later start recognises which trust domain it was made
for. ``sign_csr`` is what the agent join flow calls: it issues an X.509-SVID
(one URI SAN, the SPIFFE ID; client and server auth) for a CSR whose key the agent keeps.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dnsmesh.errors import ConfigError

CA_LIFETIME = timedelta(days=3650)
SERVING_LIFETIME = timedelta(days=90)
RENEW_BEFORE = timedelta(days=30)  # a serving certificate is renewed with this much left
BACKDATE = timedelta(minutes=5)  # tolerate clocks a little behind the controller's
DEFAULT_TRUST_DOMAIN = "dnsmesh.internal"
MAX_SVID_TTL = timedelta(days=30)

# SPIFFE trust domain: lower-case letters, digits, '.', '-', '_' (SPIFFE-ID spec §2.1).
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")
_DNS_NAME_RE = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")

Name = x509.DNSName | x509.IPAddress


@dataclass(frozen=True, slots=True)
class Issued:
    """A private key and the certificate issued for it."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def check_trust_domain(value: str) -> str:
    if not _TRUST_DOMAIN_RE.match(value) or value.strip(".") != value or ".." in value:
        raise ConfigError(
            f"--trust-domain {value!r} is not a SPIFFE trust domain "
            "(lower-case letters, digits, '.', '-', '_'; e.g. dnsmesh.internal)"
        )
    return value


def spiffe_id(trust_domain: str, *segments: str) -> str:
    """``spiffe://TD/seg/seg``; segments are checked (no empty, '.', '..' or other characters)."""
    check_trust_domain(trust_domain)
    for segment in segments:
        if not _PATH_SEGMENT_RE.match(segment) or segment in (".", ".."):
            raise ValueError(f"{segment!r} is not a SPIFFE ID path segment")
    return "/".join([f"spiffe://{trust_domain}", *segments])


def parse_san(value: str) -> Name:
    """A ``--tls-san``: an IP address, else a DNS name (lower-cased)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.strip().lower().rstrip(".")
    if not _DNS_NAME_RE.match(name) or len(name) > 253:
        raise ConfigError(f"--tls-san {value!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def new_ca(trust_domain: str, now: datetime) -> Issued:
    """A self-signed CA for the trust domain, valid CA_LIFETIME, that signs only certificates."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dnsmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"dnsmesh CA {trust_domain}"),
        ]
    )
    builder = (
        _validity(x509.CertificateBuilder(), now, CA_LIFETIME)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(key, builder.sign(key, hashes.SHA256()))


def issue_serving(
    ca: Issued, names: Iterable[Name], now: datetime, lifetime: timedelta = SERVING_LIFETIME
) -> Issued:
    """A server certificate for the names (DNS and IP SANs), signed by the CA."""
    key = new_key()
    sans = sorted(set(names), key=_san_text)
    builder = (
        _leaf(ca, key.public_key(), now, lifetime)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dnsmesh controller")]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def sign_csr(
    ca: Issued, csr: x509.CertificateSigningRequest, spiffe: str, ttl: timedelta, now: datetime
) -> x509.Certificate:
    """An X.509-SVID for the CSR's key: the SPIFFE ID as its only SAN, client and server auth.

    The CSR's own subject and extensions are ignored (the caller decides the identity);
    its signature must be valid, the ID must be in the CA's trust domain (any, for an
    operator's CA that names none: the caller's ``--trust-domain``), and the TTL at
    most MAX_SVID_TTL and never past the CA's own expiry. It is backdated by a tenth of
    the TTL at most (BACKDATE for a day-long one), so that half of its validity, when the
    agent renews, stays close to half of the TTL even for the seconds-long ones of tests.
    """
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature is not valid")
    domain = trust_domain_of(ca.certificate)
    if not spiffe.startswith("spiffe://" if domain is None else f"spiffe://{domain}/"):
        raise ValueError(f"{spiffe!r} is not a workload ID in the trust domain {domain!r}")
    if not timedelta(0) < ttl <= MAX_SVID_TTL:
        raise ValueError(f"the TTL must be between 0 and {MAX_SVID_TTL}")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("the CSR's key must be an EC key")
    lifetime = min(ttl, ca.certificate.not_valid_after_utc - now)
    builder = (
        _leaf(ca, public_key, now, lifetime, backdate=min(BACKDATE, ttl / 10))
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
    )
    return builder.sign(ca.key, hashes.SHA256())


def trust_domain_of(ca_certificate: x509.Certificate) -> str | None:
    """The trust domain a CA made by ``new_ca`` names in its URI SAN (None if none)."""
    try:
        sans = ca_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    for uri in sans.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri.removeprefix("spiffe://").rstrip("/")
    return None


def needs_renewal(
    serving: x509.Certificate, ca: x509.Certificate, names: Iterable[Name], now: datetime
) -> str | None:
    """Why the serving certificate must be issued again, or None when it can stay."""
    if serving.issuer != ca.subject or not _signed_by(serving, ca):
        return "it was not issued by the current CA"
    if serving.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires at {serving.not_valid_after_utc.isoformat()}"
    if set(sans_of(serving)) != set(names):
        return "its names differ from the wanted ones"
    return None


def sans_of(certificate: x509.Certificate) -> list[Name]:
    try:
        ext = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [n for n in ext.value if isinstance(n, x509.DNSName | x509.IPAddress)]


def check_signing_pair(certificate: x509.Certificate, key: object) -> ec.EllipticCurvePrivateKey:
    """An operator's CA: a CA certificate that may sign certificates, and its EC private key."""
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("--ca-key must be an EC private key (e.g. P-256)")
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.public_numbers() != (
        key.public_key().public_numbers()
    ):
        raise ConfigError("--ca-key is not the private key of the first certificate in --ca-cert")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError("--ca-cert is not a CA certificate (basicConstraints CA:TRUE)")
    return key


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER, as colon-separated hex (what ``openssl x509 -fingerprint`` shows)."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def _validity(
    builder: x509.CertificateBuilder,
    now: datetime,
    lifetime: timedelta,
    backdate: timedelta = BACKDATE,
) -> x509.CertificateBuilder:
    return builder.not_valid_before(now - backdate).not_valid_after(now + lifetime)


def _leaf(
    ca: Issued,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta,
    backdate: timedelta = BACKDATE,
) -> x509.CertificateBuilder:
    return (
        _validity(x509.CertificateBuilder(), now, lifetime, backdate)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(ca.certificate)),
            critical=False,
        )
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _ec_public(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ConfigError("the CA certificate's key must be an EC key")
    return public


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _san_text(name: Name) -> str:
    return str(name.value)
