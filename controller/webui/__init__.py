"""The web UI: static files (plain ES modules, vendored Preact+htm and js-yaml) at /ui/.

The pages call the same REST API as every client, with the token the operator logs in
with (kept in sessionStorage); the controller only serves the files. No build step, no
CDN: everything the browser loads comes from ``static/`` in this package (package data,
so an installed wheel serves it too).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).with_name("static")

# Only our own files run: no inline script or style, no other origin, no framing. The API
# is same-origin (connect-src 'self'); images are the page's own (and none from data:).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every load: after an upgrade the browser gets the new files at once.
    "Cache-Control": "no-cache",
}


class UiFiles(StaticFiles):
    """StaticFiles with the security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_ui(app: FastAPI) -> None:
    """Serves the UI at /ui/ (and /ui, redirected)."""

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)

    app.mount("/ui", UiFiles(directory=STATIC, html=True), name="ui")
