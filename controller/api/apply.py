"""``POST /v1/apply``: a JSON list of policy documents applied in one transaction, as one
revision, all or none (what ``dnsmesh apply -f`` sends).

Query parameters: ``dry_run=true`` (every check, nothing stored), ``force=true`` (past a
connected agent's local files), ``prune=true`` (delete the policies the list does not name)
and ``selector=KEY=VALUE,...`` (with ``prune``: only the policies with those labels).
The service (PolicyService.apply_set) validates the whole list before it reads anything.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from controller.api.deps import (
    blocking,
    etag,
    if_match,
    json_body,
    log_change,
    policy_store,
    require,
)
from controller.api.errors import ApiError, error_body, from_store_error
from controller.api.selectors import equality_selector
from controller.auth import Permission, Principal
from controller.errors import StoreError
from controller.services.policies import SetOutcome
from dnsmesh.errors import FieldError, PolicyError

router = APIRouter(prefix="/v1", tags=["policies"])

Writer = Annotated[Principal, Depends(require(Permission.WRITE_POLICIES))]
_DRY_RUN_HEADER = "Dnsmesh-Dry-Run"

_LIST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a list of Policy documents (each the same as one YAML document)",
        "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
    }
}

# The log events of a set's changes: the same as those of the single writes.
_LOGGED = {"created": "policy.created", "configured": "policy.updated", "pruned": "policy.deleted"}


@router.post("/apply", openapi_extra=_LIST_BODY)
async def apply_documents(
    request: Request,
    who: Writer,
    dry_run: Annotated[bool, Query(description="check in full, store nothing")] = False,
    force: Annotated[bool, Query(description="write past agents' local files")] = False,
    prune: Annotated[bool, Query(description="delete the policies the list does not name")] = False,
    selector: Annotated[
        str | None, Query(description="with prune: KEY=VALUE[,KEY=VALUE...] to prune within")
    ] = None,
) -> JSONResponse:
    if selector is not None and not prune:
        raise ApiError(
            422,
            "invalid_request",
            "selector chooses what prune deletes; add prune=true or drop it",
            [FieldError("selector", "only with prune=true")],
        )
    within = equality_selector(selector or "") if prune else None
    documents = _documents(await json_body(request))
    result = await blocking(
        policy_store(request).apply_set,
        documents,
        actor=who.name,
        prune=within,
        dry_run=dry_run,
        force=force,
        if_match=if_match(request),
    )
    body: dict[str, Any] = {
        "revision": result.revision,
        "applied": result.applied,
        "dry_run": dry_run,
        "items": [_outcome_json(item) for item in result.items],
    }
    refused = [item for item in result.items if item.refusal is not None]
    if refused:
        errors = [_refusal(item.refusal) for item in refused]
        invalid_only = all(error.code == "invalid_policy" for error in errors)
        fields = [
            FieldError(f"[{item.index}]" + (f".{f.path}" if f.path else ""), f.message)
            for item, error in zip(refused, errors, strict=True)
            for f in (error.fields or [FieldError("", error.message)])
        ]
        message = f"{len(refused)} of {len(documents)} policies refused; nothing was applied"
        error = error_body("apply_refused", message, fields)
        return JSONResponse({**error, **body}, status_code=422 if invalid_only else 409)
    if result.applied:
        for item in result.items:
            if item.outcome in _LOGGED:
                log_change(_LOGGED[item.outcome], who, policy=item.name, revision=result.revision)
    headers = {_DRY_RUN_HEADER: "true"} if dry_run else {"ETag": etag(result.revision)}
    return JSONResponse(body, headers=headers)


def _documents(body: object) -> list[object]:
    if not isinstance(body, list):
        raise ApiError(
            422,
            "invalid_request",
            "the body must be a JSON list of policy documents",
            [FieldError("(the body)", "a list of policy documents is required")],
        )
    return body


def _refusal(refusal: StoreError | PolicyError | None) -> ApiError:
    if isinstance(refusal, PolicyError):
        return ApiError(422, "invalid_policy", "the policy does not validate", refusal.errors)
    assert refusal is not None
    return from_store_error(refusal)


def _outcome_json(item: SetOutcome) -> dict[str, Any]:
    error = None
    if item.refusal is not None:
        refused = _refusal(item.refusal)
        error = error_body(refused.code, refused.message, refused.fields)["error"]
    return {"index": item.index, "name": item.name, "outcome": item.outcome, "error": error}
