"""Routes for tokens (admin), the audit log, and the health and readiness probes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from controller.api.deps import (
    MAX_ID,
    blocking,
    json_body,
    log_change,
    policy_store,
    require,
    token_store,
)
from controller.api.errors import ApiError
from controller.auth import Permission, Principal, parse_ttl
from controller.db.session import iso
from dnsmesh.errors import FieldError

router = APIRouter()

Admin = Annotated[Principal, Depends(require(Permission.MANAGE_TOKENS))]
Auditor = Annotated[Principal, Depends(require(Permission.READ_AUDIT))]
Anyone = Annotated[Principal, Depends(require(Permission.READ_POLICIES))]  # every role

_TOKEN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["name", "role"],
                    "properties": {
                        "name": {"type": "string"},
                        "role": {"enum": ["admin", "editor", "viewer", "agent"]},
                        "ttl": {"type": ["string", "null"], "pattern": "^[1-9][0-9]{0,9}[smhdw]$"},
                    },
                }
            }
        },
    }
}


@router.get("/healthz", tags=["health"])
async def healthz() -> JSONResponse:
    """The process is up (no token, no database)."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", tags=["health"])
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers; 503 while it does not (no token)."""
    revision = await blocking(policy_store(request).current_revision)
    return JSONResponse({"status": "ready", "revision": revision})


@router.get(
    "/v1/ca",
    tags=["health"],
    responses={200: {"content": {"application/x-pem-file": {}}}, 404: {}},
)
async def ca_bundle(request: Request) -> Response:
    """The CA bundle clients trust (no token: certificates only, never a key)."""
    bundle: str | None = request.app.state.ca_bundle
    if bundle is None:
        raise ApiError(404, "not_found", "this controller serves no TLS (start it with --tls)")
    return Response(bundle, media_type="application/x-pem-file")


@router.get("/v1/whoami", tags=["tokens"])
async def whoami(who: Anyone) -> JSONResponse:
    """The caller's token name and role, and what that role may do (the UI hides the rest)."""
    expires = None if who.expires_at is None else iso(who.expires_at)
    may = {permission.value: who.can(permission) for permission in Permission}
    return JSONResponse(
        {"name": who.name, "role": who.role.value, "expires_at": expires, "may": may}
    )


@router.get("/v1/tokens", tags=["tokens"])
async def list_tokens(request: Request, _who: Admin) -> JSONResponse:
    tokens = await blocking(token_store(request).list)
    return JSONResponse({"items": [t.to_json() for t in tokens]})


@router.post("/v1/tokens", status_code=201, tags=["tokens"], openapi_extra=_TOKEN_BODY)
async def create_token(request: Request, who: Admin) -> JSONResponse:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(
            422, "invalid_request", "send {name, role}", [FieldError("", "must be an object")]
        )
    unknown = sorted(set(body) - {"name", "role", "ttl"})
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            "unknown fields",
            [FieldError(key, "unknown field") for key in unknown],
        )
    ttl = parse_ttl(body["ttl"]) if body.get("ttl") is not None else None
    info, secret = await blocking(
        token_store(request).create, body.get("name"), body.get("role"), actor=who.name, ttl=ttl
    )
    log_change("token.created", who, token=info.name, role=info.role.value)
    # The secret is in this response and nowhere else, ever.
    return JSONResponse({**info.to_json(), "token": secret}, status_code=201)


@router.delete("/v1/tokens/{name}", tags=["tokens"])
async def revoke_token(request: Request, name: str, who: Admin) -> JSONResponse:
    await blocking(token_store(request).revoke, name, actor=who.name)
    log_change("token.revoked", who, token=name)
    return JSONResponse({"revoked": name})


@router.get("/v1/audit", tags=["audit"])
async def audit(
    request: Request,
    _who: Auditor,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="an entry id: older entries")
    ] = None,
) -> JSONResponse:
    entries = await blocking(policy_store(request).audit, limit=limit, before=before)
    items = [asdict(e) for e in entries]
    # Another page may exist when this one is full; its cursor is the oldest id here.
    next_before = items[-1]["id"] if len(items) == limit else None
    return JSONResponse({"items": items, "next_before": next_before})
