"""The web UI's files at /ui/ and GET /v1/whoami, on the ASGI app (no browser: that is
tests/e2e/test_webui.py). The files need no token; everything they show comes from the API."""

from __future__ import annotations

import tomllib

from controller.webui import STATIC
from tests.integration.conftest import REPO
from tests.integration.controller_support import Api


def test_the_ui_is_served_with_a_strict_content_security_policy(api: Api) -> None:
    page = api.client.get("/ui/", headers={})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = api.client.get("/ui/app.js", headers={})
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]  # ES modules need a JS type
    assert (
        api.client.get("/ui/vendor/js-yaml.mjs")
        .headers["content-type"]
        .startswith("text/javascript")
    )


def test_ui_without_a_slash_redirects_and_a_missing_file_is_404(api: Api) -> None:
    redirect = api.client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/ui/"
    assert api.client.get("/ui/no-such-file.js").status_code == 404
    assert api.client.get("/ui/../pyproject.toml").status_code == 404


def test_whoami_names_the_token_and_what_its_role_may_do(api: Api) -> None:
    for role in ("viewer", "editor", "admin", "agent"):
        answer = api.get("/v1/whoami", role)
        assert answer.status_code == 200
        body = answer.json()
        assert (body["name"], body["role"], body["expires_at"]) == (f"{role}-token", role, None)
        assert body["may"]["policies:read"] is True
        assert body["may"]["policies:write"] is (role in ("editor", "admin"))
        assert body["may"]["tokens:manage"] is (role == "admin")


def test_whoami_without_a_token_is_401(api: Api) -> None:
    assert api.client.get("/v1/whoami").status_code == 401


def test_every_ui_file_is_package_data() -> None:
    """pyproject's package-data globs reach every file under controller/webui/static, so a
    wheel (not only an editable install) serves the whole UI."""
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = settings["tool"]["setuptools"]["package-data"]["controller"]
    package = STATIC.parent.parent
    covered = {path for pattern in globs for path in package.glob(pattern) if path.is_file()}
    files = {path for path in STATIC.rglob("*") if path.is_file()}
    assert files and files <= covered, sorted(str(p) for p in files - covered)
