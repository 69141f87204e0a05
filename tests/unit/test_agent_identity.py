"""Agent identities without sockets: which node a certificate names, the agent's identity
file, when it renews, the mesh id in the protocol, and the peer certificate in the scope."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agent.sync.identity import IdentityFile, csr_pem, new_key
from controller import ca
from controller.identity import NotAnAgent, agent_spiffe_id, check_node_name, identity_of
from controller.tls_peer import _WithTls, peer_certificate
from dnsmesh import protocol
from dnsmesh.errors import ConfigError
from dnsmesh.policy import parse_policy
from tests.support.policies import policy_doc

NOW = datetime(2026, 12, 9, 3, 0, tzinfo=UTC)
CA = ca.new_ca("mesh.example", NOW)


def _issue(
    spiffe: str, *, ttl: timedelta = timedelta(hours=24), key: Any = None
) -> tuple[Any, x509.Certificate]:
    key = key or new_key()
    csr = x509.load_pem_x509_csr(csr_pem(key, "n").encode())
    return key, ca.sign_csr(CA, csr, spiffe, ttl, NOW)


def test_a_certificate_names_its_node_in_the_trust_domain() -> None:
    _key, certificate = _issue("spiffe://mesh.example/agent/node-7")
    identity = identity_of(certificate, "mesh.example")
    assert (identity.node_name, identity.agent_id) == ("node-7", "node-7")
    assert identity.serial == format(certificate.serial_number, "x")
    for spiffe, domain in (
        ("spiffe://mesh.example/agent/node-7", "other.example"),  # another trust domain
        ("spiffe://mesh.example/workload/node-7", "mesh.example"),  # not an agent
        ("spiffe://mesh.example/agent/a/b", "mesh.example"),  # nested
    ):
        _key, other = _issue(spiffe)
        with pytest.raises(NotAnAgent):
            identity_of(other, domain)
    served = ca.issue_serving(CA, [ca.parse_san("localhost")], NOW).certificate
    with pytest.raises(NotAnAgent, match="exactly one URI SAN"):
        identity_of(served, "mesh.example")


def test_node_names_are_spiffe_path_segments_of_at_most_128() -> None:
    assert check_node_name("web-1.eu_west") == "web-1.eu_west"
    for bad in ("", "a/b", "..", "name with space", "x" * 129):
        with pytest.raises(ValueError):
            check_node_name(bad)
    assert agent_spiffe_id("mesh.example", "n1") == "spiffe://mesh.example/agent/n1"


def test_an_svid_is_backdated_by_a_tenth_of_its_ttl_at_most() -> None:
    _key, short = _issue("spiffe://mesh.example/agent/n", ttl=timedelta(seconds=10))
    assert NOW - short.not_valid_before_utc == timedelta(seconds=1)
    _key, day = _issue("spiffe://mesh.example/agent/n")
    assert NOW - day.not_valid_before_utc == ca.BACKDATE
    operator = ca.Issued(CA.key, ca.issue_serving(CA, [ca.parse_san("x.example")], NOW).certificate)
    assert ca.trust_domain_of(operator.certificate) is None  # names none: the caller decides
    csr = x509.load_pem_x509_csr(csr_pem(new_key(), "n").encode())
    signed = ca.sign_csr(operator, csr, "spiffe://corp.example/agent/n", timedelta(hours=1), NOW)
    assert identity_of(signed, "corp.example").node_name == "n"


def test_the_identity_file_is_one_0600_file_renewed_at_half_its_validity(tmp_path: Path) -> None:
    key, certificate = _issue("spiffe://mesh.example/agent/node-7", ttl=timedelta(seconds=40))
    stored = IdentityFile(tmp_path).store(key, ca.pem(certificate).decode())
    assert stat.S_IMODE((tmp_path / "identity.pem").stat().st_mode) == 0o600
    loaded = IdentityFile(tmp_path).load()
    assert loaded is not None and loaded.node_name == "node-7"
    assert loaded.certificate == stored.certificate
    assert loaded.renew_at() == NOW + timedelta(seconds=18)  # (-4 s .. +40 s) / 2
    assert not loaded.expired(NOW + timedelta(seconds=39)) and loaded.expired(
        NOW + timedelta(seconds=40)
    )
    _other_key, foreign = _issue("spiffe://mesh.example/agent/node-7")
    with pytest.raises(ConfigError, match="another key"):
        IdentityFile(tmp_path).store(key, ca.pem(foreign).decode())
    (tmp_path / "identity.pem").write_text("garbage")
    with pytest.raises(ConfigError, match="not an agent identity"):
        IdentityFile(tmp_path).load()
    assert IdentityFile(tmp_path / "none").load() is None


def test_a_delta_of_another_mesh_is_a_gap_and_a_snapshot_replaces_the_mesh() -> None:
    web = policy_doc("web", [{"address": "127.0.0.9", "weight": 1}])
    mine = protocol.apply_update(
        protocol.AppliedState.empty(),
        protocol.build_snapshot(3, [web], mesh_id="mesh-a"),
    )
    assert mine.mesh_id == "mesh-a"
    later = protocol.build_delta(3, 4, [("web", None)], mesh_id="mesh-a")
    assert protocol.apply_update(mine, later).mesh_id == "mesh-a"
    with pytest.raises(protocol.RevisionGap, match="mesh-b"):
        protocol.apply_update(mine, protocol.build_delta(3, 4, [("web", None)], mesh_id="mesh-b"))
    other = protocol.apply_update(mine, protocol.build_snapshot(9, [], mesh_id="mesh-b"))
    assert (other.revision, other.mesh_id, dict(other.policies)) == (9, "mesh-b", {})
    again = protocol.decode_state(protocol.encode_state(mine))
    assert again.mesh_id == "mesh-a" and set(again.policies) == {"web"}
    assert parse_policy(web).name == "web"


def test_the_peer_certificate_rides_in_the_asgi_tls_extension() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], _receive: Any, _send: Any) -> None:
        seen.append(scope)

    tls = {"client_cert_chain": ["-----BEGIN CERTIFICATE-----\n..."], "server_cert": None}
    wrapped = _WithTls(app, tls)
    scope = {"type": "websocket", "extensions": {"websocket.http.response": {}}}
    asyncio.run(wrapped(scope, None, None))
    assert seen[0]["extensions"] == {"websocket.http.response": {}, "tls": tls}
    assert "tls" not in scope["extensions"]  # the server's own scope is left alone
    assert peer_certificate(seen[0]) == tls["client_cert_chain"][0]
    assert peer_certificate({"type": "http"}) is None
    assert peer_certificate({"extensions": {"tls": {"client_cert_chain": []}}}) is None
