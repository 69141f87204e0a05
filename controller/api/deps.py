"""Request plumbing shared by the routes: the bearer token check, JSON bodies, If-Match."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from controller.api.body import MAX_DEPTH, MAX_INT, BodyRefused, check_body
from controller.api.errors import ApiError
from controller.api.refusals import RefusalAudit
from controller.auth import Permission, Principal, TokenExpired, TokenStore
from controller.services.policies import IfMatch, PolicyService
from dnsmesh.logs import fields

T = TypeVar("T")
log = logging.getLogger("dnsmesh.controller.api")
_BEARER = {"WWW-Authenticate": 'Bearer realm="dnsmesh"'}
# What a 403 says the role may not do, as a sentence ("role 'viewer' may not write policies").
_DOING = {
    Permission.READ_POLICIES: "read policies",
    Permission.WRITE_POLICIES: "write policies",
    Permission.READ_AUDIT: "read agents, endpoint health or the audit log",
    Permission.MANAGE_TOKENS: "manage tokens",
}
MAX_ID = MAX_INT  # the largest revision or audit id a query may name (BIGINT)


def policy_store(request: Request) -> PolicyService:
    store: PolicyService = request.app.state.policies
    return store


def token_store(request: Request) -> TokenStore:
    tokens: TokenStore = request.app.state.tokens
    return tokens


async def blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs a (blocking, SQLAlchemy) store call on the thread pool."""
    return await run_in_threadpool(func, *args, **kwargs)


def require(
    permission: Permission, *, stale_ok: bool = False
) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller's principal, 401 without a valid token, 403 if too weak.

    ``stale_ok``: the route can answer while the database is away (controller.api.stale),
    so a token verified before the outage is accepted during it.
    """

    async def check(request: Request) -> Principal:
        secret = bearer_secret(request)
        if not secret:
            await _refuse(request, 401, "a bearer token is required", None, None)
        try:
            principal = await blocking(
                token_store(request).authenticate, secret, known_if_away=stale_ok
            )
        except TokenExpired:
            await _refuse(request, 401, "the token has expired", None, secret)
        if principal is None:
            await _refuse(request, 401, "the token is unknown or revoked", None, secret)
        elif not principal.can(permission):
            message = f"role {principal.role.value!r} may not {_DOING[permission]}"
            await _refuse(request, 403, message, principal, secret)
        return principal

    return check


def bearer_secret(request: Request) -> str:
    """The token of ``Authorization: Bearer <token>``; "" without one."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


async def _refuse(
    request: Request, status: int, message: str, who: Principal | None, secret: str | None
) -> NoReturn:
    """Audits the refusal (of a write; rate-limited per source), then raises it."""
    refusals: RefusalAudit = request.app.state.refusals
    await refusals.record(request, status=status, reason=message, principal=who, secret=secret)
    if status == 401:
        raise ApiError(401, "unauthorized", message, headers=_BEARER)
    raise ApiError(403, "forbidden", message)


async def json_body(request: Request) -> object:
    """The body parsed as JSON; 413 ``payload_too_large`` past ``--max-body``, 400
    ``malformed_json`` when it is not JSON or nests too deep, 422 ``invalid_request`` when a
    string holds NUL or a lone surrogate."""
    raw = await bounded_body(request, request.app.state.max_body)
    if not raw.strip():
        raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object")
    try:
        parsed: object = json.loads(raw)
    # ValueError besides JSONDecodeError: a number of more than 4,300 digits (CPython's
    # int-from-text limit) is valid JSON that json.loads refuses.
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}") from None
    except RecursionError:  # deeper than the interpreter's stack: far past MAX_DEPTH
        raise ApiError(
            400, "malformed_json", f"the body nests deeper than {MAX_DEPTH} levels"
        ) from None
    try:
        check_body(parsed)
    except BodyRefused as refused:
        if refused.too_deep:
            raise ApiError(400, "malformed_json", str(refused), [refused.field]) from None
        raise ApiError(422, "invalid_request", str(refused), [refused.field]) from None
    return parsed


async def bounded_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``limit`` bytes.

    A Content-Length beyond the limit is refused before a byte of the body is read; a
    chunked (or lying) body is read only until it passes the limit. Either way the server
    then closes the connection instead of reading the rest.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the body is larger than the limit of {limit} bytes (dnsmesh controller --max-body)",
        # The rest of the body is still coming: closing is what stops it. Without this
        # uvicorn keeps the connection and reads (and discards) whatever the client sends.
        headers={"Connection": "close"},
    )


def if_match(request: Request) -> IfMatch | None:
    """RFC 9110 §13.1.1 If-Match: ``*`` or a list of entity tags; ours are quoted revisions."""
    header = request.headers.get("if-match")
    if header is None:
        return None
    if header.strip() == "*":
        return IfMatch(None)
    revisions: set[int] = set()
    for tag in header.split(","):
        # A weak tag never matches under If-Match (strong comparison, RFC 9110 §8.8.3.2).
        value = tag.strip()
        if value.startswith('"') and value.endswith('"') and value[1:-1].isdigit():
            revisions.add(int(value[1:-1]))
    return IfMatch(frozenset(revisions))


def etag(revision: int) -> str:
    return f'"{revision}"'


def log_change(event: str, who: Principal, **values: object) -> None:
    """One log line per committed change, beside the audit row (who, what, which revision)."""
    log.info(event, extra=fields(actor=who.name, **values))
