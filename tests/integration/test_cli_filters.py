"""``dnsmesh get`` filters filter, ``delete agent`` forgets a gone node, and the CLI refuses
options it would otherwise ignore."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from tests.integration.push_support import TestAgent
from tests.integration.test_cli_client import Mesh, Scope, write

# The fixtures, re-exported: one controller per backend for this module too.
from tests.integration.test_cli_client import mesh as mesh
from tests.integration.test_cli_client import scope as scope
from tests.support.polling import wait_until


def _report_as_polling_agent(mesh: Mesh, agent_id: str, node: str, labels: dict[str, str]) -> None:
    """What a polling agent posts after each update: it is then listed, and connected."""
    response = httpx.post(
        f"{mesh.url}/v1/agents/{agent_id}/ack",
        headers={"Authorization": f"Bearer {mesh.tokens['agent']}"},
        json={"node_name": node, "labels": labels, "software": "test", "revision": 0},
        trust_env=False,
        timeout=10,
    )
    assert response.status_code == 200, response.text


def _agents(mesh: Mesh, *args: str) -> list[str]:
    done = mesh.run("get", "agents", *args, "-o", "json", role="viewer")
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(agent["agent_id"] for agent in json.loads(done.stdout))


def test_get_agents_filters_by_label_and_by_id_or_node_name(scope: Scope) -> None:
    mesh, tag = scope.mesh, scope.tag
    for number, zone in ((1, "east"), (2, "east"), (3, "west")):
        labels = {"zone": f"{zone}-{tag}", "rack": str(number)}
        _report_as_polling_agent(mesh, f"a{number}-{tag}", f"node{number}-{tag}", labels)

    assert _agents(mesh, "-l", f"zone=east-{tag}") == [f"a1-{tag}", f"a2-{tag}"]
    assert _agents(mesh, "-l", f"zone=east-{tag}", "-l", "rack=2") == [f"a2-{tag}"]
    assert _agents(mesh, f"node3-{tag}") == [f"a3-{tag}"]  # by node name
    assert _agents(mesh, f"a1-{tag}") == [f"a1-{tag}"]  # by agent id

    status, out = mesh.cli("get", "agents", f"nosuch-{tag}", role="viewer")
    assert status == 1
    assert f"no agent has the id or node name 'nosuch-{tag}'" in out


def test_get_endpoints_filters_by_the_policies_labels(scope: Scope, tmp_path: Path) -> None:
    mesh = scope.mesh
    search = scope.policy("beta", team="search").replace("127.0.10.", "127.0.11.")
    folder = write(tmp_path / "p", a=scope.policy("alpha"), b=search)
    assert mesh.cli("apply", "-f", str(folder))[0] == 0

    def addresses(*args: str) -> set[str]:
        done = mesh.run("get", "endpoints", *args, "-o", "json", role="viewer")
        assert done.returncode == 0, done.stdout + done.stderr
        return {item["address"] for item in json.loads(done.stdout)["items"]}

    assert addresses("-l", scope.team("search")) == {"127.0.11.1", "127.0.11.2"}
    assert addresses("-l", scope.team("pay")) == {"127.0.10.1", "127.0.10.2"}
    assert addresses("-l", scope.team("nobody")) == set()
    assert addresses(scope.name("beta"), "-l", scope.team("pay")) == set()  # both must hold


def test_delete_agent_forgets_a_gone_node_and_refuses_a_connected_one(scope: Scope) -> None:
    mesh, tag = scope.mesh, scope.tag
    gone, polling = f"gone-{tag}", f"polling-{tag}"
    ws_url = mesh.url.replace("http://", "ws://") + "/v1/agents/stream"

    async def connect_then_leave() -> None:
        agent = await TestAgent.connect(ws_url, mesh.tokens["agent"], agent_id=gone)
        await agent.next()  # the snapshot: the hello was recorded
        await agent.close()

    asyncio.run(connect_then_leave())
    wait_until(lambda: _connected(mesh, gone) is False, timeout=10)
    _report_as_polling_agent(mesh, polling, f"node-{polling}", {})
    assert _connected(mesh, polling) is True

    status, out = mesh.cli("delete", "agent", polling)
    assert status == 1 and f"agent {polling!r} is connected; stop it first" in out
    assert _agents(mesh, polling) == [polling]

    status, out = mesh.cli("delete", "agent", gone)
    assert status == 0 and f"agent/{gone} deleted" in out
    assert gone not in _agents(mesh)

    status, out = mesh.cli("delete", "agent", gone)
    assert status == 1 and f"no agent has the id {gone!r}" in out and "404" in out


def _connected(mesh: Mesh, agent_id: str) -> bool | None:
    done = mesh.run("get", "agents", "-o", "json", role="viewer")
    for agent in json.loads(done.stdout):
        if agent["agent_id"] == agent_id:
            return bool(agent["connected"])
    return None


def test_options_that_would_be_ignored_are_refused(scope: Scope, tmp_path: Path) -> None:
    mesh = scope.mesh
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a policy\n")
    status, out = mesh.cli("apply", "-f", str(empty))
    assert status == 1 and f"{empty} holds no policy" in out

    folder = write(tmp_path / "p", a=scope.policy("alpha"))
    status, out = mesh.cli("apply", "-f", str(folder), "-l", scope.team())
    assert status == 1 and "give --prune or drop -l" in out
    assert scope.policies() == {}  # refused before anything was sent

    assert mesh.cli("apply", "-f", str(folder))[0] == 0
    status, out = mesh.cli("get", "policy", scope.name("alpha"), "-l", scope.team("search"))
    assert status == 1 and f"no policy named {scope.name('alpha')!r} with labels" in out
