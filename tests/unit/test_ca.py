"""controller/ca.py: the CA, serving certificates, CSR signing and the renewal rule."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller import ca
from dnsmesh.errors import ConfigError

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
NAMES = [ca.parse_san("localhost"), ca.parse_san("127.0.0.1"), ca.parse_san("::1")]


def _csr(key: ec.EllipticCurvePrivateKey | None = None) -> x509.CertificateSigningRequest:
    key = key or ca.new_key()
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_the_ca_is_a_p256_self_signed_ca_naming_its_trust_domain() -> None:
    made = ca.new_ca("example.org", NOW)
    cert = made.certificate
    assert isinstance(made.key.curve, ec.SECP256R1)
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.trust_domain_of(cert) == "example.org"
    assert cert.not_valid_after_utc - NOW == ca.CA_LIFETIME


def test_a_serving_certificate_names_exactly_what_was_asked_and_only_serves() -> None:
    made = ca.new_ca("example.org", NOW)
    serving = ca.issue_serving(made, [*NAMES, ca.parse_san("Ctl.Example.ORG.")], NOW)
    cert = serving.certificate
    cert.verify_directly_issued_by(made.certificate)
    assert set(ca.sans_of(cert)) == {*NAMES, x509.DNSName("ctl.example.org")}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - NOW == ca.SERVING_LIFETIME
    assert (
        ca.needs_renewal(cert, made.certificate, [*NAMES, x509.DNSName("ctl.example.org")], NOW)
        is None
    )


def test_renewal_is_asked_near_expiry_on_other_names_and_under_another_ca() -> None:
    made = ca.new_ca("example.org", NOW)
    cert = ca.issue_serving(made, NAMES, NOW).certificate
    late = NOW + ca.SERVING_LIFETIME - ca.RENEW_BEFORE + timedelta(seconds=1)
    assert ca.needs_renewal(cert, made.certificate, NAMES, late) is not None
    early = NOW + ca.SERVING_LIFETIME - ca.RENEW_BEFORE - timedelta(days=1)
    assert ca.needs_renewal(cert, made.certificate, NAMES, early) is None
    assert ca.needs_renewal(cert, made.certificate, NAMES[:2], NOW) == (
        "its names differ from the wanted ones"
    )
    other = ca.new_ca("example.org", NOW)  # same subject, another key
    assert ca.needs_renewal(cert, other.certificate, NAMES, NOW) == (
        "it was not issued by the current CA"
    )


def test_sign_csr_issues_an_svid_with_the_spiffe_id_only() -> None:
    made = ca.new_ca("example.org", NOW)
    key = ca.new_key()
    spiffe = ca.spiffe_id("example.org", "agent", "node-1")
    assert spiffe == "spiffe://example.org/agent/node-1"
    svid = ca.sign_csr(made, _csr(key), spiffe, timedelta(hours=1), NOW)
    svid.verify_directly_issued_by(made.certificate)
    assert svid.public_key().public_numbers() == key.public_key().public_numbers()
    sans = svid.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical  # the subject is empty, so the SAN must be critical (RFC 5280)
    assert list(sans.value) == [x509.UniformResourceIdentifier(spiffe)]
    assert svid.subject == x509.Name([])  # the CSR's CN=admin is ignored
    assert not svid.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert svid.not_valid_after_utc - NOW == timedelta(hours=1)
    usage = svid.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in list(usage)


@pytest.mark.parametrize(
    ("spiffe", "ttl", "message"),
    [
        ("spiffe://other.org/agent/n", timedelta(hours=1), "trust domain"),
        ("spiffe://example.org", timedelta(hours=1), "trust domain"),
        ("spiffe://example.org/agent/n", timedelta(0), "TTL"),
        ("spiffe://example.org/agent/n", ca.MAX_SVID_TTL + timedelta(seconds=1), "TTL"),
    ],
)
def test_sign_csr_refuses_ids_outside_the_domain_and_bad_ttls(
    spiffe: str, ttl: timedelta, message: str
) -> None:
    made = ca.new_ca("example.org", NOW)
    with pytest.raises(ValueError, match=message):
        ca.sign_csr(made, _csr(), spiffe, ttl, NOW)


def test_an_svid_never_outlives_its_ca() -> None:
    made = ca.new_ca("example.org", NOW)
    near_end = made.certificate.not_valid_after_utc - timedelta(hours=2)
    svid = ca.sign_csr(made, _csr(), "spiffe://example.org/a", timedelta(days=1), near_end)
    assert svid.not_valid_after_utc == made.certificate.not_valid_after_utc


def test_bad_names_and_trust_domains_are_refused() -> None:
    assert ca.parse_san("10.1.2.3") == x509.IPAddress(ipaddress.ip_address("10.1.2.3"))
    for bad in ("under_score.example", "-x.example", "a..b", "", "x" * 64 + ".org"):
        with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
            ca.parse_san(bad)
    for bad in ("Upper.org", "a/b", ".lead", "trail.", "a..b", ""):
        with pytest.raises(ConfigError, match="not a SPIFFE trust domain"):
            ca.check_trust_domain(bad)
    with pytest.raises(ValueError, match="segment"):
        ca.spiffe_id("example.org", "..")


def test_an_operator_key_must_match_its_certificate() -> None:
    made = ca.new_ca("example.org", NOW)
    assert ca.check_signing_pair(made.certificate, made.key) is made.key
    with pytest.raises(ConfigError, match="not the private key"):
        ca.check_signing_pair(made.certificate, ca.new_key())
    leaf = ca.issue_serving(made, NAMES, NOW)
    with pytest.raises(ConfigError, match="not a CA certificate"):
        ca.check_signing_pair(leaf.certificate, leaf.key)


def test_the_cli_default_trust_domain_is_the_ca_modules() -> None:
    from controller.cli import DEFAULT_TRUST_DOMAIN

    assert DEFAULT_TRUST_DOMAIN == ca.DEFAULT_TRUST_DOMAIN


def test_a_host_name_that_is_no_dns_name_is_left_out_not_fatal() -> None:
    from controller.tls_store import serving_names

    assert x509.DNSName("box-1") in serving_names([], host_name="box-1")
    names = serving_names(["ctl.example.org"], host_name="my_box")
    assert names == [*NAMES, x509.DNSName("ctl.example.org")]
    with pytest.raises(ConfigError, match="--tls-san 'my_box'"):
        serving_names(["my_box"], host_name="box-1")
