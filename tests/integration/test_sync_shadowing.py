"""A clash between a controller policy and an agent's local ``--policies`` file, end to end
against a real ``dnsmesh controller``: the node keeps following the controller (the local
file wins only the clashing name), ``GET /v1/agents`` and ``dnsmesh get agents`` show what
is shadowed, and the controller refuses a write that would clash (409) unless forced.

SyncedAgents run in-process on the test loop, over the WebSocket and over HTTP polling;
answers are checked with dnspython on loopback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.controller_support import run_cli
from tests.integration.fakedns import LoopThread
from tests.integration.sync_support import (
    Controller,
    Rest,
    Synced,
    SyncedAgents,
    migrated_sqlite,
    mint_tokens,
    policy,
    running_controller,
)
from tests.support.polling import wait_until

TRANSPORTS = {"ws": "websocket", "http": "poll"}


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[Controller, Rest, dict[str, str]]]:
    url = migrated_sqlite(tmp_path / "db")
    tokens = mint_tokens(url)
    with running_controller(url, tmp_path) as controller:
        rest = Rest(controller.url, tokens["admin"])
        try:
            yield controller, rest, tokens
        finally:
            rest.close()


@pytest.fixture
def agents(loop_thread: LoopThread, tmp_path: Path) -> Iterator[SyncedAgents]:
    started = SyncedAgents(loop_thread, tmp_path)
    yield started
    started.stop_all()


def local_file(path: Path, *docs: dict[str, Any]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n---\n".join(json.dumps(d) for d in docs))
    tmp.replace(path)
    return path


def row_where(rest: Rest, agent: Synced, what: str, check: Any) -> dict[str, Any]:
    """The agent's row in GET /v1/agents once ``check(row)`` holds."""
    row: dict[str, Any] = wait_until(
        lambda: (a := rest.agent(agent.agent_id)) is not None and check(a) and a, 5, what
    )
    return row


def shadowed_names(row: dict[str, Any]) -> list[str] | None:
    shadowed = row.get("shadowed")
    return None if shadowed is None else [s["name"] for s in shadowed]


@pytest.mark.parametrize("mode", ["ws", "http"])
def test_a_clash_shadows_one_policy_and_later_revisions_still_apply(
    mesh: tuple[Controller, Rest, dict[str, str]],
    agents: SyncedAgents,
    tmp_path: Path,
    mode: str,
) -> None:
    controller, rest, tokens = mesh
    local = local_file(tmp_path / "local.yaml", policy("mine", ["127.0.50.1"], domain="pay.mesh"))
    agent = agents.start(controller.url, tokens["agent"], policies=local, mode=mode)
    wait_until(lambda: agent.transport == TRANSPORTS[mode], 5, "connected")
    assert agent.resolve("pay.mesh") == ["127.0.50.1"]

    # A (forced past the controller's own check) takes the local file's domain.
    clashing = rest.put(policy("payments", ["127.0.60.1"], domain="pay.mesh"), force=True)
    row = row_where(
        rest, agent, "the ACK of the clashing revision", lambda a: a["applied_revision"] >= clashing
    )
    assert row["last_nack"] is None  # applied, not refused
    assert shadowed_names(row) == ["payments"]
    reason = row["shadowed"][0]["reason"]
    assert str(local) in reason and "'pay.mesh'" in reason and "'mine'" in reason
    assert row["local_policies"] == [
        {"name": "mine", "domain": "pay.mesh", "source": f"{local} (document 1)"}
    ]
    assert agent.resolve("pay.mesh") == ["127.0.50.1"]  # the local file keeps its name

    # B, unrelated, is applied and answered on that node: the clash froze nothing.
    unrelated = rest.put(policy("web", ["127.0.10.1"]))
    wait_until(lambda: agent.resolve("web.mesh.internal") == ["127.0.10.1"], 3, "B answered")
    row = row_where(rest, agent, "B ACKed", lambda a: a["applied_revision"] == unrelated)
    assert shadowed_names(row) == ["payments"] and row["last_nack"] is None
    assert agent.resolve("pay.mesh") == ["127.0.50.1"]

    # Editing the local file away from the clash serves A and clears `shadowed`.
    local_file(local, policy("mine", ["127.0.50.1"], domain="other.mesh"))
    wait_until(lambda: agent.resolve("pay.mesh") == ["127.0.60.1"], 3, "A served")
    row = row_where(rest, agent, "shadowed cleared", lambda a: a["shadowed"] == [])
    assert row["applied_revision"] == unrelated
    assert row["local_policies"][0]["domain"] == "other.mesh"
    assert agent.resolve("other.mesh") == ["127.0.50.1"]


@pytest.mark.parametrize("mode", ["ws", "http"])
def test_a_restarted_agent_reports_what_it_shadows_from_its_state_file_and_files(
    mesh: tuple[Controller, Rest, dict[str, str]],
    agents: SyncedAgents,
    tmp_path: Path,
    mode: str,
) -> None:
    controller, rest, tokens = mesh
    local = local_file(tmp_path / "local.yaml", policy("mine", ["127.0.50.1"], domain="a.mesh"))
    agent = agents.start(controller.url, tokens["agent"], policies=local, mode=mode)
    head = rest.put(policy("payments", ["127.0.60.1"], domain="pay.mesh"))
    wait_until(lambda: agent.resolve("pay.mesh") == ["127.0.60.1"], 5, "served")
    row_where(rest, agent, "ACKed, nothing shadowed", lambda a: a["applied_revision"] == head)
    agents.stop(agent)

    # While the agent is down its file comes to clash (the controller could not refuse it).
    local_file(local, policy("mine", ["127.0.50.1"], domain="pay.mesh"))
    again = agents.start(controller.url, tokens["agent"], policies=local, mode=mode)
    assert again.agent_id == agent.agent_id
    assert again.resolve("pay.mesh") == ["127.0.50.1"]
    # No revision moved: the hello (or the first poll report) says what is shadowed now.
    row = row_where(
        rest, again, "shadowed after the restart", lambda a: a["connected"] and a["shadowed"]
    )
    assert shadowed_names(row) == ["payments"] and row["applied_revision"] == head


def test_a_write_clashing_with_a_connected_agents_local_file_is_refused_unless_forced(
    mesh: tuple[Controller, Rest, dict[str, str]],
    agents: SyncedAgents,
    tmp_path: Path,
) -> None:
    controller, rest, tokens = mesh
    rest.put(policy("payments", ["127.0.60.1"], domain="pay.example"))
    local = local_file(
        tmp_path / "local.yaml",
        policy("mine", ["127.0.50.1"], domain="pay.mesh"),
        policy("web", ["127.0.50.2"]),
        policy("spare", ["127.0.50.3"]),
    )
    agent = agents.start(controller.url, tokens["agent"], policies=local)
    row_where(rest, agent, "local policies reported", lambda a: a["local_policies"])
    head = rest.http.get("/v1/policies").json()["revision"]

    def refused(response: Any, path: str) -> str:
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "local_policy_clash"
        assert agent.agent_id in error["message"] and str(local) in error["message"]
        assert "force" in error["message"]
        assert error["fields"][0]["path"] == path
        return str(error["message"])

    # A new policy on the local file's domain, by PUT.
    message = refused(
        rest.http.put("/v1/policies/pay", json=policy("pay", ["127.0.60.2"], domain="pay.mesh")),
        "spec.domain",
    )
    assert "'pay.mesh'" in message and "local policy 'mine'" in message
    # A new policy with a local policy's name, by POST.
    message = refused(
        rest.http.post("/v1/policies", json=policy("web", ["127.0.10.1"])), "metadata.name"
    )
    assert "local policy 'web'" in message
    # An existing policy moved onto the local domain.
    refused(
        rest.http.put(
            "/v1/policies/payments", json=policy("payments", ["127.0.60.1"], domain="pay.mesh")
        ),
        "spec.domain",
    )
    # Nothing was written.
    assert rest.http.get("/v1/policies").json()["revision"] == head
    assert rest.http.get("/v1/policies/pay").status_code == 404
    assert rest.http.get("/v1/policies/payments").json()["spec"]["domain"] == "pay.example"

    # Forced, it is stored; the agent shadows it.
    forced = rest.http.put(
        "/v1/policies/pay",
        params={"force": "true"},
        json=policy("pay", ["127.0.60.2"], domain="pay.mesh"),
    )
    assert forced.status_code == 201, forced.text
    # A later edit that keeps its name and domain is no new clash.
    edited = rest.http.put(
        "/v1/policies/pay", json=policy("pay", ["127.0.60.3"], domain="pay.mesh")
    )
    assert edited.status_code == 200, edited.text
    row = row_where(rest, agent, "shadowed", lambda a: a["shadowed"])
    assert shadowed_names(row) == ["pay"]

    # The CLI says so too, and --force writes.
    env = {**os.environ, "DNSMESH_SERVER": controller.url, "DNSMESH_TOKEN": tokens["admin"]}
    yaml_file = tmp_path / "web.yaml"
    yaml_file.write_text(json.dumps(policy("web", ["127.0.10.1"])))
    done = run_cli("apply", "-f", str(yaml_file), cwd=tmp_path, env=env)
    assert done.returncode != 0
    assert "policy/web refused" in done.stdout and "clashes with agents' local" in done.stdout
    assert "nothing was applied" in done.stderr
    assert rest.http.get("/v1/policies/web").status_code == 404
    done = run_cli("apply", "--force", "-f", str(yaml_file), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "policy/web created" in done.stdout
    listed = run_cli("get", "agents", cwd=tmp_path, env=env)
    assert "SHADOWED" in listed.stdout
    line = next(x for x in listed.stdout.splitlines() if x.startswith(agent.agent_id))
    assert "2 (" in line and "pay" in line and "web" in line

    # An agent that is gone does not block writes.
    assert (
        rest.http.put("/v1/policies/spare", json=policy("spare", ["127.0.70.1"])).status_code == 409
    )
    agents.stop(agent)
    row_where(rest, agent, "disconnected", lambda a: not a["connected"])
    spare = rest.http.put("/v1/policies/spare", json=policy("spare", ["127.0.70.1"]))
    assert spare.status_code == 201, spare.text
