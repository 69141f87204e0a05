"""One error shape for every error status, and the mapping from our exceptions to it.

    {"error": {"code": "invalid_policy", "message": "...",
               "fields": [{"path": "spec.endpoints[1].weight", "message": "..."}]}}

``fields`` is always present (empty when no field is to blame).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.errors import (
    AlreadyExists,
    CommitUnknown,
    Conflict,
    DatabaseUnavailable,
    DomainConflict,
    InvalidRequest,
    LocalPolicyClash,
    NotFound,
    PreconditionFailed,
    SafetyRuleBroken,
    StoreError,
)
from dnsmesh.errors import FieldError, PolicyError
from dnsmesh.logs import fields
from dnsmesh.policy import field_path

log = logging.getLogger("dnsmesh.controller.api")

# Clients may retry a 503 after this many seconds; the pool reconnects on its own.
RETRY_AFTER_S = "1"
# On a 503 commit_unknown: the revision the write would have, to look for when re-reading.
UNKNOWN_REVISION = "Dnsmesh-Unknown-Revision"


class ApiError(Exception):
    """An error response: status, stable code, message, offending fields, extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []
        self.headers = headers or {}


def error_body(code: str, message: str, fields: list[FieldError] | None = None) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "fields": [{"path": f.path, "message": f.message} for f in fields or []],
        }
    }


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.code, error.message, error.fields),
        status_code=error.status,
        headers=error.headers,
    )


def from_store_error(error: StoreError) -> ApiError:
    if isinstance(error, NotFound):
        return ApiError(404, "not_found", str(error))
    if isinstance(error, DomainConflict):
        return ApiError(409, "domain_conflict", str(error), error.fields)
    if isinstance(error, AlreadyExists):
        return ApiError(409, "already_exists", str(error))
    if isinstance(error, LocalPolicyClash):
        return ApiError(409, "local_policy_clash", str(error), error.fields)
    if isinstance(error, SafetyRuleBroken):
        return ApiError(409, f"safety_{error.violation.rule}", str(error), error.fields)
    if isinstance(error, Conflict):
        return ApiError(409, error.code, str(error))
    if isinstance(error, PreconditionFailed):
        return ApiError(412, "precondition_failed", str(error))
    if isinstance(error, InvalidRequest):
        return ApiError(422, "invalid_request", str(error), error.fields)
    if isinstance(error, CommitUnknown):
        # No Retry-After: retrying blindly could apply the write twice (a POST, a /v1/apply).
        headers = {} if error.revision is None else {UNKNOWN_REVISION: str(error.revision)}
        return ApiError(503, "commit_unknown", str(error), headers=headers)
    if isinstance(error, DatabaseUnavailable):
        return ApiError(
            503, "database_unavailable", str(error), headers={"Retry-After": RETRY_AFTER_S}
        )
    return ApiError(500, "internal", str(error))


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error_response(error)

    async def on_store_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StoreError)
        if isinstance(error, DatabaseUnavailable):  # CommitUnknown is one too
            request.app.state.metrics.database_errors.labels("api").inc()
        if isinstance(error, CommitUnknown):
            log.error(
                "database.commit_unknown",
                extra=fields(
                    method=request.method,
                    path=request.url.path,
                    revision=error.revision,
                    error=str(error),
                ),
            )
        elif isinstance(error, DatabaseUnavailable):
            log.warning(
                "database.unavailable",
                extra=fields(method=request.method, path=request.url.path, error=str(error)),
            )
        return error_response(from_store_error(error))

    async def on_policy_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, PolicyError)
        return error_response(
            ApiError(422, "invalid_policy", "the policy does not validate", error.errors)
        )

    async def on_http_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        code = _HTTP_CODES.get(error.status_code, f"http_{error.status_code}")
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        return error_response(
            ApiError(error.status_code, code, message, headers=dict(error.headers or {}))
        )

    async def on_validation_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        fields = [FieldError(field_path(tuple(e["loc"])), str(e["msg"])) for e in error.errors()]
        return error_response(ApiError(422, "invalid_request", "the request is not valid", fields))

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error(
            "request.failed",
            exc_info=error,
            extra=fields(method=request.method, path=request.url.path),
        )
        return error_response(ApiError(500, "internal", "internal error; see the controller log"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(PolicyError, on_policy_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
