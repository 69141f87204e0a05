"""The hub while PostgreSQL is away: nothing crashes, agents are refused politely, and
everything queued meanwhile (ACKs) is written once the database is back."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.engine import make_url
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from dnsmesh import protocol
from tests.integration.controller_support import policy_doc
from tests.integration.push_support import (
    ServedController,
    TestAgent,
    agents_by_id,
    clear_agents,
    eventually,
    fast_settings,
)
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres


def test_the_hub_rides_out_a_database_outage(clean_postgres_url: str) -> None:
    clear_agents(clean_postgres_url)
    real = make_url(clean_postgres_url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432).start()
    try:
        via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        )
        with ServedController(via_proxy, fast_settings(catch_up_s=0.3)) as served:

            async def scenario() -> None:
                async with served.http() as http:
                    first = await http.put(
                        "/v1/policies/alpha", json=policy_doc("alpha"), headers=served.auth()
                    )
                    assert first.status_code == 201
                    agent = await TestAgent.connect(served.ws_url, served.tokens["agent"])
                    assert (await agent.next()).type == "snapshot"

                    async def hello_written() -> bool:
                        return "agent-1" in await agents_by_id(http, served.auth("viewer"))

                    await eventually(hello_written)
                await asyncio.to_thread(proxy.stop)  # every connection to PostgreSQL resets

                # Queued while the database is away; the connection stays up.
                await agent.ack(1)
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(
                        served.ws_url,
                        additional_headers=served.auth("agent"),
                        proxy=None,
                        open_timeout=15,
                    ):
                        pass
                assert refused.value.response.status_code == 503
                assert refused.value.response.headers["Retry-After"] == "1"
                await asyncio.sleep(0.5)  # a few failed catch-ups and writes: no crash
                assert served.hub.sessions.keys() == {"agent-1"}

                await asyncio.to_thread(proxy.start)  # the same port
                async with served.http() as http:

                    async def recorded() -> bool:
                        try:
                            rows = await agents_by_id(http, served.auth("viewer"))
                        except AssertionError:  # 503 until the pool reconnects
                            return False
                        return rows.get("agent-1", {}).get("applied_revision") == 1

                    await eventually(recorded, within=10)
                    put = await http.put(
                        "/v1/policies/alpha",
                        json=policy_doc("alpha", weight=5),
                        headers=served.auth(),
                    )
                    assert put.status_code == 200
                delta = await agent.next(within=5)
                assert isinstance(delta, protocol.Delta) and (delta.since, delta.revision) == (1, 2)
                await agent.close()

            asyncio.run(scenario())
    finally:
        proxy.stop()
