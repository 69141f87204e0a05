"""Refuses a request whose path or query holds NUL before any route (or the database) sees it.

PostgreSQL cannot compare a text column with a value holding U+0000 (the driver raises, a
500), so ``GET /v1/policies/%00`` or ``?label=a=%00`` must stop here with a 400: no name,
label or id of ours can contain it. Bodies are checked by controller.api.body.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.api.errors import error_body
from dnsmesh.errors import FieldError


class RefuseNul:
    """Pure ASGI middleware (no body buffering): the check is of the URL only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = _nul_in(scope)
            if where is not None:
                problem = "must not contain the NUL character (%00)"
                body = error_body(
                    "bad_request", f"the {where} {problem}", [FieldError(where, problem)]
                )
                await JSONResponse(body, 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _nul_in(scope: Scope) -> str | None:
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query.lower():
        return "query"
    return None
