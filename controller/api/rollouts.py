"""Routes for rollouts: where a policy's canary stands, and the operators' commands.

GET  /v1/policies/{name}/rollout   (viewer, editor, admin)
    200 {policy, group, step (1-based), steps, share, state, next_step_at, next_step_in_s,
    revision, updated_at, reason, decided_with (the figures of the last transition),
    health (the figures now: reporters, max_loss, max_latency_ms, down, breach), bounds};
    404 no such policy; 409 ``no_rollout`` for a policy without a canary.
POST /v1/policies/{name}/rollout/{pause|resume|promote|abort}   (editor, admin)
    200 {revision, state, share, reason}: one revision, pushed to the agents, and an audit
    row. 409 ``no_rollout``, or ``rollout_state`` for a command that does not fit (pause a
    rollout that is not progressing, resume one that is not paused or rolled back).
POST /v1/policies/{name}/rollout/undo   (editor, admin)
    200 {revision}: the policy's document before its last write, written back (a blue/green
    switch is undone so). 409 ``no_previous_revision`` when its last write created it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from controller.api.deps import blocking, log_change, require
from controller.auth import Permission, Principal
from controller.services.rollouts import RolloutService

router = APIRouter(tags=["rollouts"])

Reader = Annotated[Principal, Depends(require(Permission.READ_POLICIES))]
Writer = Annotated[Principal, Depends(require(Permission.WRITE_POLICIES))]
Command = Literal["pause", "resume", "promote", "abort"]


def rollout_service(request: Request) -> RolloutService:
    service: RolloutService = request.app.state.rollouts
    return service


@router.get("/v1/policies/{name}/rollout")
async def rollout_status(request: Request, name: str, _who: Reader) -> JSONResponse:
    return JSONResponse(await blocking(rollout_service(request).status, name))


@router.post("/v1/policies/{name}/rollout/undo")
async def rollout_undo(request: Request, name: str, who: Writer) -> JSONResponse:
    revision = await blocking(rollout_service(request).undo, name, actor=who.name)
    log_change("rollout.undo", who, policy=name, revision=revision)
    return JSONResponse({"revision": revision})


@router.post("/v1/policies/{name}/rollout/{command}")
async def rollout_command(
    request: Request, name: str, command: Command, who: Writer
) -> JSONResponse:
    service = rollout_service(request)
    act = {
        "pause": service.pause,
        "resume": service.resume,
        "promote": service.promote,
        "abort": service.abort,
    }[command]
    done = await blocking(act, name, actor=who.name)
    log_change(f"rollout.{command}", who, policy=name, revision=done.revision)
    body = {"revision": done.revision, "state": done.state, "share": done.share}
    return JSONResponse({**body, "reason": done.reason})
