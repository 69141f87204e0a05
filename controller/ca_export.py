"""``dnsmesh ca export``: the CA bundle a client should trust, from the data folder or a server.

From ``--data-dir``: ``DIR/tls/ca-bundle.pem`` as the controller wrote it. From ``--server``:
``GET /v1/ca``. Over https with a ``--ca-file`` the answer is verified like any request.
Without one this is trust on first use: the bundle is fetched without verification, then
taken only if the same server's certificate verifies against it (a second, verified
request must return the same bundle), and its fingerprint goes to stderr so a person can
compare it with the one on the controller's host. Nothing is ever written.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

import httpx
from cryptography import x509

from controller import ca
from controller.tls_store import BUNDLE, tls_dir
from dnsmesh.errors import ConfigError, ControllerError


def run_ca_export(args: argparse.Namespace) -> int:
    if args.server:
        ca_file = args.ca_file or os.environ.get("DNSMESH_CA_FILE") or None
        bundle = fetch_bundle(args.server, ca_file)
    else:
        if args.ca_file:
            raise ConfigError("--ca-file goes with --server")
        bundle = read_bundle(args.data_dir or Path(".dnsmesh"))
    certificates = _parse(bundle, "the CA bundle")
    sys.stdout.write(bundle)
    for certificate in certificates:
        print(
            f"{certificate.subject.rfc4514_string()}  SHA-256 {ca.fingerprint(certificate)}",
            file=sys.stderr,
        )
    return 0


def read_bundle(data_dir: Path) -> str:
    path = tls_dir(data_dir) / BUNDLE
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"no CA bundle in {data_dir} ({exc.strerror or exc}): has a controller with "
            f"--tls --data-dir {data_dir} started?"
        ) from exc


def fetch_bundle(server: str, ca_file: str | None) -> str:
    base = server.rstrip("/")
    if not base.startswith("https://") or ca_file:
        verify: ssl.SSLContext | bool = True
        if ca_file:
            try:
                verify = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--ca-file {ca_file}: not a readable PEM CA bundle") from exc
        return _get(base, verify)
    first = _get(base, False)  # trust on first use: checked just below
    _parse(first, f"GET {base}/v1/ca")
    context = ssl.create_default_context(cadata=first)
    try:
        again = _get(base, context)
    except ControllerError as exc:
        raise ControllerError(
            f"{base} served a CA bundle that does not vouch for its own certificate: {exc}"
        ) from exc
    if again != first:
        raise ControllerError(f"{base} served two different CA bundles; refusing both")
    return first


def _get(base: str, verify: ssl.SSLContext | bool) -> str:
    try:
        response = httpx.get(f"{base}/v1/ca", verify=verify, timeout=10.0, trust_env=False)
    except httpx.HTTPError as exc:
        raise ControllerError(f"cannot fetch {base}/v1/ca: {exc}") from exc
    if response.status_code != 200:
        raise ControllerError(f"GET {base}/v1/ca answered {response.status_code}: {response.text}")
    return response.text


def _parse(bundle: str, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(bundle.encode())
    except ValueError as exc:
        raise ControllerError(f"{what} is not a PEM certificate bundle: {exc}") from exc
