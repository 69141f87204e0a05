"""The join flow and agents' mTLS identities, over real TLS with the controller's own CA.

The controller is the real ``dnsmesh controller --tls`` process on a migrated SQLite file
(agents must show certificates: the default with --tls); agents are real SyncedAgents on
the test loop that join with a one-time token, or raw clients presenting certificates the
test made the way an agent makes them (or forged with the mesh CA, for the refusals).
"""

from __future__ import annotations

import asyncio
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from websockets.exceptions import InvalidStatus

from agent.sync.identity import IdentityFile
from controller import ca
from controller.agent_certs import CertificateRegistry
from controller.db.engine import build_engine
from controller.db.session import Database
from tests.integration.controller_support import run_cli
from tests.integration.fakedns import LoopThread
from tests.integration.join_support import (
    TlsMesh,
    client_context,
    forge_identity,
    join,
    tls_mesh,
)
from tests.integration.push_support import TestAgent
from tests.integration.sync_support import (
    Rest,
    Synced,
    SyncedAgents,
    migrated_sqlite,
    mint_tokens,
    policy,
)
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    url = migrated_sqlite(tmp_path_factory.mktemp("db"))
    return url, mint_tokens(url)


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, database: tuple[str, dict[str, str]]
) -> Iterator[TlsMesh]:
    """One controller for the module (a process start costs seconds): every test uses
    node names of its own and looks at how the refusal counts moved."""
    with tls_mesh(database[0], database[1]["admin"], tmp_path_factory.mktemp("mesh")) as running:
        yield running


class Moved:
    """How the controller's refusal counts moved since it was made."""

    def __init__(self, mesh: TlsMesh) -> None:
        self.mesh = mesh
        self.before = mesh.refusals()

    def __call__(self) -> dict[str, int]:
        now = self.mesh.refusals()
        return {k: v - self.before.get(k, 0) for k, v in now.items() if v != self.before.get(k, 0)}


@pytest.fixture
def agents(loop_thread: LoopThread, tmp_path: Path) -> Iterator[SyncedAgents]:
    started = SyncedAgents(loop_thread, tmp_path)
    yield started
    started.stop_all()


def _start(agents: SyncedAgents, mesh: TlsMesh, node: str, **sync: object) -> Synced:
    return agents.start(
        mesh.url, "", ca_file=mesh.bundle, node_name=node, state_dir=agents.tmp_path / node, **sync
    )


@pytest.mark.parametrize("mode", ["ws", "http"])
def test_an_agent_joins_then_syncs_by_certificate_and_a_restart_needs_no_token(
    mesh: TlsMesh, agents: SyncedAgents, mode: str
) -> None:
    rest = Rest(mesh.url, mesh.admin, ca_file=mesh.bundle)
    try:
        rest.put(policy("web", ["127.0.30.1"], domain="web.mesh.internal"))
        synced = _start(agents, mesh, "node-a", join_token=mesh.join_token("node-a"), mode=mode)
        wait_until(
            lambda: synced.resolve("web.mesh.internal") == ["127.0.30.1"],
            timeout=20,
            what="the policy pushed to the joined agent",
        )
        assert synced.agent_id == "node-a"  # the certificate's node is the agent id
        assert synced.transport == ("websocket" if mode == "ws" else "poll")
        stored = agents.tmp_path / "node-a" / "identity.pem"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        identity = IdentityFile(stored.parent).load()
        assert identity is not None
        sans = identity.certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        assert list(sans) == [
            x509.UniformResourceIdentifier("spiffe://dnsmesh.internal/agent/node-a")
        ]
        lifetime = identity.not_after - identity.not_before
        assert timedelta(hours=24) <= lifetime <= timedelta(hours=24, minutes=5)
        shown = wait_until(
            lambda: (rest.agent("node-a") or {}).get("connected") and rest.agent("node-a"),
            timeout=10,
            what="the agent shown connected",
        )
        assert shown["node_name"] == "node-a"

        agents.stop(synced)  # restarted: no token, no join token, the stored certificate
        again = _start(agents, mesh, "node-a", mode=mode)
        rest.put(policy("web", ["127.0.30.2"], domain="web.mesh.internal"))
        wait_until(
            lambda: again.resolve("web.mesh.internal") == ["127.0.30.2"],
            timeout=20,
            what="a change pushed to the restarted agent",
        )
        assert IdentityFile(stored.parent).load().certificate == identity.certificate  # type: ignore[union-attr]
    finally:
        rest.close()
    listing = run_cli("token", "list", "--database", mesh.database_url, cwd=agents.tmp_path)
    assert "agent (join node-a, spent)" in listing.stdout


def test_racing_joins_with_one_token_get_one_certificate(mesh: TlsMesh, tmp_path: Path) -> None:
    token = mesh.join_token()
    moved = Moved(mesh)

    async def race() -> list[httpx.Response]:
        return await asyncio.gather(
            *(
                asyncio.to_thread(join, mesh, token, f"racer-{i}", tmp_path / f"r{i}")
                for i in range(4)
            )
        )

    statuses = sorted(r.status_code for r in asyncio.run(race()))
    assert statuses == [201, 401, 401, 401]
    listing = run_cli("ca", "list", "--database", mesh.database_url, cwd=tmp_path)
    assert listing.returncode == 0 and listing.stdout.count("racer-") == 1
    assert moved() == {"join_token_spent": 3}


def test_join_refusals_are_logged_counted_and_spend_nothing(mesh: TlsMesh, tmp_path: Path) -> None:
    bound = mesh.join_token("node-b")
    moved = Moved(mesh)
    wrong_node = join(mesh, bound, "node-c", tmp_path / "c")
    assert wrong_node.status_code == 401 and "for node 'node-b'" in wrong_node.text
    bad_name = join(mesh, bound, "no/slashes", tmp_path / "x")
    assert bad_name.status_code == 422
    assert bad_name.json()["error"]["fields"][0]["path"] == "node_name"
    assert join(mesh, bound, "node-b", tmp_path / "b").status_code == 201  # still unspent
    spent = join(mesh, bound, "node-b", tmp_path / "b2")
    assert spent.status_code == 401 and "already used" in spent.text
    expired = mesh.join_token(
        ttl=timedelta(hours=1), made_at=datetime.now(UTC) - timedelta(hours=2)
    )
    late = join(mesh, expired, "node-e", tmp_path / "e")
    assert late.status_code == 401 and "expired" in late.text
    assert join(mesh, "dnsmj_" + "x" * 43, "node-f", tmp_path / "f").status_code == 401
    assert moved() == {
        "join_token_node": 1,
        "join_token_spent": 1,
        "join_token_expired": 1,
        "join_token_unknown": 1,
    }
    for reason in ("join_token_node", "join_token_spent", "join_token_expired"):
        mesh.wait_logged(reason)


def test_certificates_of_another_ca_or_expired_fail_the_handshake(
    mesh: TlsMesh, tmp_path: Path
) -> None:
    moved = Moved(mesh)
    other = ca.new_ca(ca.DEFAULT_TRUST_DOMAIN, datetime.now(UTC))
    stranger = forge_identity(other, "node-s", tmp_path / "s")
    past = datetime.now(UTC) - timedelta(hours=3)
    old = forge_identity(mesh.signer(), "node-o", tmp_path / "o", now=past, ttl=timedelta(hours=1))
    for folder in (stranger, old):
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(f"{mesh.url}/healthz", verify=client_context(mesh, folder))
    mesh.wait_logged("other_ca")
    mesh.wait_logged("expired")
    assert moved() == {"other_ca": 1, "expired": 1}
    # /metrics exports the same counts.
    scraped = httpx.get(f"{mesh.url}/metrics", verify=mesh.trust()).text
    for reason, count in mesh.refusals().items():
        assert f'dnsmesh_controller_identity_refusals_total{{reason="{reason}"}} {count}.0' in (
            scraped
        )
    # An operator's token over HTTPS, with no certificate, is not affected.
    assert httpx.get(f"{mesh.url}/healthz", verify=mesh.trust()).status_code == 200


def test_a_token_only_agent_and_an_unrecorded_certificate_are_refused(
    mesh: TlsMesh, database: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    token = database[1]["agent"]
    moved = Moved(mesh)

    async def refused_upgrade(**kwargs: object) -> int:
        with pytest.raises(InvalidStatus) as refused:
            await TestAgent.connect(mesh.stream_url, **kwargs)  # type: ignore[arg-type]
        return refused.value.response.status_code

    assert asyncio.run(refused_upgrade(token=token, ssl=mesh.trust())) == 401
    polled = httpx.get(
        f"{mesh.url}/v1/changes",
        params={"since": 0},
        headers={"Authorization": f"Bearer {token}"},
        verify=mesh.trust(),
    )
    assert polled.status_code == 401 and "requires agents to present" in polled.text
    forged = forge_identity(mesh.signer(), "node-z", tmp_path / "z")  # the CA's, never issued
    assert asyncio.run(refused_upgrade(token=None, ssl=client_context(mesh, forged))) == 403
    assert moved() == {"token_only": 2, "unknown_certificate": 1}
    mesh.wait_logged("token_only", 2)


def test_a_certificate_acts_for_its_own_node_only(mesh: TlsMesh, tmp_path: Path) -> None:
    assert join(mesh, mesh.join_token("node-n"), "node-n", tmp_path / "n").status_code == 201
    context = client_context(mesh, tmp_path / "n")
    moved = Moved(mesh)

    async def ask_as(agent_id: str, node: str) -> object:
        agent = await TestAgent.connect(
            mesh.stream_url, None, agent_id=agent_id, node_name=node, ssl=context
        )
        try:
            return await agent.next()
        finally:
            await agent.close()

    first = asyncio.run(ask_as("node-n", "node-n"))
    assert type(first).__name__ == "SnapshotMessage"
    refused = asyncio.run(ask_as("node-b", "node-b"))
    assert getattr(refused, "code", None) == "wrong_node"
    ack = httpx.post(
        f"{mesh.url}/v1/agents/node-b/ack",
        json={"node_name": "node-b", "revision": 0},
        verify=context,
    )
    assert ack.status_code == 403 and "may not act as agent 'node-b'" in ack.text
    own = httpx.post(
        f"{mesh.url}/v1/agents/node-n/ack",
        json={"node_name": "node-n", "revision": 0},
        verify=context,
    )
    assert own.status_code == 200
    assert moved() == {"wrong_node": 2}
    mesh.wait_logged("wrong_node", 2)


def test_revocation_cuts_the_stream_refuses_the_certificate_and_needs_a_new_join_token(
    mesh: TlsMesh, agents: SyncedAgents, tmp_path: Path
) -> None:
    token = mesh.join_token("node-r")
    moved = Moved(mesh)
    synced = _start(agents, mesh, "node-r", join_token=token, fatal_retry=0.2)
    wait_until(lambda: synced.transport == "websocket", timeout=20, what="connected")
    revoked = run_cli("ca", "revoke", "node-r", "--database", mesh.database_url, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked 1 certificate of node 'node-r'" in revoked.stderr
    mesh.wait_logged("revoked")  # the open stream closed at the next catch-up round
    wait_until(lambda: synced.transport is None, timeout=10, what="the stream closed")
    wait_until(
        lambda: moved().get("revoked", 0) >= 2 and moved().get("join_token_spent", 0) >= 1,
        timeout=10,
        what="the revoked certificate refused, and the spent token too",
    )
    assert synced.transport is None
    agents.stop(synced)

    again = _start(agents, mesh, "node-r", join_token=mesh.join_token("node-r"))
    wait_until(lambda: again.transport == "websocket", timeout=20, what="joined again")
    engine = build_engine(mesh.database_url)
    try:
        issued = CertificateRegistry(Database(engine)).list("node-r")
    finally:
        engine.dispose()
    assert len(issued) == 2 and [c.revoked_at is None for c in issued] == [False, True]
    unknown = run_cli("ca", "revoke", "nobody", "--database", mesh.database_url, cwd=tmp_path)
    assert unknown.returncode == 1 and "no certificate was ever issued" in unknown.stderr


def test_the_token_cli_makes_join_tokens(mesh: TlsMesh, tmp_path: Path) -> None:
    made = run_cli(
        "token", "create", "--role", "agent", "--join", "--node", "node-k", "--ttl", "10m",
        "--database", mesh.database_url, cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("dnsmj_") and "join token" in made.stderr
    assert join(mesh, secret, "node-k", tmp_path / "k").status_code == 201
    # A join token is no bearer token.
    bearer = httpx.get(
        f"{mesh.url}/v1/policies",
        headers={"Authorization": f"Bearer {secret}"},
        verify=mesh.trust(),
    )
    assert bearer.status_code == 401
    wrong = run_cli(
        "token",
        "create",
        "--role",
        "admin",
        "--join",
        "--database",
        mesh.database_url,
        cwd=tmp_path,
    )
    assert wrong.returncode == 1 and "role agent only" in wrong.stderr


def test_a_renewal_under_a_live_stream_keeps_it_and_dns_answers_throughout(
    agents: SyncedAgents, tmp_path: Path
) -> None:
    url = migrated_sqlite(tmp_path / "short-db")
    admin = mint_tokens(url)["admin"]
    with tls_mesh(url, admin, tmp_path, "--agent-cert-ttl", "4s") as short:
        rest = Rest(short.url, admin, ca_file=short.bundle)
        try:
            rest.put(policy("web", ["127.0.30.1"], domain="web.mesh.internal"))
            synced = _start(agents, short, "node-t", join_token=short.join_token("node-t"))
            wait_until(
                lambda: synced.resolve("web.mesh.internal") == ["127.0.30.1"],
                timeout=20,
                what="the joined agent answering",
            )
            folder = agents.tmp_path / "node-t"
            first = IdentityFile(folder).load()
            assert first is not None
            connected_at = wait_until(
                lambda: (rest.agent("node-t") or {}).get("connected_at"), timeout=10
            )
            misses: list[object] = []
            asked = 0
            stop = threading.Event()

            def ask() -> None:
                nonlocal asked
                while not stop.is_set():
                    answer = synced.resolve("web.mesh.internal")
                    asked += 1
                    if answer != ["127.0.30.1"]:
                        misses.append(answer)
                    stop.wait(0.02)

            asker = threading.Thread(target=ask, daemon=True)
            asker.start()
            serials = {first.certificate.serial_number}

            def renewed_twice() -> bool:
                current = IdentityFile(folder).load()
                if current is not None:
                    serials.add(current.certificate.serial_number)
                return len(serials) >= 3

            # Renewed at about half of each 4 s certificate: twice within some 4 s.
            wait_until(renewed_twice, timeout=20, what="two renewals")
            stop.set()
            asker.join(5)
            assert misses == [] and asked > 20
            context = synced.agent.sync.context  # type: ignore[union-attr]
            assert context.connections == 1  # the stream was never cut
            assert rest.agent("node-t")["connected_at"] == connected_at  # type: ignore[index]

            # The first certificate has expired by now: a new connection presents the latest.
            wait_until(lambda: datetime.now(UTC) > first.not_after, timeout=10, what="it expires")
            agents.stop(synced)
            again = _start(agents, short, "node-t")
            wait_until(lambda: again.transport == "websocket", timeout=20, what="reconnected")
        finally:
            rest.close()
