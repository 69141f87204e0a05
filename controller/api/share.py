"""GET /v1/policies/{name}/share: the answers agents served against the intended weights.

    GET /v1/policies/{name}/share?window=300   (viewer and up)
    200 {"window_s", "policy", "slices"?: [{"id", "endpoints", "answers", "drift",
         "flagged"}], "endpoints": [{"address", "intended", "served", "answers"}],
         "answers", "drift", "flagged", "threshold", "min_answers"}

Shares are fractions 0-1: ``intended`` from the policy's weights after the quorum's down
set, ``served`` from the answers the agents counted in the buckets overlapping the last
``window`` seconds (10 to the retention, 3600 by default). ``drift`` is the total
variation distance between them (dnsmesh.share), ``flagged`` when it is above ``threshold``
over at least ``min_answers`` answers. ``slices`` only for a policy that declares slices
(``_default``: answers of clients no slice matched). 404 for no such policy, 422 for a
window out of range.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from controller.api.deps import blocking, require
from controller.api.errors import ApiError
from controller.auth import Permission, Principal
from controller.hub import Hub
from controller.services.served_share import DEFAULT_WINDOW_S, MIN_WINDOW_S
from dnsmesh.errors import FieldError

router = APIRouter(prefix="/v1/policies", tags=["policies"])
Reader = Annotated[Principal, Depends(require(Permission.READ_POLICIES))]


@router.get("/{name}/share")
async def served_share(
    request: Request,
    name: str,
    _who: Reader,
    window: Annotated[int, Query(description="seconds to look back")] = DEFAULT_WINDOW_S,
) -> JSONResponse:
    hub: Hub = request.app.state.hub
    service = hub.share.service
    longest = service.settings.retention_s
    if not MIN_WINDOW_S <= window <= longest:
        raise ApiError(
            422,
            "invalid_request",
            f"window must be {MIN_WINDOW_S}-{longest} seconds",
            [FieldError("window", f"must be {MIN_WINDOW_S}-{longest} seconds")],
        )
    view = await blocking(service.share, name, window)
    return JSONResponse(view.to_json())
