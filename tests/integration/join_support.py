"""Helpers for the join and mTLS tests: a --tls controller process, join tokens, client
identities made like an agent makes them (or forged with the mesh CA, for refusals)."""

from __future__ import annotations

import contextlib
import re
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.sync.identity import IdentityFile, csr_pem, new_key
from controller import ca
from controller.db.engine import build_engine
from controller.db.session import Database, utc_now
from controller.identity import agent_spiffe_id
from controller.join_tokens import JoinTokens
from tests.integration.sync_support import FAST_CONTROLLER
from tests.support.controller import ControllerProcess
from tests.support.polling import wait_until


@dataclass
class TlsMesh:
    """A running ``dnsmesh controller --tls`` on its data folder."""

    process: ControllerProcess
    database_url: str
    data: Path
    admin: str

    @property
    def url(self) -> str:
        return self.process.base_url

    @property
    def stream_url(self) -> str:
        return self.url.replace("https://", "wss://") + "/v1/agents/stream"

    @property
    def bundle(self) -> Path:
        return self.data / "tls" / "ca-bundle.pem"

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.bundle))

    def signer(self) -> ca.Issued:
        folder = self.data / "tls"
        key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
        certificate = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return ca.Issued(key, certificate)

    def join_token(
        self,
        node: str | None = None,
        ttl: timedelta | None = None,
        *,
        made_at: datetime | None = None,
    ) -> str:
        engine = build_engine(self.database_url)
        try:
            clock = (lambda: made_at) if made_at is not None else utc_now
            tokens = JoinTokens(Database(engine, clock=clock))
            name = f"join-{secrets.token_hex(4)}"
            return tokens.create(name, actor="test", node=node, ttl=ttl)[1]
        finally:
            engine.dispose()

    def refusals(self) -> dict[str, int]:
        response = httpx.get(
            f"{self.url}/v1/ca/refusals",
            headers={"Authorization": f"Bearer {self.admin}"},
            verify=self.trust(),
        )
        assert response.status_code == 200, response.text
        counts: dict[str, int] = response.json()["refusals"]
        return counts

    def logged(self, reason: str) -> list[str]:
        pattern = re.compile(rf"identity\.refused .*reason={reason}\b")
        return [line for line in self.process.stderr_lines if pattern.search(line)]

    def wait_logged(self, reason: str, count: int = 1) -> None:
        wait_until(lambda: len(self.logged(reason)) >= count, timeout=10, what=f"{reason} logged")


@contextlib.contextmanager
def tls_mesh(database_url: str, admin: str, tmp: Path, *flags: str) -> Iterator[TlsMesh]:
    data = tmp / "data"
    args = ("--tls", "--data-dir", str(data), *FAST_CONTROLLER, *flags)
    with ControllerProcess(database_url, tmp, *args) as process:
        yield TlsMesh(process, database_url, data, admin)


def join(mesh: TlsMesh, token: str, node: str, folder: Path) -> httpx.Response:
    """``POST /v1/join`` as an agent does; on success the identity is stored in ``folder``."""
    key = new_key()
    response = httpx.post(
        f"{mesh.url}/v1/join",
        json={"node_name": node, "csr": csr_pem(key, node)},
        headers={"Authorization": f"Bearer {token}"},
        verify=mesh.trust(),
    )
    if response.status_code == 201:
        folder.mkdir(parents=True, exist_ok=True)
        IdentityFile(folder).store(key, response.json()["certificate"])
    return response


def client_context(mesh: TlsMesh, folder: Path) -> ssl.SSLContext:
    identity = IdentityFile(folder).load()
    assert identity is not None
    return identity.client_context(mesh.bundle)


def forge_identity(
    signer: ca.Issued,
    node: str,
    folder: Path,
    *,
    trust_domain: str = ca.DEFAULT_TRUST_DOMAIN,
    now: datetime | None = None,
    ttl: timedelta = timedelta(hours=1),
) -> Path:
    """A key and a certificate ``signer`` issues for ``node`` (never recorded by a controller)."""
    key = new_key()
    csr = x509.load_pem_x509_csr(csr_pem(key, node).encode())
    moment = now or datetime.now(UTC)
    certificate = ca.sign_csr(signer, csr, agent_spiffe_id(trust_domain, node), ttl, moment)
    folder.mkdir(parents=True, exist_ok=True)
    IdentityFile(folder).store(key, ca.pem(certificate).decode())
    return folder
