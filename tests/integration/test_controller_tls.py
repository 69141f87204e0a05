"""``dnsmesh controller --tls``: its CA in the data folder, HTTPS and WSS, clients that verify.

Real TLS on loopback with certificates the project's CA makes (controller/ca.py): the
controller is the real process, the CLI the real command, the agent a real SyncedAgent;
the "wrong" CA is another CA made the same way, so only trust differs.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from controller import ca
from controller.api import create_app
from controller.db.engine import build_engine
from controller.db.session import Database
from controller.tls_store import ensure_tls
from dnsmesh.errors import ConfigError
from tests.integration.controller_support import run_cli
from tests.integration.fakedns import LoopThread
from tests.integration.sync_support import (
    Rest,
    Synced,
    SyncedAgents,
    migrated_sqlite,
    mint_tokens,
    policy,
)
from tests.support.controller import ControllerProcess
from tests.support.polling import wait_until


def _trust(path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(path))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA file that vouches for nothing the controller serves (made just like its own)."""
    path = tmp_path / "other-ca.pem"
    path.write_bytes(ca.pem(ca.new_ca(ca.DEFAULT_TRUST_DOMAIN, datetime.now(UTC)).certificate))
    return path


@pytest.fixture
def database(tmp_path: Path) -> tuple[str, dict[str, str]]:
    url = migrated_sqlite(tmp_path / "db")
    return url, mint_tokens(url)


@pytest.fixture
def tls_controller(
    tmp_path: Path, database: tuple[str, dict[str, str]]
) -> Iterator[tuple[ControllerProcess, Path]]:
    """A --tls controller that still lets agents in by token (tests/integration/
    test_agent_join.py has the default, certificates required)."""
    data = tmp_path / "data"
    flags = ("--tls", "--data-dir", str(data), "--no-require-agent-mtls")
    with ControllerProcess(database[0], tmp_path, *flags) as process:
        yield process, data / "tls" / "ca-bundle.pem"


@pytest.fixture
def start_synced(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Callable[..., Synced]]:
    agents = SyncedAgents(loop_thread, tmp_path)
    yield agents.start
    agents.stop_all()


def test_the_first_start_makes_a_ca_and_later_starts_reuse_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = ensure_tls(data, sans=["ctl.example.org"])
    folder = data / "tls"
    assert folder.stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {
        "ca.pem": 0o644,
        "ca-key.pem": 0o600,
        "ca-bundle.pem": 0o644,
        "server.pem": 0o644,
        "server-key.pem": 0o600,
    }
    first = _files(folder)
    assert first["ca-bundle.pem"] == first["ca.pem"]
    leaf, chain = x509.load_pem_x509_certificates(files.cert_file.read_bytes())
    assert ca.pem(chain) == first["ca.pem"]  # the serving file carries its chain
    assert x509.DNSName("ctl.example.org") in ca.sans_of(leaf)
    assert x509.DNSName("localhost") in ca.sans_of(leaf)

    ensure_tls(data, sans=["ctl.example.org"])
    assert _files(folder) == first  # nothing made again

    ensure_tls(data, sans=["ctl.example.org", "10.9.8.7"])  # a new name: a new serving cert
    renamed = _files(folder)
    assert renamed["server.pem"] != first["server.pem"]
    assert {k: renamed[k] for k in ("ca.pem", "ca-key.pem")} == {
        k: first[k] for k in ("ca.pem", "ca-key.pem")
    }

    soon = datetime.now(UTC) + ca.SERVING_LIFETIME - ca.RENEW_BEFORE + timedelta(hours=1)
    ensure_tls(data, sans=["ctl.example.org", "10.9.8.7"], now=soon)  # nearing expiry
    renewed = _files(folder)
    assert renewed["server.pem"] != renamed["server.pem"]
    assert renewed["ca.pem"] == first["ca.pem"]


def test_bad_tls_settings_are_refused_and_change_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ensure_tls(data, sans=[])
    before = _files(data / "tls")
    with pytest.raises(ConfigError, match=r"made for the trust domain 'dnsmesh.internal'"):
        ensure_tls(data, sans=[], trust_domain="other.example")
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        ensure_tls(data, sans=["bad name"])
    with pytest.raises(ConfigError, match="go together"):
        ensure_tls(data, sans=[], ca_cert=data / "tls" / "ca.pem")
    assert _files(data / "tls") == before


def test_https_verifies_with_the_bundle_only_and_the_ca_route_needs_no_token(
    tls_controller: tuple[ControllerProcess, Path], other_ca: Path
) -> None:
    process, bundle = tls_controller
    assert process.base_url.startswith("https://127.0.0.1:")
    port = process.base_url.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "localhost"):
        response = httpx.get(f"https://{host}:{port}/v1/ca", verify=_trust(bundle))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-pem-file"
        assert response.text == bundle.read_text()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{process.base_url}/healthz", verify=_trust(other_ca))
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served next to HTTPS
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3.0)


def test_the_cli_talks_https_with_its_ca_file_and_refuses_another(
    tmp_path: Path,
    tls_controller: tuple[ControllerProcess, Path],
    database: tuple[str, dict[str, str]],
    other_ca: Path,
) -> None:
    process, bundle = tls_controller
    token = database[1]["admin"]
    base = ["get", "policies", "--server", process.base_url, "--token", token]
    flagged = run_cli(*base, "--ca-file", str(bundle), cwd=tmp_path)
    assert flagged.returncode == 0, flagged.stderr
    env = {"PATH": "/usr/bin:/bin", "DNSMESH_CA_FILE": str(bundle)}
    from_env = run_cli(*base, cwd=tmp_path, env=env)
    assert from_env.returncode == 0, from_env.stderr

    for refused in (
        run_cli(*base, "--ca-file", str(other_ca), cwd=tmp_path),
        run_cli(*base, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}),  # the system's CAs
    ):
        assert refused.returncode == 1
        assert "was not trusted" in refused.stderr and "CERTIFICATE_VERIFY_FAILED" in (
            refused.stderr
        )
    missing = run_cli(*base, "--ca-file", str(tmp_path / "nope.pem"), cwd=tmp_path)
    assert missing.returncode == 1 and "not a readable PEM CA bundle" in missing.stderr


def test_ca_export_from_the_data_folder_and_from_the_server(
    tmp_path: Path, tls_controller: tuple[ControllerProcess, Path], other_ca: Path
) -> None:
    process, bundle = tls_controller
    expected = bundle.read_text()
    from_dir = run_cli("ca", "export", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert from_dir.returncode == 0 and from_dir.stdout == expected
    fingerprint = ca.fingerprint(x509.load_pem_x509_certificate(expected.encode()))
    assert fingerprint in from_dir.stderr

    first_use = run_cli("ca", "export", "--server", process.base_url, cwd=tmp_path)
    assert first_use.returncode == 0, first_use.stderr
    assert first_use.stdout == expected and fingerprint in first_use.stderr
    verified = run_cli(
        "ca", "export", "--server", process.base_url, "--ca-file", str(bundle), cwd=tmp_path
    )
    assert verified.returncode == 0 and verified.stdout == expected
    wrong = run_cli(
        "ca", "export", "--server", process.base_url, "--ca-file", str(other_ca), cwd=tmp_path
    )
    assert wrong.returncode == 1 and wrong.stdout == ""

    nothing = run_cli("ca", "export", "--data-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert nothing.returncode == 1 and "no CA bundle" in nothing.stderr


def test_a_restarted_controller_keeps_its_ca_and_old_bundles_still_verify(
    tmp_path: Path, database: tuple[str, dict[str, str]]
) -> None:
    data = tmp_path / "data"
    flags = ("--tls", "--data-dir", str(data), "--tls-san", "ctl.example.org")
    with ControllerProcess(database[0], tmp_path, *flags):
        saved = tmp_path / "saved-bundle.pem"
        saved.write_bytes((data / "tls" / "ca-bundle.pem").read_bytes())
        key = (data / "tls" / "ca-key.pem").read_bytes()
        serving = (data / "tls" / "server.pem").read_bytes()
    with ControllerProcess(database[0], tmp_path, *flags) as again:
        assert httpx.get(f"{again.base_url}/healthz", verify=_trust(saved)).status_code == 200
        assert (data / "tls" / "ca-key.pem").read_bytes() == key
        assert (data / "tls" / "server.pem").read_bytes() == serving


def test_an_intermediate_ca_of_the_operators_root_is_served_with_its_chain(
    tmp_path: Path, database: tuple[str, dict[str, str]]
) -> None:
    now = datetime.now(UTC)
    root = ca.new_ca("corp.example", now)
    intermediate = _intermediate(root, now)
    chain_file, key_file, root_file = (tmp_path / n for n in ("inter.pem", "inter.key", "root"))
    chain_file.write_bytes(ca.pem(intermediate.certificate) + ca.pem(root.certificate))
    key_file.write_bytes(ca.key_pem(intermediate.key))
    root_file.write_bytes(ca.pem(root.certificate))
    data = tmp_path / "data"
    flags = ("--tls", "--data-dir", str(data), "--ca-cert", str(chain_file))
    with ControllerProcess(database[0], tmp_path, *flags, "--ca-key", str(key_file)) as process:
        # A client that trusts only the root verifies: the server sends the intermediate.
        response = httpx.get(f"{process.base_url}/v1/ca", verify=_trust(root_file))
        assert response.text == chain_file.read_text()
        assert not (data / "tls" / "ca-key.pem").exists()  # the operator's key stays theirs
        leaf = x509.load_pem_x509_certificates((data / "tls" / "server.pem").read_bytes())[0]
        leaf.verify_directly_issued_by(intermediate.certificate)
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_bytes(ca.key_pem(ca.new_key()))
    refused = run_cli(
        "controller", "--database", database[0], "--listen", "127.0.0.1:0", *flags,
        "--ca-key", str(wrong_key), cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 1 and "not the private key" in refused.stderr
    alone = run_cli("controller", "--database", database[0], "--tls-san", "x", cwd=tmp_path)
    assert alone.returncode == 1 and "--tls-san need --tls" in alone.stderr


@pytest.mark.parametrize("mode", ["ws", "http"])
def test_an_agent_syncs_over_wss_or_https_with_its_ca_file(
    tls_controller: tuple[ControllerProcess, Path],
    database: tuple[str, dict[str, str]],
    start_synced: Callable[..., Synced],
    mode: str,
) -> None:
    process, bundle = tls_controller
    rest = Rest(process.base_url, database[1]["admin"], ca_file=bundle)
    try:
        rest.put(policy("web", ["127.0.30.1"], domain="web.mesh.internal"))
        synced = start_synced(process.base_url, database[1]["agent"], ca_file=bundle, mode=mode)
        wait_until(
            lambda: synced.resolve("web.mesh.internal") == ["127.0.30.1"],
            timeout=20,
            what="the policy pushed over TLS",
        )
        assert synced.transport == ("websocket" if mode == "ws" else "poll")
        rest.put(policy("web", ["127.0.30.2"], domain="web.mesh.internal"))
        wait_until(
            lambda: synced.resolve("web.mesh.internal") == ["127.0.30.2"],
            timeout=20,
            what="a change pushed over TLS",
        )
    finally:
        rest.close()


def test_an_agent_with_the_wrong_ca_never_connects(
    tls_controller: tuple[ControllerProcess, Path],
    database: tuple[str, dict[str, str]],
    start_synced: Callable[..., Synced],
    other_ca: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    process, bundle = tls_controller
    rest = Rest(process.base_url, database[1]["admin"], ca_file=bundle)
    try:
        rest.put(policy("web", ["127.0.30.1"], domain="web.mesh.internal"))
        synced = start_synced(process.base_url, database[1]["agent"], ca_file=other_ca)
        wait_until(
            lambda: any(r.getMessage() == "sync.controller_untrusted" for r in caplog.records),
            timeout=20,
            what="the refused certificate logged",
        )
        untrusted = next(r for r in caplog.records if r.getMessage() == "sync.controller_untrusted")
        assert untrusted.levelname == "ERROR"
        assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.__dict__)
        assert str(other_ca) in str(untrusted.__dict__)
        assert synced.transport is None  # not downgraded to anything
        assert not synced.resolve("web.mesh.internal")  # never had the policy
        assert rest.agents() == []  # the controller never heard from it
    finally:
        rest.close()


def _intermediate(root: ca.Issued, now: datetime) -> ca.Issued:
    """An intermediate CA signed by ``root`` (what an operator's PKI hands out)."""
    key = ca.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp issuing CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(root.key, hashes.SHA256())
    )
    return ca.Issued(key, certificate)


def test_a_controller_without_tls_has_no_ca_route(tmp_path: Path) -> None:
    engine = build_engine(migrated_sqlite(tmp_path / "db"))
    try:
        with TestClient(create_app(Database(engine))) as client:
            response = client.get("/v1/ca")
        assert response.status_code == 404
        assert "serves no TLS" in response.json()["error"]["message"]
    finally:
        engine.dispose()


def test_a_ca_key_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    ensure_tls(data, sans=[])
    ensure_tls(data, sans=[])
    assert not [r for r in caplog.records if r.getMessage() == "tls.key_readable_by_others"]
    (data / "tls" / "ca-key.pem").chmod(0o644)
    ensure_tls(data, sans=[])
    warned = [r for r in caplog.records if r.getMessage() == "tls.key_readable_by_others"]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
