"""Routes of agent identity: join, renew, the refusal counts; and who an agent caller is.

    POST /v1/join    Authorization: Bearer <join token>; {"node_name", "csr": PEM}
                     201 {"node_name", "spiffe_id", "certificate": PEM, "ca_bundle": PEM,
                     "not_after", "mesh_id"}; 401 the join token is unknown, spent,
                     expired or for another node (the message says which); 422 a bad
                     node name or CSR (field named); 404 on a controller without --tls
    POST /v1/renew   the agent's current certificate (mTLS); {"csr": PEM}
                     200 the same body as a join, for the same node; 403 revoked or not
                     issued here; the open stream of the agent is not touched
    GET  /v1/ca/refusals
                     (viewer, editor, admin) 200 {"since", "refusals": {reason: count}}:
                     the refused agent identities of this replica since it started

Agent routes (the stream, /v1/changes, ack, report) take the caller as ``AgentCaller``: a
client certificate when the connection presented one (its node is the agent id, and a
route for another agent id is refused), else a bearer token of role agent or admin, which
``--require-agent-mtls`` (default with --tls) refuses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from controller.agent_certs import IdentityRefused, Issuance, parse_csr
from controller.agent_trust import AgentTrust
from controller.api.deps import blocking, json_body, require
from controller.api.errors import ApiError
from controller.auth import Permission, Principal, Role
from controller.identity import AgentIdentity
from controller.identity_refusals import Refusal
from controller.join_tokens import JoinRefused
from controller.tls_peer import peer_certificate
from dnsmesh.errors import FieldError
from dnsmesh.logs import fields

router = APIRouter(tags=["agents"])
log = logging.getLogger("dnsmesh.controller.identity")

_BEARER = {"WWW-Authenticate": 'Bearer realm="dnsmesh"'}
AGENT_ROLES = frozenset({Role.AGENT, Role.ADMIN})
TOKEN_ONLY_REFUSED = (
    "this controller requires agents to present their certificate (mTLS): start the agent "
    "with --join-token (dnsmesh token create --role agent --join) and --ca-file"
)
_reader = require(Permission.READ_POLICIES)

Operator = Annotated[Principal, Depends(require(Permission.READ_AUDIT))]


def trust_of(app: Any) -> AgentTrust:
    trust: AgentTrust = app.state.agent_trust
    return trust


def source_of(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client else ""


@dataclass(frozen=True, slots=True)
class AgentCaller:
    """An agent as a route sees it: by certificate (``identity``) or by token."""

    identity: AgentIdentity | None = None
    principal: Principal | None = None

    def require_agent_id(self, agent_id: str, trust: AgentTrust, source: str) -> None:
        """A certificate acts for its own node only (403, noted, for another)."""
        if self.identity is None or agent_id == self.identity.agent_id:
            return
        message = (
            f"the certificate of node {self.identity.node_name!r} may not act as agent {agent_id!r}"
        )
        trust.refusals.note(
            Refusal.WRONG_NODE, message, node=self.identity.node_name, asked=agent_id, source=source
        )
        raise ApiError(403, "forbidden", message)


async def certificate_caller(connection: HTTPConnection) -> AgentCaller | None:
    """The caller by its client certificate; None without one; ApiError when refused."""
    trust = trust_of(connection.app)
    source = source_of(connection)
    pem = peer_certificate(connection.scope)
    if pem is not None:
        try:
            return AgentCaller(identity=await blocking(trust.identify, pem, source))
        except IdentityRefused as refused:
            raise ApiError(403, "forbidden", str(refused)) from None
    if trust.require_mtls:
        trust.refusals.note(
            Refusal.TOKEN_ONLY, TOKEN_ONLY_REFUSED, source=source, path=connection.url.path
        )
        raise ApiError(401, "unauthorized", TOKEN_ONLY_REFUSED)
    return None


async def agent_caller(request: Request) -> AgentCaller:
    """A dependency: the agent making an HTTP request (certificate, else token)."""
    caller = await certificate_caller(request)
    if caller is not None:
        return caller
    principal = await _reader(request)
    if principal.role not in AGENT_ROLES:
        raise ApiError(403, "forbidden", f"role {principal.role.value!r} may not act as an agent")
    return AgentCaller(principal=principal)


Agent = Annotated[AgentCaller, Depends(agent_caller)]


def _object(body: object, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "send a JSON object", [FieldError("", "an object")])
    problems = [FieldError(key, "unknown field") for key in sorted(set(body) - allowed)]
    problems += [FieldError(key, "required") for key in sorted(required - set(body))]
    if problems:
        raise ApiError(422, "invalid_request", "not a valid request body", problems)
    return body


def _issued(issuance: Issuance, trust: AgentTrust, event: str, status: int) -> JSONResponse:
    log.info(
        event,
        extra=fields(
            node=issuance.node_name,
            serial=format(issuance.certificate.serial_number, "x"),
            not_after=issuance.certificate.not_valid_after_utc.isoformat(),
        ),
    )
    return JSONResponse(issuance.to_json(trust.bundle), status_code=status)


@router.post("/v1/join", status_code=201)
async def join(request: Request) -> JSONResponse:
    trust = trust_of(request.app)
    if trust.issuer is None:
        raise ApiError(
            404, "not_found", "this controller issues no agent certificates (start it with --tls)"
        )
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(
            401, "unauthorized", "a join token is required (Bearer dnsmj_...)", headers=_BEARER
        )
    body = _object(await json_body(request), {"node_name", "csr"}, {"node_name", "csr"})
    csr = parse_csr(body["csr"])
    try:
        issuance = await blocking(trust.issuer.join, secret.strip(), body["node_name"], csr)
    except JoinRefused as refused:
        trust.refusals.note(
            refused.reason,
            str(refused),
            node=str(body["node_name"])[:128],
            source=source_of(request),
        )
        raise ApiError(401, "unauthorized", str(refused), headers=_BEARER) from None
    return _issued(issuance, trust, "agent.joined", 201)


@router.post("/v1/renew")
async def renew(request: Request, caller: Agent) -> JSONResponse:
    trust = trust_of(request.app)
    if caller.identity is None or trust.issuer is None:
        raise ApiError(403, "forbidden", "a renewal is asked with the current certificate (mTLS)")
    body = _object(await json_body(request), {"csr"}, {"csr"})
    csr = parse_csr(body["csr"])
    try:
        issuance = await blocking(trust.issuer.renew, caller.identity, csr)
    except IdentityRefused as refused:
        trust.refusals.note(
            refused.reason, str(refused), node=caller.identity.node_name, source=source_of(request)
        )
        raise ApiError(403, "forbidden", str(refused)) from None
    return _issued(issuance, trust, "agent.renewed", 200)


@router.get("/v1/ca/refusals", tags=["health"])
async def refusals(request: Request, _who: Operator) -> JSONResponse:
    counts = trust_of(request.app).refusals
    return JSONResponse({"since": counts.since.isoformat(), "refusals": counts.counts()})
