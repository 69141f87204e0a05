"""GET /v1/events: server-sent events that tell the web UI a revision has landed.

    GET /v1/events   (viewer, editor, admin; ``Authorization: Bearer``, never a query
                     parameter) 200 text/event-stream:
        event: revision
        id: R
        data: {"revision": R}
    first the revision committed when the stream opens, then one event each time the
    committed revision moves (a policy write, a down-set change; several commits close
    together may be one event naming the newest). A comment line (``: ping``) every 15 s
    keeps proxies from closing an idle stream. The token is checked again about every
    15 s: once it is revoked, expired or no longer allowed, the stream sends
    ``event: goodbye`` (data {"reason"}) and ends.

The events are wake-ups fed by the hub's feed (controller.feed), which follows the change
notification (controller.notify: the in-process commit hook and, on PostgreSQL, LISTEN/
NOTIFY across replicas): a write made through any replica reaches every open stream.
The client then reads what it shows through the REST API as usual.

A browser's EventSource cannot send a header, so the UI reads the stream with fetch()
(controller/webui/static/live.js); a token in the URL would end up in logs and history.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from controller.api.deps import bearer_secret, blocking, require, token_store
from controller.auth import Permission, Principal, TokenExpired
from controller.errors import DatabaseUnavailable
from controller.feed import Feed
from controller.hub import Hub

router = APIRouter(tags=["events"])

Operator = Annotated[Principal, Depends(require(Permission.READ_AUDIT))]
PING_S = 15.0
RECHECK_S = 15.0  # a revoked token's stream ends within about this long


@router.get(
    "/v1/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request, _who: Operator) -> EventSourceResponse:
    hub: Hub = request.app.state.hub
    await hub.start()  # the feed follows commits only once the hub runs
    tokens = token_store(request)
    secret = bearer_secret(request)

    async def still_allowed() -> str | None:
        """None while the token may read the stream, else why not."""
        try:
            principal = await blocking(tokens.authenticate, secret, known_if_away=True)
        except TokenExpired:
            return "the token has expired"
        except DatabaseUnavailable:
            return None  # nothing moves while the database is away; check again later
        if principal is None:
            return "the token is unknown or revoked"
        if not principal.can(Permission.READ_AUDIT):
            return f"role {principal.role.value!r} may not read events"
        return None

    return EventSourceResponse(
        revision_events(hub.feed, still_allowed, recheck_s=RECHECK_S),
        ping=PING_S,
        # no-transform: a compressing proxy would hold events back to fill its buffer
        headers={"Cache-Control": "no-store, no-transform"},
    )


async def revision_events(
    feed: Feed,
    still_allowed: Callable[[], Awaitable[str | None]],
    *,
    recheck_s: float,
) -> AsyncIterator[ServerSentEvent]:
    """The feed's head now and at every move; ends once ``still_allowed`` gives a reason."""
    loop = asyncio.get_running_loop()
    checked = loop.time()
    sent: int | None = None
    while True:
        if loop.time() - checked >= recheck_s:
            reason = await still_allowed()
            if reason is not None:
                yield ServerSentEvent(json.dumps({"reason": reason}), event="goodbye")
                return
            checked = loop.time()
        head = feed.head
        if head != sent:
            sent = head
            yield ServerSentEvent(json.dumps({"revision": head}), event="revision", id=str(head))
            continue
        # The wait starts from the head just read: a move after that line wakes it.
        await feed.wait_moved(max(0.0, recheck_s - (loop.time() - checked)))
