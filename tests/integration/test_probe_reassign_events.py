"""The probe assignment follows events, not the clock: the health monitor's rounds read the
fleet only when an agent came or went or the policies moved (controller.services.
probe_assignment), here with the periodic refresh set out of reach."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from controller.quorum_monitor import HealthSettings
from controller.repositories.probers import read_probers
from controller.services.probe_assignment import ProbingSettings
from dnsmesh import protocol
from tests.integration.push_support import (
    ServedController,
    TestAgent,
    clear_agents,
    eventually,
    fast_settings,
)
from tests.support.policies import policy_doc

A, B = "127.0.11.1", "127.0.11.2"


def probed_policy() -> dict[str, Any]:
    document = policy_doc("probed", [{"address": A, "weight": 1}, {"address": B, "weight": 1}])
    document["spec"]["health"] = {"probe": {"type": "tcp", "port": 9, "interval": 1}}
    return document


@pytest.fixture
def served(database_url: str) -> Iterator[ServedController]:
    clear_agents(database_url)  # the PostgreSQL session database is shared by tests
    probing = ProbingSettings(per_endpoint=1, delay_s=0.2, refresh_s=3600.0)
    health = HealthSettings(evaluate_s=0.05, batch_delay_s=0.01, probing=probing)
    with ServedController(database_url, fast_settings(health=health)) as controller:
        yield controller


async def join(served: ServedController, agent_id: str) -> TestAgent:
    agent = await TestAgent.connect(served.ws_url, served.tokens["agent"], agent_id=agent_id)
    first = await agent.next()
    assert isinstance(first, protocol.SnapshotMessage)
    await agent.ack(first.revision)
    return agent


def stored(served: ServedController) -> dict[str, tuple[str, ...]]:
    return served.db.read(lambda session: dict(read_probers(session).probers))


def test_connects_and_disconnects_move_the_assignment_and_quiet_rounds_read_nothing(
    served: ServedController,
) -> None:
    async def scenario() -> None:
        async with served.http() as http:
            response = await http.put(
                "/v1/policies/probed", json=probed_policy(), headers=served.auth("editor")
            )
            assert response.status_code in (200, 201), response.text
            one, two = await join(served, "reassign-1"), await join(served, "reassign-2")

            async def both_assigned() -> bool:
                return set(stored(served)) == {A, B}

            await eventually(both_assigned, within=10.0)
            probing = served.hub.health.probing
            await asyncio.sleep(0.5)  # the probers revision itself moved the feed: one look
            before = probing.looks
            await asyncio.sleep(1.0)  # about 20 rounds of the monitor, nothing happening
            assert probing.looks - before <= 1, "quiet rounds must not read the fleet"

            await two.close()  # one eligible agent left: everyone probes, nothing assigned

            async def unassigned() -> bool:
                return stored(served) == {}

            await eventually(unassigned, within=10.0)
            await one.close()

    asyncio.run(scenario())
