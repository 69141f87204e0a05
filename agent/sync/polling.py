"""The sync client's HTTP long-polling channel, for where a WebSocket cannot be opened.

Same revision semantics as the stream (controller/api/agents.py): ``GET /v1/changes?since=R
&wait=S&agent_id=ID`` answers with the snapshot or delta that takes R to the head as soon
as there is one (204 after S seconds of nothing), and ``POST /v1/agents/{id}/ack`` reports
the revision the agent runs, with an optional NACK. The agent reports after every update
and at least every ``report_interval`` so the controller keeps showing it connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from agent.sync.channel import ChannelContext
from agent.sync.errors import SyncFatal, SyncRetry, parse_retry_after
from agent.sync.incoming import decode_incoming
from agent.sync.policy_sources import Outcome
from agent.sync.session import Apply, Send, SyncSession
from dnsmesh.logs import fields
from dnsmesh.protocol import (
    Delta,
    Nack,
    ProtocolError,
    SnapshotMessage,
    message_json,
)

log = logging.getLogger(__name__)


class Poller:
    """One polling session; ``run`` returns when it is time to try the WebSocket again."""

    def __init__(self, sync: ChannelContext, client: httpx.AsyncClient) -> None:
        self.sync = sync
        self.client = client
        self.session = SyncSession()
        self.probe_route = True  # False once the controller said it has no report route
        self.answers_route = True  # likewise for answer reports (an older controller)

    async def report_quietly(self) -> None:
        """Report what runs outside the poll loop; a failure is the loop's to notice."""
        with contextlib.suppress(httpx.HTTPError, SyncRetry, SyncFatal):
            await self.report()

    @staticmethod
    def client_for(sync: ChannelContext) -> httpx.AsyncClient:
        config = sync.config
        return httpx.AsyncClient(
            base_url=config.http_url,
            headers={**sync.credentials.headers(), "User-Agent": f"{sync.software} (agent)"},
            # A long-poll legitimately takes poll_wait; the margin covers a slow answer.
            timeout=httpx.Timeout(config.poll_wait + 10.0, connect=config.open_timeout),
            trust_env=False,  # the agent talks to its controller directly
            verify=sync.credentials.tls_context(),
        )

    async def run(self) -> None:
        sync, config = self.sync, self.sync.config
        await self.report()
        sync.connected("poll", config.http_url)
        entered = last_report = last_probes = sync.clock()
        since = sync.sources.running.revision
        while True:
            now = sync.clock()
            if config.mode == "auto" and now - entered >= config.ws_retry:
                return
            if now - last_report >= config.report_interval:
                await self.report()
                last_report = now
            if now - last_probes >= sync.probe_report_interval:
                await self.report_probes()
                await self.report_answers()
                last_probes = now
            wait = max(0.0, min(config.poll_wait, config.report_interval))
            if sync.probe_report is not None or sync.answer_reports is not None:
                wait = min(wait, sync.probe_report_interval)
            if config.mode == "auto":
                wait = min(wait, max(0.0, config.ws_retry - (now - entered)))
            asked = sync.clock()
            params: dict[str, str | int | float] = {
                "since": since,
                "wait": round(wait, 3),
                "agent_id": sync.agent_id,
            }
            mesh_id = sync.sources.running.mesh_id
            if mesh_id is not None:
                params["mesh_id"] = mesh_id
            response = await self.client.get("/v1/changes", params=params)
            check(response)
            if response.status_code == 204:
                if sync.clock() - asked < wait / 2:
                    # "Nothing new" long before the wait was up: something between us does
                    # not hold polls; pace ourselves instead of asking in a hot loop.
                    await asyncio.sleep(min(wait / 2, 1.0))
                continue
            message = await decode_incoming(response.content)
            if not isinstance(message, SnapshotMessage | Delta):
                raise ProtocolError(f"GET /v1/changes returned a {message.type} message")
            since = await self._apply(message)
            last_report = sync.clock()

    async def _apply(self, message: SnapshotMessage | Delta) -> int:
        """Apply one update and report the outcome; returns the revision to poll from next."""
        outcomes: list[Outcome] = []
        for decision in self.session.receive([message]):
            if isinstance(decision, Apply):
                outcomes += await self.sync.apply(decision.updates, "poll")
        sources = self.sync.sources
        position = self.session.poll_next(outcomes, message, running=sources.running.revision)
        # The ACK endpoint reports the revision that runs: one report covers every ACK;
        # each NACK is reported with its reason.
        nacks = [
            d.message
            for d in self.session.applied(outcomes, sources.acknowledgement())
            if isinstance(d, Send) and isinstance(d.message, Nack)
        ]
        for nack in nacks:
            await self.report(nack=nack)
        if not nacks:
            await self.report()
        if position.pause:
            await asyncio.sleep(self.sync.nack_pause())
        return position.since

    async def report(self, nack: Nack | None = None) -> None:
        sync = self.sync
        body: dict[str, object] = {
            "node_name": sync.config.node_name,
            "labels": dict(sync.config.labels),
            "software": sync.software,
            "revision": sync.sources.running.revision,
            **sync.sources.acknowledgement().model_dump(include={"local", "shadowed"}),
        }
        if nack is not None:
            body["nack"] = {"revision": nack.revision, "reason": nack.reason[:4096]}
        check(await self.client.post(f"/v1/agents/{sync.agent_id}/ack", json=body))

    async def report_probes(self) -> None:
        """POST the batched probe results (the stream's ``report`` message as a body)."""
        if not self.probe_route:
            return
        report = self.sync.next_probe_report()
        if report is None:
            return
        response = await self.client.post(
            f"/v1/agents/{self.sync.agent_id}/report", json=message_json(report)
        )
        if response.status_code in (404, 405):
            # An older controller: say it once and stop asking; policies still flow.
            log.warning("sync.probe_reports_unsupported", extra=fields(status=response.status_code))
            self.probe_route = False
            return
        check(response)

    async def report_answers(self) -> None:
        """POST the answers counted since the last report. The 200 says they are stored; a
        refusal or a connection never made puts them back for the next POST, and a request
        whose answer was lost is not repeated (the controller may have stored it)."""
        reports = self.sync.answer_reports
        if reports is None or not self.answers_route:
            return
        report = reports.take()
        if report is None:
            return
        try:
            response = await self.client.post(
                f"/v1/agents/{self.sync.agent_id}/answers", json=message_json(report)
            )
        except httpx.ConnectError:
            reports.put_back(report)
            raise
        if response.status_code in (404, 405):
            log.warning(
                "sync.answer_reports_unsupported", extra=fields(status=response.status_code)
            )
            self.answers_route = False
            return
        if response.status_code >= 500 or response.status_code == 429:
            reports.put_back(report)  # not stored (database away, overloaded): next time
        check(response)


def check(response: httpx.Response) -> None:
    """Fatal for 401/403, retryable for anything else that is not a success."""
    if response.is_success:
        return
    status = response.status_code
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason_phrase
    if status in (401, 403):
        raise SyncFatal(status, message)
    raise SyncRetry(
        f"{response.request.method} {response.request.url.path}: {status} {message}",
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )
