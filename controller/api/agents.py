"""Routes for agents: the WebSocket stream, HTTP long-polling, and convergence for operators.

How an agent speaks to the controller (messages are dnsmesh.protocol's, JSON text frames):

WebSocket ``GET /v1/agents/stream`` (ws:// or wss://)
  1. Over wss, an agent that joined (controller/api/identity.py) connects with its client
     certificate and no token: its node name is its agent id. Otherwise the upgrade
     request carries ``Authorization: Bearer <token>`` of role ``agent`` or ``admin``,
     which a controller with ``--require-agent-mtls`` (the default with --tls) refuses
     (401). A refused upgrade is an HTTP response before any WebSocket exists: 401 (no,
     unknown or revoked token; WWW-Authenticate: Bearer), 403 (another role; a
     certificate revoked or not issued here), body ``{"error": {"code", "message",
     "fields"}}`` like every API error; 503 (Retry-After: 1) while the database is
     unreachable.
  2. The agent sends ``hello`` {agent_id, node_name, labels, software, revision, local,
     shadowed, mesh_id} first, within 10 s (else ``error`` hello_timeout and close 4408).
     With a certificate, agent_id and node_name must both be its node (else ``error``
     wrong_node and close 4403). ``mesh_id``: the mesh its state came from; another
     mesh's (or a revision from another mesh) gets a snapshot.
     ``revision`` is the last revision it applied, 0 when it has nothing; ``local`` lists
     the policies of its own --policies files ([{name, domain, source}]) and ``shadowed``
     the controller policies that they shadow on its node ([{name, reason}]: the local
     file wins there, the rest of the revision applies). Both default to [].
  3. The controller answers with at most one update: a ``snapshot`` {revision, policies}
     when the agent is new (revision 0), is ahead of the database, or is older than the
     change log reaches back (compaction); else a ``delta`` {since: the agent's revision,
     revision, changes} of every policy changed since (each name once, its latest
     document, null when deleted); nothing when the agent is current.
  4. From then on, every commit is pushed as it happens, in revision order: a ``delta``
     whose ``since`` is the revision of the previous update sent on this connection.
     Several commits close together may arrive as one delta.
  5. The agent answers each update with ``ack`` {revision, local, shadowed} once applied
     (and sends one for the revision it runs when its local files change), or ``nack``
     {revision, reason} when it refused it (it keeps running its previous state). After a
     NACK the controller sends nothing more until a newer revision commits, and then a
     delta from the agent's last ACKed revision (or a snapshot if it never ACKed one). An
     agent that sees a delta whose ``since`` is not its revision should reconnect: its
     hello then gets exactly what it lacks.
  6. Anything else from the agent (not JSON, not a protocol message, a second hello) gets
     an ``error`` {code: bad_message | unexpected_message, message} and close 4400.
     Close 4409: the same agent_id connected again to this controller (the older
     connection is closed). Close 4403: the agent's certificate was revoked (``dnsmesh ca
     revoke``), or names another node than the hello. Close 1011: internal error. Close
     1012: the controller is restarting. Reconnect on any close, with backoff and jitter.
  6a. Probe reports: at any time after hello, the agent may send ``report`` {endpoints:
     [{address, latency_ms, loss, state, consecutive_failures, samples}]}, every few
     seconds, one entry per endpoint address it probes (the merged result of all its
     policies). No answer is sent. The controller keeps the latest per (agent, address)
     and a history; when a quorum of agents sees an address failing (dnsmesh.quorum), it
     commits a new revision whose update carries ``down`` (the whole set of addresses
     down mesh-wide): every snapshot has it, a delta has it when it changed (null:
     unchanged). Agents must keep probing and reporting addresses that are down, so the
     quorum can see them recover.
  6b. Answer reports: an upgrade response with ``Dnsmesh-Accepts: answers`` takes, at any
     time after hello, ``answers`` {counts: [{policy, slice, endpoint, answers}]}: the
     answers the agent gave per policy, slice id (``_default``: none matched) and endpoint
     since its previous ``answers`` message, a delta, every few seconds. No answer is sent.
     Counts that name no policy, slice or endpoint being served are dropped; the rest are
     summed per time bucket for GET /v1/policies/{name}/share. An agent must not send it
     to a controller whose upgrade response does not name it (an older one closes 4400).
  7. Keepalive: the controller pings every ``--ping-interval`` seconds (default 5), or
     every connections/200 seconds past 1,000 connections (controller.keepalive: at most
     about 200 pings a second in all), and closes a connection whose pong has not come
     within ``--ping-interval`` (1011), so a silent agent shows as disconnected within
     about an interval plus ``--ping-interval`` (10 s; 55 s at 10,000 agents). Agents
     must answer pings (every WebSocket library does); they may ping too.

HTTP polling (when a WebSocket cannot be opened), same credentials (a certificate acts
for its own agent id only: 403 for another) and revision semantics:
  ``GET /v1/changes?since=R&wait=S[&agent_id=ID][&mesh_id=M]``
      200 and the update as JSON (the same ``snapshot``/``delta`` message as above) as soon
      as something is newer than R (at once if it already is; R=0: a snapshot), or 204
      with no body after S seconds (0-30, default 0) of nothing new. ``agent_id`` keeps
      that polling agent shown as connected; ``mesh_id`` (the mesh its state came from)
      other than the controller's gets a snapshot.
  ``POST /v1/agents/{agent_id}/ack``
      {"node_name", "labels"?, "software"?, "revision": R, "nack"?: {"revision", "reason"},
       "local"?: [...], "shadowed"?: [...]}
      R is the revision the agent runs now (after applying: the ACK); ``nack`` reports an
      update it refused; ``local`` and ``shadowed`` as in the hello. 200 {"agent_id",
      "applied_revision"}. A polling agent posts after every update (and when its local
      files change) and at least every 30 s to stay shown as connected.
  ``POST /v1/agents/{agent_id}/report``
      a ``report`` message as above ({"endpoints": [...]}; "type"/"v" optional). 200
      {"agent_id", "endpoints": N, "down": [address, ...]} once stored and the quorum
      re-evaluated: ``down`` is the down set then (it also reaches the agent as part of
      the next update from /v1/changes, with its revision). 422 invalid_request when the
      body is not a report.
  ``POST /v1/agents/{agent_id}/answers``
      an ``answers`` message as above. 200 {"agent_id", "counts": N} once stored; 503
      (Retry-After) when it could not be, and then it was not: the agent sends those counts
      again with its next report. 422 invalid_request when the body is not one; 404 on a
      controller without served share, which the agent takes as "do not send them".

For operators (viewer, editor, admin):
  ``GET /v1/agents``, ``DELETE /v1/agents/{id}`` and ``GET /v1/revisions/{r}``
  (documented in controller.api).
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.agent_events import AgentConnected, Nacked
from controller.api.deps import MAX_ID, blocking, json_body, log_change, policy_store, require
from controller.api.errors import RETRY_AFTER_S, ApiError, error_body, from_store_error
from controller.api.identity import (
    AGENT_ROLES,
    Agent,
    AgentCaller,
    certificate_caller,
    source_of,
    trust_of,
)
from controller.api.selectors import LabelQuery, has_labels, label_selector
from controller.auth import Permission, Principal, TokenExpired, TokenStore
from controller.errors import DatabaseUnavailable
from controller.hub import Hub
from controller.services.agent_state import Forgotten
from dnsmesh import protocol
from dnsmesh.policy import Labels, field_errors

router = APIRouter(tags=["agents"])

_BEARER = {"WWW-Authenticate": 'Bearer realm="dnsmesh"'}
# What this controller takes besides the first protocol's messages, named in the upgrade
# response so that an agent sends them only to a controller that knows them.
_ACCEPTS = [(protocol.FEATURES_HEADER.lower().encode(), protocol.ANSWERS_FEATURE.encode())]

Operator = Annotated[Principal, Depends(require(Permission.READ_AUDIT))]  # viewer and up
Writer = Annotated[Principal, Depends(require(Permission.WRITE_POLICIES))]  # editor, admin


def hub_of(app: Any) -> Hub:
    hub: Hub = app.state.hub
    return hub


def _as(caller: AgentCaller, request: Request, agent_id: str) -> None:
    caller.require_agent_id(agent_id, trust_of(request.app), source_of(request))


class _WebSocketChannel:
    """Starlette's WebSocket as the hub's Channel."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.closed = False

    async def send(self, text: str) -> None:
        await self.websocket.send_text(text)

    async def receive(self) -> str | bytes | None:
        if self.closed:
            return None
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            self.closed = True
            return None
        data: str | bytes | None = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        return data

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # already closed by the peer or the server
            await self.websocket.close(code, reason)


@router.websocket("/v1/agents/stream")
async def agent_stream(websocket: WebSocket) -> None:
    try:
        caller = await certificate_caller(websocket)
    except (ApiError, DatabaseUnavailable) as error:
        refusal = error if isinstance(error, ApiError) else from_store_error(error)
        response = JSONResponse(
            error_body(refusal.code, refusal.message), refusal.status, refusal.headers
        )
        await websocket.send_denial_response(response)
        return
    if caller is not None:
        await websocket.accept(headers=_ACCEPTS)
        await hub_of(websocket.app).serve(_WebSocketChannel(websocket), caller.identity)
        return
    await _token_stream(websocket)


async def _token_stream(websocket: WebSocket) -> None:
    """An agent by bearer token (where agents are not required to show a certificate)."""
    header = websocket.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    principal = None
    refused = "a valid bearer token of role agent is required"
    if scheme.lower() == "bearer" and secret.strip():
        tokens: TokenStore = websocket.app.state.tokens
        try:
            principal = await blocking(tokens.authenticate, secret.strip())
        except DatabaseUnavailable as error:
            refusal = from_store_error(error)  # 503, Retry-After: the agent backs off
            response = JSONResponse(
                error_body(refusal.code, refusal.message), refusal.status, refusal.headers
            )
            await websocket.send_denial_response(response)
            return
        except TokenExpired:
            refused = "the token has expired"
    if principal is None:
        body = error_body("unauthorized", refused)
        await websocket.send_denial_response(JSONResponse(body, 401, headers=_BEARER))
        return
    if principal.role not in AGENT_ROLES:
        message = f"role {principal.role.value!r} may not act as an agent"
        await websocket.send_denial_response(JSONResponse(error_body("forbidden", message), 403))
        return
    await websocket.accept(headers=_ACCEPTS)
    await hub_of(websocket.app).serve(_WebSocketChannel(websocket))


@router.get("/v1/changes", responses={204: {"description": "nothing newer within wait"}})
async def changes(
    request: Request,
    caller: Agent,
    since: Annotated[int, Query(ge=0, le=MAX_ID, description="the revision the agent runs")],
    wait: Annotated[float, Query(ge=0, le=30, description="seconds to wait for news")] = 0,
    agent_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    mesh_id: Annotated[
        str | None, Query(min_length=1, max_length=64, description="the mesh of its state")
    ] = None,
) -> Response:
    hub = hub_of(request.app)
    if agent_id is not None:
        _as(caller, request, agent_id)
        await hub.record_seen(agent_id)
    update = await hub.poll(since, min(wait, hub.settings.max_wait_s), mesh_id=mesh_id)
    if update is None:
        return Response(status_code=204)
    return Response(update.text, media_type="application/json")


class _NackReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: int = Field(ge=0)
    reason: str = Field(max_length=4096)


class _PollReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node_name: str = Field(min_length=1, max_length=253)
    labels: Labels = Field(default_factory=dict)
    software: str = Field(default="", max_length=64)
    revision: int = Field(ge=0, description="the revision the agent runs now")
    nack: _NackReport | None = None
    local: protocol.LocalPolicies = Field(default_factory=list)
    shadowed: protocol.ShadowedPolicies = Field(default_factory=list)


@router.post("/v1/agents/{agent_id}/ack")
async def report(
    request: Request,
    caller: Agent,
    agent_id: Annotated[str, Path(min_length=1, max_length=128)],
) -> JSONResponse:
    _as(caller, request, agent_id)
    try:
        body = _PollReport.model_validate(await json_body(request))
    except ValidationError as error:
        raise ApiError(422, "invalid_request", "not an agent report", field_errors(error)) from None
    _as(caller, request, body.node_name)  # a certificate's node is both its id and its name
    hub = hub_of(request.app)
    nack = None
    if body.nack is not None:
        nack = Nacked(agent_id, body.nack.revision, body.nack.reason)
    await hub.record_poll(
        AgentConnected(
            agent_id=agent_id,
            node_name=body.node_name,
            labels=body.labels,
            software=body.software,
            revision=body.revision,
            transport="poll",
            replica=hub.settings.replica_id,
            session="poll",
            local=[item.model_dump() for item in body.local],
            shadowed=[item.model_dump() for item in body.shadowed],
        ),
        nack,
    )
    return JSONResponse({"agent_id": agent_id, "applied_revision": body.revision})


@router.post("/v1/agents/{agent_id}/report")
async def probe_report(
    request: Request,
    caller: Agent,
    agent_id: Annotated[str, Path(min_length=1, max_length=128)],
) -> JSONResponse:
    _as(caller, request, agent_id)
    body = await json_body(request)
    try:
        report = protocol.Report.model_validate(body)
    except ValidationError as error:
        raise ApiError(422, "invalid_request", "not a probe report", field_errors(error)) from None
    hub = hub_of(request.app)
    if not await hub.record_report(agent_id, report):
        raise ApiError(
            503,
            "database_unavailable",
            "the report could not be stored yet",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    down = await hub.down()
    return JSONResponse({"agent_id": agent_id, "endpoints": len(report.endpoints), "down": down})


@router.post("/v1/agents/{agent_id}/answers")
async def answer_report(
    request: Request,
    caller: Agent,
    agent_id: Annotated[str, Path(min_length=1, max_length=128)],
) -> JSONResponse:
    _as(caller, request, agent_id)
    body = await json_body(request)
    try:
        report = protocol.AnswerReport.model_validate(body)
    except ValidationError as error:
        raise ApiError(
            422, "invalid_request", "not an answer report", field_errors(error)
        ) from None
    if not await hub_of(request.app).record_answers(agent_id, report):
        raise ApiError(
            503,
            "database_unavailable",
            "the answers could not be stored yet",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    return JSONResponse({"agent_id": agent_id, "counts": len(report.counts)})


@router.get("/v1/agents")
async def list_agents(
    request: Request,
    _who: Operator,
    name: Annotated[
        str | None, Query(min_length=1, max_length=253, description="agent id or node name")
    ] = None,
    label: LabelQuery = None,
) -> JSONResponse:
    wanted = label_selector(label)
    hub = hub_of(request.app)
    agents = [
        agent
        for agent in await hub.list_agents()
        if (name is None or name in (agent.agent_id, agent.node_name))
        and has_labels(agent.labels, wanted)
    ]
    revision = await blocking(policy_store(request).current_revision)
    return JSONResponse({"revision": revision, "items": [a.to_json() for a in agents]})


@router.delete("/v1/agents/{agent_id}")
async def forget_agent(
    request: Request,
    who: Writer,
    agent_id: Annotated[str, Path(min_length=1, max_length=128)],
) -> JSONResponse:
    outcome = await blocking(hub_of(request.app).agents.forget, agent_id)
    if outcome is Forgotten.UNKNOWN:
        raise ApiError(404, "not_found", f"no agent has the id {agent_id!r}")
    if outcome is Forgotten.CONNECTED:
        raise ApiError(
            409,
            "agent_connected",
            f"agent {agent_id!r} is connected; stop it first (it would only come back)",
        )
    log_change("agent.deleted", who, agent=agent_id)
    return JSONResponse({"deleted": agent_id})


@router.get("/v1/revisions/{revision}")
async def convergence(
    request: Request,
    revision: Annotated[int, Path(ge=0, le=MAX_ID)],
    _who: Operator,
    limit: Annotated[int, Query(ge=0, le=1000, description="pending agents listed")] = 100,
) -> JSONResponse:
    hub = hub_of(request.app)
    current = await blocking(policy_store(request).current_revision)
    if revision > current:
        raise ApiError(404, "not_found", f"revision {revision} is not committed (at {current})")
    state = await hub.convergence(revision, limit=limit)
    return JSONResponse(
        {
            "revision": revision,
            "current_revision": current,
            "total": state.total,
            "converged": state.converged,
            "pending": [a.to_json() for a in state.pending],
        }
    )
