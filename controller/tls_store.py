"""The controller's TLS files in its data folder: the CA, the CA bundle, the serving certificate.

``DATA_DIR/tls/`` (mode 0700) holds

    ca.pem, ca-key.pem   the CA the controller made on its first ``--tls`` start (the key 0600);
                         absent when the operator gives ``--ca-cert/--ca-key``
    ca-bundle.pem        what clients trust (``--ca-file``, ``dnsmesh ca export``, GET /v1/ca):
                         the CA certificate, or every certificate of the operator's --ca-cert
                         (an intermediate and the root it chains to)
    server.pem           the serving certificate followed by the CA chain (what TLS sends)
    server-key.pem       its key (0600)

On a later start the CA is reused and the serving certificate kept unless it nears expiry,
its names changed, or another CA now signs (controller/ca.py ``needs_renewal``). Files are
written to a temporary name and renamed, so a crash never leaves half a key.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller import ca
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.controller.tls")

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
BUNDLE = "ca-bundle.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: Path  # the serving certificate and its chain
    key_file: Path
    bundle_file: Path  # what clients trust
    signer: ca.Issued  # the CA (ours or the operator's) that signs agent certificates too

    def bundle(self) -> str:
        return self.bundle_file.read_text()


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def serving_names(extra: list[str], host_name: str | None = None) -> list[ca.Name]:
    """localhost, 127.0.0.1, ::1, this host's name, and every --tls-san.

    A host name that is no DNS name (``my_box``) is left out with a warning rather than
    stop the controller; a bad --tls-san is the operator's to fix and is refused.
    """
    names = [ca.parse_san(name) for name in ("localhost", "127.0.0.1", "::1", *extra)]
    host = socket.gethostname() if host_name is None else host_name
    try:
        names.append(ca.parse_san(host))
    except ConfigError:
        log.warning("tls.host_name_left_out", extra=fields(host_name=host))
    return names


def ensure_tls(
    data_dir: Path,
    *,
    sans: list[str],
    trust_domain: str = ca.DEFAULT_TRUST_DOMAIN,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    now: datetime | None = None,
) -> TlsFiles:
    """The TLS files for serving, made or renewed as needed (see the module docstring)."""
    ca.check_trust_domain(trust_domain)
    if (ca_cert is None) != (ca_key is None):
        raise ConfigError("--ca-cert and --ca-key go together")
    names = serving_names(sans)  # a bad --tls-san fails before anything is written
    moment = now or datetime.now(UTC)
    folder = tls_dir(data_dir)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the TLS folder {folder}: {exc}") from exc
    if ca_cert is not None and ca_key is not None:
        signer, chain = _operator_ca(ca_cert, ca_key)
    else:
        signer = _own_ca(folder, trust_domain, moment)
        chain = [signer.certificate]
    bundle = b"".join(ca.pem(c) for c in chain)
    if _read_bytes(folder / BUNDLE) != bundle:
        _write(folder / BUNDLE, bundle, 0o644)
    _ensure_serving(folder, signer, chain, names, moment)
    return TlsFiles(folder / SERVER_CERT, folder / SERVER_KEY, folder / BUNDLE, signer)


def _own_ca(folder: Path, trust_domain: str, now: datetime) -> ca.Issued:
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if not cert_path.exists() and not key_path.exists():
        made = ca.new_ca(trust_domain, now)
        _write(key_path, ca.key_pem(made.key), 0o600)
        _write(cert_path, ca.pem(made.certificate), 0o644)
        log.info(
            "tls.ca_created",
            extra=fields(
                path=str(cert_path),
                trust_domain=trust_domain,
                fingerprint=ca.fingerprint(made.certificate),
            ),
        )
        return made
    certificate = _load_certificates(cert_path)[0]
    signer = ca.Issued(ca.check_signing_pair(certificate, _load_key(key_path)), certificate)
    made_for = ca.trust_domain_of(certificate)
    if made_for != trust_domain:
        raise ConfigError(
            f"the CA in {folder} was made for the trust domain {made_for!r}, not "
            f"{trust_domain!r}: pass --trust-domain {made_for}, or move {folder} away to "
            "make a new CA (every agent and client must then trust the new one)"
        )
    return signer


def _operator_ca(cert_path: Path, key_path: Path) -> tuple[ca.Issued, list[x509.Certificate]]:
    """The operator's CA: the first certificate signs; the others (its chain) are sent along."""
    chain = _load_certificates(cert_path)
    key = ca.check_signing_pair(chain[0], _load_key(key_path))
    return ca.Issued(key, chain[0]), chain


def _ensure_serving(
    folder: Path,
    signer: ca.Issued,
    chain: list[x509.Certificate],
    names: list[ca.Name],
    now: datetime,
) -> None:
    cert_path, key_path = folder / SERVER_CERT, folder / SERVER_KEY
    why = "there is none"
    if cert_path.exists() and key_path.exists():
        current = _load_certificates(cert_path)
        why = ca.needs_renewal(current[0], signer.certificate, names, now) or ""
        if not why and current[1:] != chain:
            why = "its chain differs from the CA bundle"
        if not why:
            return
    issued = ca.issue_serving(signer, names, now)
    _write(key_path, ca.key_pem(issued.key), 0o600)
    _write(cert_path, ca.pem(issued.certificate) + b"".join(ca.pem(c) for c in chain), 0o644)
    log.info(
        "tls.serving_certificate_issued",
        extra=fields(
            reason=why,
            names=",".join(str(n.value) for n in names),
            not_after=issued.certificate.not_valid_after_utc.isoformat(),
        ),
    )


def _load_certificates(path: Path) -> list[x509.Certificate]:
    raw = _read_bytes(path)
    if raw is None:
        raise ConfigError(f"cannot read the certificate file {path}")
    try:
        certificates = x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise ConfigError(f"{path} holds no PEM certificate: {exc}") from exc
    return certificates


def _load_key(path: Path) -> object:
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0
    if mode & 0o077:  # a key others can read may already be someone else's too
        log.warning("tls.key_readable_by_others", extra=fields(path=str(path), mode=oct(mode)))
    raw = _read_bytes(path)
    if raw is None:
        raise ConfigError(f"cannot read the key file {path}")
    try:
        return serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} holds no unencrypted PEM private key: {exc}") from exc


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace the file atomically; the temporary file has its final mode from the start."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)  # the umask may have taken bits off 0644
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
