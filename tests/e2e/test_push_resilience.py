"""The agent rides out its controller: a killed controller leaves the answers alone, a
restarted one is rejoined with the changes made meanwhile, and an agent restarted while
the controller is down answers from its state file."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.mesh_support import agent_id, agent_process, ask, mesh
from tests.integration.sync_support import Controller, policy
from tests.support.polling import wait_until


def test_a_killed_controller_is_rejoined_with_the_changes_made_meanwhile(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.rest.put(policy("web", ["127.0.10.1"]))
        m.rest.put(policy("db", ["127.0.20.1"]))
        with agent_process(m.agent_args()) as agent:
            wait_until(lambda: ask(agent, "web.mesh.internal") == ["127.0.10.1"], 5, "snapshot")
            connections = len(agent.events("sync.connected"))

            m.controller.kill()
            agent.wait_event("sync.disconnected")
            for _ in range(5):  # still answering from the last good snapshot
                assert ask(agent, "web.mesh.internal") == ["127.0.10.1"]
                assert ask(agent, "db.mesh.internal") == ["127.0.20.1"]

            # Meanwhile another controller on the same database takes changes.
            other = Controller(m.database_url, tmp_path).start()
            try:
                m.rest.http.base_url = other.url
                m.rest.put(policy("web", ["127.0.10.2"]))
                last = m.rest.delete("db")
            finally:
                other.stop()
            assert ask(agent, "web.mesh.internal") == ["127.0.10.1"]

            m.controller.start()  # the same port: the agent's URL did not change
            m.rest.http.base_url = m.controller.url
            wait_until(lambda: ask(agent, "web.mesh.internal") == ["127.0.10.2"], 10, "rejoin")
            assert ask(agent, "db.mesh.internal") == []
            assert len(agent.events("sync.connected")) > connections
            wait_until(
                lambda: (
                    (a := m.rest.agent(agent_id(agent)))
                    and a["connected"]
                    and a["applied_revision"] == last
                ),
                5,
                "the controller seeing the agent converge",
            )


def test_an_agent_restarted_while_the_controller_is_down_answers_from_its_state_file(
    tmp_path: Path,
) -> None:
    with mesh(tmp_path) as m:
        m.rest.put(policy("web", ["127.0.10.1", "127.0.10.2"], answers=2))
        revision = m.rest.put(policy("api", ["127.0.30.1"]))
        with agent_process(m.agent_args()) as agent:
            wait_until(lambda: ask(agent, "api.mesh.internal") == ["127.0.30.1"], 5, "snapshot")
            first_id = agent_id(agent)
        m.controller.kill()

        began = time.monotonic()
        with agent_process(m.agent_args()) as agent:
            loaded = agent.wait_event("sync.state_loaded")[0]
            assert loaded["revision"] == revision and loaded["policies"] == 2
            # The very first queries are answered, with the controller still away.
            assert ask(agent, "web.mesh.internal") == ["127.0.10.1", "127.0.10.2"]
            assert ask(agent, "api.mesh.internal") == ["127.0.30.1"]
            took = time.monotonic() - began
            print(f"\nrestarted agent answered from its state file {took:.2f}s after exec")
            assert not agent.events("sync.connected")

            m.controller.start()
            m.rest.put(policy("api", ["127.0.30.2"]))
            wait_until(lambda: ask(agent, "api.mesh.internal") == ["127.0.30.2"], 10, "rejoin")
            assert agent_id(agent) == first_id  # the same agent to the controller
            hello = agent.events("sync.connected")[0]
            assert hello["revision"] == revision  # it resumed from its state, not from 0
