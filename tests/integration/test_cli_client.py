"""dnsmesh apply / get / delete: the real CLI in subprocesses against a real controller."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database
from tests.integration.controller_support import run_cli, temporary_postgres_database
from tests.support.controller import ControllerProcess
from tests.support.ports import free_port

POLICY = """\
apiVersion: dnsmesh/v1
kind: Policy
metadata: {{name: {name}, labels: {{team: {team}}}}}
spec:
  domain: {name}.mesh.internal
  ttl: 5
  endpoints:
    - {{address: 127.0.10.1, weight: {weight}}}
    - {{address: 127.0.10.2, weight: 10}}
"""


@dataclass
class Mesh:
    """A running controller and a way to run the CLI against it with a given role's token."""

    url: str
    tokens: dict[str, str]
    cwd: Path

    def run(
        self, *args: str, role: str = "editor", server: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "DNSMESH_SERVER": server or self.url,
            "DNSMESH_TOKEN": self.tokens.get(role, role),
        }
        return run_cli(*args, cwd=self.cwd, env=env)

    def cli(self, *args: str, role: str = "editor", server: str | None = None) -> tuple[int, str]:
        """Exit status and everything printed (messages may go to either stream)."""
        done = self.run(*args, role=role, server=server)
        return done.returncode, done.stdout + done.stderr


@dataclass
class Scope:
    """One test's corner of the shared controller: its own policy names and team label."""

    mesh: Mesh
    tag: str

    def name(self, word: str) -> str:
        return f"{word}-{self.tag}"

    def policy(self, word: str, *, weight: int = 90, team: str = "pay") -> str:
        return POLICY.format(name=self.name(word), weight=weight, team=f"{team}-{self.tag}")

    def team(self, team: str = "pay") -> str:
        return f"team={team}-{self.tag}"

    def policies(self, team: str = "pay") -> dict[str, dict[str, object]]:
        done = self.mesh.run("get", "policies", "-o", "json", "-l", self.team(team), role="viewer")
        assert done.returncode == 0, done.stderr
        return {doc["metadata"]["name"]: doc for doc in json.loads(done.stdout)}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    """One controller per backend for the module; tests keep apart by name and label."""
    cwd = tmp_path_factory.mktemp("cli")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{cwd / 'dnsmesh.db'}"
        else:
            url = stack.enter_context(temporary_postgres_database("cli"))
        engine = build_engine(url)
        try:
            upgrade(engine)
            store = TokenStore(Database(engine))
            roles = ("editor", "viewer", "agent")
            tokens = {r: store.create(f"{r}-cli", r, actor="test")[1] for r in roles}
        finally:
            engine.dispose()
        controller = stack.enter_context(ControllerProcess(url, cwd))
        yield Mesh(controller.base_url, tokens, cwd)


@pytest.fixture
def scope(mesh: Mesh) -> Scope:
    return Scope(mesh, secrets.token_hex(3))


def write(folder: Path, **files: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def test_apply_creates_then_reports_unchanged_then_configured(scope: Scope, tmp_path: Path) -> None:
    mesh, alpha, beta = scope.mesh, scope.name("alpha"), scope.name("beta")
    folder = write(tmp_path / "p", a=scope.policy("alpha") + "---\n" + scope.policy("beta"))
    status, out = mesh.cli("apply", "-f", str(folder))
    assert status == 0, out
    assert f"policy/{alpha} created" in out and f"policy/{beta} created" in out

    status, out = mesh.cli("apply", "-f", str(folder))
    assert status == 0, out
    assert f"policy/{alpha} unchanged" in out and f"policy/{beta} unchanged" in out

    write(folder, a=scope.policy("alpha", weight=50) + "---\n" + scope.policy("beta"))
    status, out = mesh.cli("apply", "-f", str(folder))
    assert status == 0, out
    assert f"policy/{alpha} configured" in out and f"policy/{beta} unchanged" in out
    assert scope.policies()[alpha]["spec"]["endpoints"][0]["weight"] == 50  # type: ignore[index]


def test_dry_run_prints_the_diff_and_changes_nothing(scope: Scope, tmp_path: Path) -> None:
    mesh = scope.mesh
    folder = write(tmp_path / "p", a=scope.policy("alpha"))
    assert mesh.cli("apply", "-f", str(folder))[0] == 0
    before = scope.policies()

    write(folder, a=scope.policy("alpha", weight=42), b=scope.policy("gamma"))
    status, out = mesh.cli("apply", "-f", str(folder), "--dry-run")
    assert status == 0, out
    assert f"policy/{scope.name('alpha')} configured (dry run)" in out
    assert f"policy/{scope.name('gamma')} created (dry run)" in out
    assert "-    weight: 90" in out and "+    weight: 42" in out
    assert scope.policies() == before


def test_prune_deletes_only_with_the_flag_and_within_the_selector(
    scope: Scope, tmp_path: Path
) -> None:
    mesh = scope.mesh
    everything = write(
        tmp_path / "all",
        a=scope.policy("alpha"),
        b=scope.policy("beta"),
        c=scope.policy("other", team="search"),
    )
    assert mesh.cli("apply", "-f", str(everything))[0] == 0
    only_alpha = write(tmp_path / "one", a=scope.policy("alpha"))
    alpha, beta, other = scope.name("alpha"), scope.name("beta"), scope.name("other")

    status, out = mesh.cli("apply", "-f", str(only_alpha))
    assert status == 0 and "pruned" not in out
    assert set(scope.policies()) == {alpha, beta}

    selector = scope.team()
    status, out = mesh.cli("apply", "-f", str(only_alpha), "--prune", "-l", selector, "--dry-run")
    assert status == 0 and f"policy/{beta} pruned (dry run)" in out
    assert set(scope.policies()) == {alpha, beta}

    status, out = mesh.cli("apply", "-f", str(only_alpha), "--prune", "-l", selector)
    assert status == 0, out
    assert f"policy/{beta} pruned" in out and other not in out
    assert set(scope.policies()) == {alpha}
    assert set(scope.policies("search")) == {other}


def test_one_invalid_document_applies_nothing_and_names_where(scope: Scope, tmp_path: Path) -> None:
    bad = scope.policy("beta").replace("127.0.10.2", "127.0.10.999")
    folder = write(tmp_path / "p", a=scope.policy("alpha") + "---\n" + bad)
    status, out = scope.mesh.cli("apply", "-f", str(folder))
    assert status == 1
    assert "a.yaml (document 2)" in out and "spec.endpoints[1].address" in out
    assert scope.policies() == {}


def test_get_formats_and_delete(scope: Scope, tmp_path: Path) -> None:
    mesh, alpha, beta = scope.mesh, scope.name("alpha"), scope.name("beta")
    folder = write(tmp_path / "p", a=scope.policy("alpha"), b=scope.policy("beta", team="search"))
    assert mesh.cli("apply", "-f", str(folder))[0] == 0

    status, out = mesh.cli("get", "policies", "-l", scope.team(), role="viewer")
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DOMAIN", "STRATEGY", "ENDPOINTS", "TTL", "REVISION"]
    assert lines[1].split()[:5] == [alpha, f"{alpha}.mesh.internal", "weighted", "2", "5"]
    assert len(lines) == 2

    done = mesh.run("get", "policies", "-l", scope.team("search"), "-o", "yaml", role="viewer")
    assert done.returncode == 0, done.stderr
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(done.stdout)] == [beta]

    done = mesh.run("get", "policy", alpha, "-o", "json", role="viewer")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spec"]["domain"] == f"{alpha}.mesh.internal"

    status, out = mesh.cli("get", "policy", "nosuch", role="viewer")
    assert status == 1 and "no policy named 'nosuch'" in out

    status, out = mesh.cli("delete", "policy", alpha)
    assert status == 0 and f"policy/{alpha} deleted" in out
    assert scope.policies() == {}
    status, out = mesh.cli("delete", "policy", alpha)
    assert status == 1 and "404" in out


def test_refused_tokens_and_an_unreachable_controller_say_so(scope: Scope, tmp_path: Path) -> None:
    mesh = scope.mesh
    folder = write(tmp_path / "p", a=scope.policy("alpha"))

    status, out = mesh.cli("apply", "-f", str(folder), role="dnsm_not_a_real_token")
    assert status == 1 and "refused the token" in out and "DNSMESH_TOKEN" in out

    status, out = mesh.cli("apply", "-f", str(folder), role="viewer")
    assert status == 1 and "403" in out and "role 'viewer' may not write policies" in out
    assert "forbidden" not in out  # the sentence, not the error code
    assert scope.policies() == {}

    nowhere = f"http://127.0.0.1:{free_port()}"
    status, out = mesh.cli("get", "policies", server=nowhere)
    assert status == 1 and f"cannot reach the controller at {nowhere}" in out


def test_explain_and_what_if(scope: Scope, tmp_path: Path) -> None:
    name = scope.name("shop")
    folder = write(tmp_path / "now", **{name: scope.policy("shop")})
    assert scope.mesh.cli("apply", "-f", str(folder))[0] == 0
    status, text = scope.mesh.cli("explain", name, "--client", "127.0.0.1", role="viewer")
    assert status == 0, text
    assert "slice _default" in text and "90.0%" in text and "10.0%" in text
    done = scope.mesh.run(
        "explain", f"{name}.mesh.internal", "--client", "::1", "-o", "json", role="viewer"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["distribution"]["A"]["shares"]["127.0.10.2"] == 0.1
    proposed = write(tmp_path / "next", **{name: scope.policy("shop", weight=30)})
    status, text = scope.mesh.cli(
        "explain", name, "--client", "127.0.0.1", "--with-file", str(proposed), role="viewer"
    )
    assert status == 0, text
    assert "BEFORE" in text and "90.0%" in text and "75.0%" in text
    broken = write(tmp_path / "bad", **{name: scope.policy("shop", weight=-1)})
    status, text = scope.mesh.cli(
        "explain", name, "--client", "127.0.0.1", "--with-file", str(broken), role="viewer"
    )
    assert status != 0 and "weight" in text
    status, text = scope.mesh.cli("explain", "nope", "--client", "127.0.0.1", role="viewer")
    assert status != 0 and "nope" in text
    status, text = scope.mesh.cli("explain", name, "--client", "bad", role="viewer")
    assert status != 0 and "client" in text


BLUE_GREEN = """\
apiVersion: dnsmesh/v1
kind: Policy
metadata: {{name: {name}}}
spec:
  domain: {name}.mesh.internal
  endpoints:
    - {{address: 127.0.11.1, group: blue}}
    - {{address: 127.0.11.2, group: green}}
  split: {{shares: {{blue: 100, green: 0}}}}
"""


def test_rollout_switch_moves_a_blue_green_split_and_undo_puts_it_back(
    scope: Scope, tmp_path: Path
) -> None:
    mesh, name = scope.mesh, scope.name("bg")
    status, out = mesh.cli(
        "apply", "-f", str(write(tmp_path / "p", a=BLUE_GREEN.format(name=name)))
    )
    assert status == 0, out
    status, out = mesh.cli("rollout", "switch", name, "--to", "green")
    assert status == 0 and f"policy/{name} switched to green" in out, out
    doc = json.loads(mesh.run("get", "policy", name, "-o", "json", role="viewer").stdout)
    assert doc["spec"]["split"]["shares"] == {"blue": 0, "green": 100}
    status, out = mesh.cli("rollout", "status", name, role="viewer")
    assert status != 0, out
    status, out = mesh.cli("rollout", "undo", name)
    assert status == 0 and "put back" in out, out
    doc = json.loads(mesh.run("get", "policy", name, "-o", "json", role="viewer").stdout)
    assert doc["spec"]["split"]["shares"] == {"blue": 100, "green": 0}
