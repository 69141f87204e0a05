"""Routes for drains: an operator takes an endpoint out of service, or puts it back.

POST /v1/endpoints/{address}/drain[?force=true]   (editor, admin)
    body {"policy"?: NAME, "for"?: "30m"}: drain ADDRESS in policy NAME (else in every
    policy that has it), for that long (else until undrained; the controller's clock).
    201 {"revision": R, "drain": {...}, "forced_past": [message, ...]} (a revision pushed to
    every agent, which stops answering the address there); 200 with "revision": null for
    the same drain again. 409 ``safety_min_endpoints`` or ``safety_min_weight_percent`` when
    it would leave a policy with less in service than its ``spec.safety`` (drains and the
    quorum's down set counted), the policy named in the message; ``force=true`` drains
    anyway and says which rules it went past. Refused and forced drains are audited.
    422 naming the field: a bad address, an address no policy (or not NAME) has, a bad
    ``for``; 404 no policy NAME.
DELETE /v1/endpoints/{address}/drain[?policy=NAME]   (editor, admin)
    200 {"revision": R}; 404 when it is not drained (in NAME, or in every policy).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.api.deps import blocking, json_body, log_change, require
from controller.api.errors import ApiError
from controller.auth import Permission, Principal
from controller.services.drains import DrainService
from dnsmesh.policy import Duration, field_errors

router = APIRouter(tags=["endpoints"])

Writer = Annotated[Principal, Depends(require(Permission.WRITE_POLICIES))]
Force = Annotated[bool, Query(description="drain even past a policy's safety rules")]
PolicyName = Annotated[str | None, Query(min_length=1, max_length=63)]

_DRAIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": '{"policy"?: NAME, "for"?: "30m"}',
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


class DrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    policy: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    duration: Duration | None = Field(default=None, alias="for")


def drain_service(request: Request) -> DrainService:
    service: DrainService = request.app.state.drains
    return service


async def _drain_request(request: Request) -> DrainRequest:
    if not (await request.body()).strip():
        return DrainRequest()
    body = await json_body(request)
    try:
        return DrainRequest.model_validate(body)
    except ValidationError as error:
        raise ApiError(
            422, "invalid_request", "the drain request is not valid", field_errors(error)
        ) from None


@router.post("/v1/endpoints/{address}/drain", openapi_extra=_DRAIN_BODY)
async def drain(request: Request, address: str, who: Writer, force: Force = False) -> JSONResponse:
    wanted = await _drain_request(request)
    result = await blocking(
        drain_service(request).drain,
        address,
        actor=who.name,
        policy=wanted.policy,
        duration_s=wanted.duration,
        force=force,
    )
    if result.revision is not None:
        log_change(
            "endpoint.drained",
            who,
            address=result.drain["address"],
            policy=wanted.policy,
            revision=result.revision,
            forced=bool(result.violations),
        )
    body = {
        "revision": result.revision,
        "drain": result.drain,
        "forced_past": [v.message for v in result.violations],
    }
    return JSONResponse(body, status_code=200 if result.revision is None else 201)


@router.delete("/v1/endpoints/{address}/drain")
async def undrain(
    request: Request, address: str, who: Writer, policy: PolicyName = None
) -> JSONResponse:
    revision = await blocking(
        drain_service(request).undrain, address, actor=who.name, policy=policy
    )
    log_change("endpoint.undrained", who, address=address, policy=policy, revision=revision)
    return JSONResponse({"revision": revision})
