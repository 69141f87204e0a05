"""An update the agent cannot apply is NACKed, shown in ``GET /v1/agents``, and changes no
answer: a controller policy whose domain is already served by the agent's local file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.mesh_support import agent_id, agent_process, ask, mesh
from tests.integration.sync_support import policy
from tests.support.polling import wait_until


def test_an_unappliable_update_is_nacked_reported_and_changes_no_answer(tmp_path: Path) -> None:
    local = tmp_path / "local.yaml"
    local.write_text(json.dumps(policy("node-pay", ["127.0.50.1"], domain="pay.mesh.internal")))
    with mesh(tmp_path) as m:
        good = m.rest.put(policy("web", ["127.0.10.1"]))
        with agent_process(m.agent_args("state", "--policies", str(local))) as agent:
            wait_until(lambda: ask(agent, "web.mesh.internal") == ["127.0.10.1"], 5, "snapshot")
            me = agent_id(agent)

            # The controller's set at this revision clashes with the local file: the whole
            # revision is refused (nothing half-applied) and the agent keeps the previous one.
            refused = m.rest.put(policy("payments", ["127.0.60.1"], domain="pay.mesh.internal"))
            row = wait_until(
                lambda: (a := m.rest.agent(me)) and a["last_nack"] and a, 5, "the NACK"
            )
            nack = row["last_nack"]
            assert nack["revision"] == refused
            assert str(local) in nack["reason"] and "'pay.mesh.internal'" in nack["reason"]
            assert row["applied_revision"] == good and row["connected"]
            logged = agent.wait_event("sync.nack")[0]
            assert logged["revision"] == refused and str(local) in logged["reason"]
            assert ask(agent, "pay.mesh.internal") == ["127.0.50.1"]
            assert ask(agent, "web.mesh.internal") == ["127.0.10.1"]

            # Convergence shows the agent behind the refused revision.
            view = m.rest.http.get(f"/v1/revisions/{refused}").json()
            assert [p["agent_id"] for p in view["pending"]] == [me]

            # The operator resolves it on the controller: the next revision applies.
            fixed = m.rest.put(policy("payments", ["127.0.60.1"], domain="pay2.mesh.internal"))
            wait_until(lambda: ask(agent, "pay2.mesh.internal") == ["127.0.60.1"], 3, "the fix")
            assert ask(agent, "pay.mesh.internal") == ["127.0.50.1"]
            wait_until(lambda: (a := m.rest.agent(me)) and a["applied_revision"] == fixed, 5, "ACK")
