"""Drains end to end: a real controller and agent process, the real CLI, DNS by dnspython.

A drain is a revision pushed to the agent, which stops answering the address; ``--for``
makes it expire by itself (another revision); a drain past a policy's safety rule is a 409
and the CLI exits 1 saying which rule, unless ``--force``. One controller and one agent
serve the module; each test has its own policy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.health_support import answers, time_until
from tests.e2e.mesh_support import Mesh, agent_process, mesh
from tests.integration.conftest import AgentProcess
from tests.integration.controller_support import run_cli
from tests.support.policies import policy_doc


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, AgentProcess]]:
    tmp = tmp_path_factory.mktemp("drains")
    with mesh(tmp) as m, agent_process(m.agent_args("state", "--no-probes")) as agent:
        agent.wait_event("sync.connected")
        yield m, agent


def _cli(m: Mesh, *args: str) -> Any:
    env = {**os.environ, "DNSMESH_SERVER": m.controller.url, "DNSMESH_TOKEN": m.tokens["admin"]}
    return run_cli(*args, cwd=m.tmp, env=env)


def _policy(m: Mesh, name: str, hosts: list[str], **spec: Any) -> str:
    endpoints = [{"address": h, "weight": 1} for h in hosts]
    m.rest.put(policy_doc(name, endpoints, domain=f"{name}.drain.test", ttl=0, **spec))
    return f"{name}.drain.test"


def _seen(agent: AgentProcess, name: str) -> set[str]:
    return set(answers(agent, name, 30))


def _item(m: Mesh, address: str, policy: str) -> dict[str, Any]:
    listed = m.rest.http.get("/v1/endpoints", params={"policy": policy}).json()
    found: dict[str, Any] = next(i for i in listed["items"] if i["address"] == address)
    return found


def test_a_drain_is_pushed_the_agent_stops_answering_and_it_expires_by_itself(
    setup: tuple[Mesh, AgentProcess],
) -> None:
    m, agent = setup
    a, b = "127.0.31.1", "127.0.31.2"
    name = _policy(m, "web", [a, b])
    time_until(lambda: _seen(agent, name) == {a, b}, 10, "both endpoints answered", 0.05)
    drained = _cli(m, "endpoint", "drain", a, "--for", "4s")
    assert drained.returncode == 0, drained.stderr
    assert f"endpoint/{a} drained in every policy until" in drained.stdout
    item = _item(m, a, "web")
    assert item["admin_state"] == "drained"
    assert item["drains"][0]["drained_by"].startswith("admin") and item["drains"][0]["until"]
    table = _cli(m, "get", "endpoints", "web")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith(a))
    assert "drained(*" in row
    time_until(lambda: _seen(agent, name) == {b}, 3, "the drain reaching the agent", 0.05)
    # --for 4s: the controller ends it (its own revision) and the agent answers a again
    time_until(lambda: a in _seen(agent, name), 10, "the drain expiring", 0.1)
    assert _item(m, a, "web")["admin_state"] == "up"
    audit = m.rest.http.get("/v1/audit", params={"limit": 10}).json()["items"]
    operations = [(e["actor"].split("-")[0], e["operation"]) for e in audit]
    assert ("drain", "endpoint.undrain") in operations  # actor drain-expiry
    assert ("admin", "endpoint.drain") in operations


def test_a_drain_past_a_safety_rule_is_refused_unless_forced(
    setup: tuple[Mesh, AgentProcess],
) -> None:
    m, agent = setup
    a, b, c = "127.0.32.1", "127.0.32.2", "127.0.32.3"
    name = _policy(m, "pay", [a, b, c], safety={"min_endpoints": 2})
    time_until(lambda: _seen(agent, name) == {a, b, c}, 10, "every endpoint answered", 0.05)
    first = m.rest.http.post(f"/v1/endpoints/{a}/drain", json={"policy": "pay"})
    assert first.status_code == 201, first.text
    refused = _cli(m, "endpoint", "drain", b, "--policy", "pay")
    assert refused.returncode == 1
    assert "spec.safety.min_endpoints" in refused.stderr and "'pay'" in refused.stderr
    assert "HTTP 409" in refused.stderr
    over_rest = m.rest.http.post(f"/v1/endpoints/{b}/drain", json={"policy": "pay"})
    assert over_rest.status_code == 409
    assert over_rest.json()["error"]["code"] == "safety_min_endpoints"
    assert _item(m, b, "pay")["admin_state"] == "up"  # nothing stored
    # bad input: 422 naming the field, nothing stored
    bad_for = m.rest.http.post(f"/v1/endpoints/{b}/drain", json={"for": "soon"})
    assert bad_for.status_code == 422
    assert [f["path"] for f in bad_for.json()["error"]["fields"]] == ["for"]
    bad_address = m.rest.http.post("/v1/endpoints/not-an-ip/drain", json={})
    assert bad_address.status_code == 422
    assert [f["path"] for f in bad_address.json()["error"]["fields"]] == ["address"]
    unknown = m.rest.http.post("/v1/endpoints/127.0.99.9/drain", json={})
    assert unknown.status_code == 422
    forced = _cli(m, "endpoint", "drain", b, "--policy", "pay", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "forced past a safety rule" in forced.stderr
    time_until(lambda: _seen(agent, name) == {c}, 10, "the forced drain reaching the agent", 0.05)
    audit = m.rest.http.get("/v1/audit", params={"limit": 10}).json()["items"]
    refusals = [e for e in audit if e["operation"] == "endpoint.drain_refused"]
    assert refusals and refusals[0]["after"]["refused"][0]["rule"] == "min_endpoints"
    assert any(e["after"].get("forced_past") for e in audit if e["operation"] == "endpoint.drain")
    undrained = _cli(m, "endpoint", "undrain", a, "--policy", "pay")
    assert undrained.returncode == 0 and "undrained in policy pay" in undrained.stdout
    assert m.rest.http.delete(f"/v1/endpoints/{b}/drain?policy=pay").status_code == 200
    time_until(lambda: _seen(agent, name) == {a, b, c}, 10, "the undrains", 0.05)
    again = m.rest.http.delete(f"/v1/endpoints/{a}/drain?policy=pay")
    assert again.status_code == 404 and "not drained" in again.json()["error"]["message"]
