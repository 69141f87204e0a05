"""A typed client of the controller's REST API, for the CLI (apply, get, delete) and tests.

Every failure becomes a ControllerError subclass with a message a person can act on:
the controller cannot be reached, the token was refused, or the request itself was refused
(with the fields the controller named).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from dnsmesh.errors import ControllerError, FieldError
from dnsmesh.policy import Policy, parse_policy

DEFAULT_SERVER = "http://127.0.0.1:8053"


class ControllerUnreachable(ControllerError):
    """The controller could not be reached."""


class ControllerRefused(ControllerError):
    """The controller answered with an error status."""

    def __init__(self, status: int, code: str, message: str, fields: list[FieldError]) -> None:
        self.status = status
        self.code = code
        self.fields = fields
        detail = "; ".join(str(f) for f in fields)
        super().__init__(f"{message} ({status} {code})" + (f": {detail}" if detail else ""))


class TokenRefused(ControllerRefused):
    """401 or 403: the token is missing, unknown, revoked or too weak for this request."""


@dataclass(frozen=True, slots=True)
class PolicyList:
    revision: int
    policies: list[Policy]


class ControllerClient:
    """One controller, one token. ``transport`` lets tests use an in-process ASGI app."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def list_policies(self, labels: dict[str, str] | None = None) -> PolicyList:
        params = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        body = self._request("GET", "/v1/policies", params=params).json()
        return PolicyList(body["revision"], [parse_policy(doc) for doc in body["items"]])

    def get_policy(self, name: str) -> Policy | None:
        response = self._request("GET", f"/v1/policies/{name}", allow={404})
        return None if response.status_code == 404 else parse_policy(response.json())

    def create_policy(self, policy: Policy, *, force: bool = False) -> Policy:
        """``force``: even if a connected agent's local files define its name or domain."""
        response = self._request(
            "POST",
            "/v1/policies",
            json=policy.to_document(with_revision=False),
            params=_force(force),
        )
        return parse_policy(response.json())

    def replace_policy(
        self, policy: Policy, *, if_match: int | None = None, force: bool = False
    ) -> Policy:
        response = self._request(
            "PUT",
            f"/v1/policies/{policy.name}",
            json=policy.to_document(with_revision=False),
            headers=_if_match(if_match),
            params=_force(force),
        )
        return parse_policy(response.json())

    def delete_policy(self, name: str, *, if_match: int | None = None) -> int:
        """Deletes a policy; returns the revision of the deletion."""
        response = self._request("DELETE", f"/v1/policies/{name}", headers=_if_match(if_match))
        revision: int = response.json()["revision"]
        return revision

    def list_agents(self) -> list[dict[str, Any]]:
        """``GET /v1/agents``: every recorded agent, what it runs and whether it is connected."""
        items: list[dict[str, Any]] = self._request("GET", "/v1/agents").json()["items"]
        return items

    def endpoints(self, policy: str | None = None) -> dict[str, Any]:
        """``GET /v1/endpoints``: health per endpoint address (of one policy, if given)."""
        params = {"policy": policy} if policy else {}
        body: dict[str, Any] = self._request("GET", "/v1/endpoints", params=params).json()
        return body

    def topology(self) -> dict[str, Any]:
        """``GET /v1/topology``: agents x endpoints with latency and loss."""
        body: dict[str, Any] = self._request("GET", "/v1/topology").json()
        return body

    def _request(
        self, method: str, path: str, *, allow: frozenset[int] | set[int] = frozenset(), **kw: Any
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ControllerUnreachable(
                f"cannot reach the controller at {self.server}: {exc or type(exc).__name__}"
            ) from exc
        if response.is_success or response.status_code in allow:
            return response
        raise _refusal(response)


def _force(force: bool) -> dict[str, str]:
    return {"force": "true"} if force else {}


def _if_match(revision: int | None) -> dict[str, str]:
    return {} if revision is None else {"If-Match": f'"{revision}"'}


def _refusal(response: httpx.Response) -> ControllerRefused:
    """The controller's error body ({"error": {code, message, fields}}) as an exception."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        fields = [FieldError(f["path"], f["message"]) for f in error.get("fields", [])]
    except (ValueError, KeyError, TypeError):
        code, message, fields = "unexpected", response.text[:200] or response.reason_phrase, []
    if response.status_code == 401:
        message = f"the controller refused the token: {message} (set --token or DNSMESH_TOKEN)"
        return TokenRefused(401, code, message, fields)
    if response.status_code == 403:
        return TokenRefused(403, code, f"the token's role may not do this: {message}", fields)
    return ControllerRefused(response.status_code, code, message, fields)
