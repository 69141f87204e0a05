"""Routes for policies and their slices: /v1/policies[/{name}[/slices[/{id}]]] (a set applied
in one transaction is POST /v1/apply: controller/api/apply.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from controller.api.deps import (
    blocking,
    etag,
    if_match,
    json_body,
    log_change,
    policy_store,
    require,
)
from controller.api.errors import ApiError
from controller.api.selectors import LabelQuery, label_selector
from controller.api.stale import known_policies, stale_headers, with_labels
from controller.auth import Permission, Principal
from controller.errors import DatabaseUnavailable

router = APIRouter(prefix="/v1/policies", tags=["policies"])

Reader = Annotated[Principal, Depends(require(Permission.READ_POLICIES))]
# The reads served from the hub's copy while the database is away (controller.api.stale).
StaleReader = Annotated[Principal, Depends(require(Permission.READ_POLICIES, stale_ok=True))]
Writer = Annotated[Principal, Depends(require(Permission.WRITE_POLICIES))]
# A write whose name or domain a connected agent serves from its own files is refused (409
# local_policy_clash) unless forced; that agent then shadows the controller's policy. So is
# one that would break the policy's spec.safety with the drains in force (409
# safety_min_endpoints / safety_min_weight_percent, as a drain that would is).
Force = Annotated[
    bool,
    Query(
        description="write even if a connected agent's local files clash, or past the "
        "policy's safety rules with the drains in force"
    ),
]
# Server-side dry run, as kubectl's: the write's validation and conflict checks run in its
# transaction, which is discarded; the answer is the one the write would get (status,
# body), with nothing stored, no revision and no push.
DryRun = Annotated[
    bool, Query(description="check the write in full and store nothing (answer as if done)")
]
_DRY_RUN_HEADER = "Dnsmesh-Dry-Run"

# The body is a raw JSON object validated by dnsmesh.policy, so its errors name policy
# fields (spec.endpoints[1].weight) rather than FastAPI's own locations.
_POLICY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a Policy document (the same as one YAML document, as JSON)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_SLICE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "a slice: {id, match: {client_cidrs?, node_labels?, debug_label?, ecs_cidrs?}, "
            "groups?, action?, strategy?, ttl?, answers?, weights?, "
            "resource_limits?: {qps, burst}}"
        ),
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


@router.get("")
async def list_policies(
    request: Request,
    _who: StaleReader,
    label: LabelQuery = None,
) -> Response:
    wanted = label_selector(label)
    try:
        revision, items = await blocking(policy_store(request).list_policies_json, wanted)
    except DatabaseUnavailable as outage:
        known, documents = known_policies(request, outage)
        return JSONResponse(
            {"revision": known, "items": with_labels(documents, wanted)},
            headers=stale_headers(known),
        )
    body = b'{"revision":' + str(revision).encode() + b',"items":' + items + b"}"
    return Response(body, media_type="application/json")


@router.post("", status_code=201, openapi_extra=_POLICY_BODY)
async def create_policy(
    request: Request, who: Writer, dry_run: DryRun = False, force: Force = False
) -> JSONResponse:
    document = await json_body(request)
    stored = await blocking(
        policy_store(request).create_policy, document, actor=who.name, dry_run=dry_run, force=force
    )
    if dry_run:
        return JSONResponse(stored.document, status_code=201, headers={_DRY_RUN_HEADER: "true"})
    log_change("policy.created", who, policy=stored.name, revision=stored.revision)
    return JSONResponse(
        stored.document,
        status_code=201,
        headers={"ETag": etag(stored.revision), "Location": f"/v1/policies/{stored.name}"},
    )


@router.get("/{name}")
async def get_policy(request: Request, name: str, _who: StaleReader) -> JSONResponse:
    try:
        stored = await blocking(policy_store(request).get_policy, name)
    except DatabaseUnavailable as outage:
        known, documents = known_policies(request, outage)
        document = next((d for d in documents if d["metadata"]["name"] == name), None)
        if document is None:
            raise ApiError(404, "not_found", f"no policy named {name!r}") from None
        revision = int(document["metadata"]["revision"])
        return JSONResponse(document, headers={"ETag": etag(revision), **stale_headers(known)})
    return JSONResponse(stored.document, headers={"ETag": etag(stored.revision)})


@router.put("/{name}", openapi_extra=_POLICY_BODY)
async def put_policy(
    request: Request, name: str, who: Writer, dry_run: DryRun = False, force: Force = False
) -> JSONResponse:
    document = await json_body(request)
    written = await blocking(
        policy_store(request).put_policy,
        name,
        document,
        actor=who.name,
        if_match=if_match(request),
        dry_run=dry_run,
        force=force,
    )
    if dry_run:
        return JSONResponse(
            written.policy.document,
            status_code=201 if written.created else 200,
            headers={_DRY_RUN_HEADER: "true"},
        )
    if written.changed:
        event = "policy.created" if written.created else "policy.updated"
        log_change(event, who, policy=name, revision=written.policy.revision)
    return JSONResponse(
        written.policy.document,
        status_code=201 if written.created else 200,
        headers={"ETag": etag(written.policy.revision)},
    )


@router.delete("/{name}")
async def delete_policy(
    request: Request, name: str, who: Writer, dry_run: DryRun = False
) -> JSONResponse:
    revision = await blocking(
        policy_store(request).delete_policy,
        name,
        actor=who.name,
        if_match=if_match(request),
        dry_run=dry_run,
    )
    if dry_run:
        return JSONResponse(
            {"deleted": name, "revision": revision}, headers={_DRY_RUN_HEADER: "true"}
        )
    log_change("policy.deleted", who, policy=name, revision=revision)
    return JSONResponse({"deleted": name, "revision": revision})


@router.get("/{name}/slices")
async def list_slices(request: Request, name: str, _who: Reader) -> JSONResponse:
    revision, slices = await blocking(policy_store(request).list_slices, name)
    return JSONResponse(
        {"policy": name, "revision": revision, "items": slices},
        headers={"ETag": etag(revision)},
    )


@router.post("/{name}/slices", status_code=201, openapi_extra=_SLICE_BODY)
async def create_slice(
    request: Request, name: str, who: Writer, dry_run: DryRun = False
) -> JSONResponse:
    body = await json_body(request)
    stored, slice_doc = await blocking(
        policy_store(request).create_slice,
        name,
        body,
        actor=who.name,
        if_match=if_match(request),
        dry_run=dry_run,
    )
    if dry_run:
        return JSONResponse(slice_doc, status_code=201, headers={_DRY_RUN_HEADER: "true"})
    slice_id = slice_doc.get("id")
    log_change("slice.created", who, policy=name, slice=slice_id, revision=stored.revision)
    return JSONResponse(
        slice_doc,
        status_code=201,
        headers={
            "ETag": etag(stored.revision),
            "Location": f"/v1/policies/{name}/slices/{slice_id}",
        },
    )


@router.get("/{name}/slices/{slice_id}")
async def get_slice(request: Request, name: str, slice_id: str, _who: Reader) -> JSONResponse:
    revision, slice_doc = await blocking(policy_store(request).get_slice, name, slice_id)
    return JSONResponse(slice_doc, headers={"ETag": etag(revision)})


@router.put("/{name}/slices/{slice_id}", openapi_extra=_SLICE_BODY)
async def put_slice(
    request: Request, name: str, slice_id: str, who: Writer, dry_run: DryRun = False
) -> JSONResponse:
    body = await json_body(request)
    stored, slice_doc, created = await blocking(
        policy_store(request).put_slice,
        name,
        slice_id,
        body,
        actor=who.name,
        if_match=if_match(request),
        dry_run=dry_run,
    )
    if dry_run:
        return JSONResponse(
            slice_doc, status_code=201 if created else 200, headers={_DRY_RUN_HEADER: "true"}
        )
    log_change("slice.updated", who, policy=name, slice=slice_id, revision=stored.revision)
    return JSONResponse(
        slice_doc, status_code=201 if created else 200, headers={"ETag": etag(stored.revision)}
    )


@router.delete("/{name}/slices/{slice_id}")
async def delete_slice(
    request: Request, name: str, slice_id: str, who: Writer, dry_run: DryRun = False
) -> JSONResponse:
    stored = await blocking(
        policy_store(request).delete_slice,
        name,
        slice_id,
        actor=who.name,
        if_match=if_match(request),
        dry_run=dry_run,
    )
    if dry_run:
        return JSONResponse(
            {"deleted": slice_id, "policy": name, "revision": stored.revision},
            headers={_DRY_RUN_HEADER: "true"},
        )
    log_change("slice.deleted", who, policy=name, slice=slice_id, revision=stored.revision)
    return JSONResponse(
        {"deleted": slice_id, "policy": name, "revision": stored.revision},
        headers={"ETag": etag(stored.revision)},
    )
