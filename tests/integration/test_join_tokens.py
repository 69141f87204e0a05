"""Spending a join token on both backends: of many joins racing with one token, one wins."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from cryptography import x509

from agent.sync.identity import csr_pem, new_key
from controller import ca
from controller.agent_certs import CertificateIssuer, CertificateRegistry, Standing
from controller.db.session import Database
from controller.identity import serial_hex
from controller.join_tokens import JoinRefused, JoinTokens

SIGNER = ca.new_ca(ca.DEFAULT_TRUST_DOMAIN, datetime.now(UTC))


def _csr() -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(csr_pem(new_key(), "n").encode())


def _race(issuer: CertificateIssuer, secret: str, nodes: list[str]) -> tuple[list[str], list[str]]:
    """Every node joins with ``secret`` at once (a barrier); the serials won, the refusals."""
    barrier = threading.Barrier(len(nodes))
    won: list[str] = []
    refused: list[str] = []

    def join(node: str) -> None:
        csr = _csr()
        barrier.wait()
        try:
            won.append(serial_hex(issuer.join(secret, node, csr).certificate))
        except JoinRefused as error:
            refused.append(error.reason.value)

    threads = [threading.Thread(target=join, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return won, refused


def test_racing_joins_spend_a_token_once_and_revocation_marks_the_node(
    controller_db: Database,
) -> None:
    issuer = CertificateIssuer(controller_db, SIGNER, trust_domain=ca.DEFAULT_TRUST_DOMAIN)
    for round_ in range(3):
        _info, secret = JoinTokens(controller_db).create(f"race-{round_}", actor="test")
        won, refused = _race(issuer, secret, [f"n{round_}-{i}" for i in range(4)])
        assert len(won) == 1 and refused == ["join_token_spent"] * 3
    registry = CertificateRegistry(controller_db)
    issued = registry.list()
    assert len(issued) == 3
    node = issued[0].node_name
    assert registry.revoke(node, actor="test") == 1
    assert registry.standing(issued[0].serial) is Standing.REVOKED
    assert registry.revoked_among([i.serial for i in issued]) == {issued[0].serial}
    assert registry.revoke(node, actor="test") == 0  # already revoked: nothing more
