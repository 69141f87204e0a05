"""Explain: what one client gets from a policy and why; and what-if for a proposed change.

    GET /v1/explain?name=NAME&client=IP[&node=N]   (viewer and up)
    200 dnsmesh.explain.Explanation.to_json(): {"policy", "domain", "revision", "client",
        "source": "controller", "node", "slice", "action", "strategy", "answers",
        "all_down", "rollout", "candidates": [{"address", "family", "group", "priority",
        "weight", "effective_weight", "state", "note"?}], "distribution": {"A"|"AAAA":
        {"exact", "shares": {address: p}, "answer"?}}, "notes"}
    NAME is a policy name or a DNS name the policy answers; with ``node``, that node's
    agent labels and the ejections it last reported are taken into account.
    404 no such policy or node; 422 ``client`` not an IP address.
POST /v1/explain?client=IP[&node=N]   body: a proposed Policy document (viewer and up:
    nothing is stored)
    200 {"before": Explanation | null (a new policy), "after": Explanation,
         "changes": {"A"|"AAAA": [{"address", "before", "after"}]}}
    422 naming the field when the document does not validate or clashes with another
    policy's name or domain.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from controller.api.deps import blocking, json_body, require
from controller.api.errors import ApiError
from controller.auth import Permission, Principal
from controller.services.explain import BadClient, ExplainService, client_address
from dnsmesh.errors import FieldError

router = APIRouter(prefix="/v1/explain", tags=["explain"])
Reader = Annotated[Principal, Depends(require(Permission.READ_POLICIES))]
Client = Annotated[str, Query(description="the client's IP address", max_length=64)]
Node = Annotated[
    str | None, Query(description="the node whose agent answers the client", max_length=253)
]

_PROPOSED_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the proposed Policy document (as JSON); nothing is stored",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


def _service(request: Request) -> ExplainService:
    service: ExplainService = request.app.state.explain
    return service


def _client(text: str) -> str:
    try:
        return client_address(text)
    except BadClient as error:
        message = str(error)
        raise ApiError(422, "invalid_request", message, [FieldError("client", message)]) from None


@router.get("")
async def explain(
    request: Request,
    _who: Reader,
    name: Annotated[str, Query(description="a policy name or a DNS name", max_length=253)],
    client: Client,
    node: Node = None,
) -> JSONResponse:
    address = _client(client)
    return JSONResponse(await blocking(_service(request).explain, name, address, node))


@router.post("", openapi_extra=_PROPOSED_BODY)
async def what_if(
    request: Request, _who: Reader, client: Client, node: Node = None
) -> JSONResponse:
    address = _client(client)
    document = await json_body(request)
    return JSONResponse(await blocking(_service(request).what_if, document, address, node))
