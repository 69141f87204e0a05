"""deploy/docker/compose.yaml: it parses, its services are wired as the README says, and
every dnsmesh command in it is one the real parser accepts. (No `docker compose config`:
there is no compose plugin here, and validation by the compose schema needs it.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.commands import DNSMESH_ENTRY_POINTS, parse, shell_invocations

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy/docker/compose.yaml"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE.read_text())
    return {name: _unescaped(spec) for name, spec in document["services"].items()}


def _unescaped(value: Any) -> Any:
    """Compose's `$$` is a literal `$` in the container."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_unescaped(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescaped(v) for k, v in value.items()}
    return value


def dnsmesh_commands(spec: dict[str, Any]) -> list[list[str]]:
    """The argvs (after `dnsmesh`) a service runs: its command after a dnsmesh entry point
    (the image's own is `dnsmesh`), or each dnsmesh line of its `sh -c` script."""
    entrypoint = spec.get("entrypoint", ["dnsmesh"])
    command = spec.get("command", [])
    if entrypoint[0] in DNSMESH_ENTRY_POINTS:
        return [[*entrypoint[1:], *command]]
    assert entrypoint[0] == "/bin/sh", f"unexpected entry point {entrypoint}"
    return [argv for script in command for argv in shell_invocations(script)]


def test_every_dnsmesh_command_is_accepted_by_the_real_parser(
    services: dict[str, dict[str, Any]],
) -> None:
    seen = set()
    for name, spec in services.items():
        if name == "postgres":
            continue
        commands = dnsmesh_commands(spec)
        assert commands, f"{name} runs no dnsmesh command"
        for argv in commands:
            parse(argv)
            seen.add(tuple(argv[:2]))
    assert {("db", "upgrade"), ("controller", "--listen=0.0.0.0:8053"), ("apply", "-f")} <= seen
    assert ("token", "create") in seen and ("ca", "export") in seen


def test_two_tls_controllers_share_one_ca_and_start_one_after_the_other(
    services: dict[str, dict[str, Any]],
) -> None:
    controllers = [services["controller-1"], services["controller-2"]]
    for spec in controllers:
        args = parse(spec["command"])
        assert args.tls and str(args.data_dir) == "/var/lib/dnsmesh"
        assert "controller" in args.tls_san
        assert "controller-data:/var/lib/dnsmesh" in spec["volumes"]
        assert spec["networks"]["mesh"]["aliases"] == ["controller"]
    assert controllers[0]["hostname"] == controllers[1]["hostname"]
    assert controllers[0]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"}
    }
    assert controllers[1]["depends_on"] == {"controller-1": {"condition": "service_healthy"}}


def test_the_agent_verifies_the_controller_and_never_sees_the_ca_key(
    services: dict[str, dict[str, Any]],
) -> None:
    agent = services["agent"]
    args = parse(dnsmesh_commands(agent)[0])
    assert args.controller == ["https://controller:8053"]
    assert str(args.ca_file) == "/srv/dnsmesh/ca-bundle.pem"
    assert args.join_token_file and args.node_name == "agent-1"
    assert not any(v.startswith("controller-data:") for v in agent["volumes"])
    assert agent["entrypoint"] == ["dnsmesh-netcaps"]
    assert agent["cap_drop"] == ["ALL"]
    assert sorted(agent["cap_add"]) == ["NET_BIND_SERVICE", "NET_RAW"]
    # no-new-privileges would stop the interpreter's file capabilities.
    assert "no-new-privileges:true" not in agent.get("security_opt", [])
    address = agent["networks"]["mesh"]["ipv4_address"]
    assert any(address.startswith(cidr.split("/")[0][:-1]) for cidr in args.allow)


def test_every_other_dnsmesh_service_runs_without_any_capability(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, spec in services.items():
        if name in ("postgres", "agent"):
            continue
        assert spec["cap_drop"] == ["ALL"] and "cap_add" not in spec, name
        assert spec["security_opt"] == ["no-new-privileges:true"], name
        assert spec["read_only"] is True and spec["user"] == "10001:10001", name


def test_the_example_policies_are_applied_after_the_tokens_exist(
    services: dict[str, dict[str, Any]],
) -> None:
    apply = services["apply"]
    assert "../../policies:/policies:ro" in apply["volumes"]
    assert (COMPOSE.parent / "../../policies").resolve() == ROOT / "policies"
    assert apply["depends_on"]["init"] == {"condition": "service_completed_successfully"}
    assert apply["environment"]["DNSMESH_CA_FILE"] == "/srv/dnsmesh/ca-bundle.pem"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
