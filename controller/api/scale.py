"""GET /v1/policies/{name}/scale: where a policy's demand-driven slices stand.

    GET /v1/policies/{name}/scale   (viewer and up)
    200 {"policy", "slices": [{"slice", "count", "min", "max", "target_qps_per_endpoint",
         "endpoints" (the ``count`` it answers from, in the stable order), "qps" (over the
         window), "peak_qps" (the highest over the hold), "revision", "updated_at",
         "reason"}], "rule": {"window_s", "hold_s", "headroom", "step_up", "step_down"}}

A slice the engine never moved is at its ``min`` (``revision`` null). ``slices`` is empty
for a policy without a scaled slice; 404 for no such policy.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from controller.api.deps import blocking, require
from controller.auth import Permission, Principal
from controller.hub import Hub

router = APIRouter(prefix="/v1/policies", tags=["policies"])
Reader = Annotated[Principal, Depends(require(Permission.READ_POLICIES))]


@router.get("/{name}/scale")
async def slice_scale(request: Request, name: str, _who: Reader) -> JSONResponse:
    hub: Hub = request.app.state.hub
    return JSONResponse(await blocking(hub.share.scaling.status, name))
