"""A controller policy that clashes with the agent's local file is shadowed on that node, not
refused: ``dnsmesh agent`` applies the revision and the ones after it, keeps answering the
clashing domain from its file, and ``GET /v1/agents`` and convergence show it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.mesh_support import agent_id, agent_process, ask, mesh
from tests.integration.sync_support import policy
from tests.support.polling import wait_until


def test_a_clashing_update_is_applied_shadowed_and_reported(tmp_path: Path) -> None:
    local = tmp_path / "local.yaml"
    local.write_text(json.dumps(policy("node-pay", ["127.0.50.1"], domain="pay.mesh.internal")))
    with mesh(tmp_path) as m:
        m.rest.put(policy("web", ["127.0.10.1"]))
        with agent_process(m.agent_args("state", "--policies", str(local))) as agent:
            wait_until(lambda: ask(agent, "web.mesh.internal") == ["127.0.10.1"], 5, "snapshot")
            me = agent_id(agent)
            wait_until(lambda: (a := m.rest.agent(me)) and a["local_policies"], 5, "the hello")

            clashing = m.rest.put(
                policy("payments", ["127.0.60.1"], domain="pay.mesh.internal"), force=True
            )
            row = wait_until(
                lambda: (a := m.rest.agent(me)) and a["applied_revision"] == clashing and a,
                5,
                "the ACK of the clashing revision",
            )
            assert row["last_nack"] is None and row["connected"]
            (shadowed,) = row["shadowed"]
            assert shadowed["name"] == "payments" and str(local) in shadowed["reason"]
            logged = agent.wait_event("sync.policies_shadowed")[0]
            assert logged["revision"] == clashing and logged["shadowed"] == ["payments"]
            assert ask(agent, "pay.mesh.internal") == ["127.0.50.1"]

            # Convergence counts the agent: it runs the revision.
            view = m.rest.http.get(f"/v1/revisions/{clashing}").json()
            assert view["pending"] == [] and view["converged"] == view["total"] == 1

            # The next revision applies too.
            later = m.rest.put(policy("web", ["127.0.10.2"]))
            wait_until(lambda: ask(agent, "web.mesh.internal") == ["127.0.10.2"], 3, "later")
            wait_until(lambda: (a := m.rest.agent(me)) and a["applied_revision"] == later, 5, "ACK")
            assert ask(agent, "pay.mesh.internal") == ["127.0.50.1"]
