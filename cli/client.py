"""A typed client of the controller's REST API, for the CLI (apply, get, delete) and tests.

Every failure becomes a ControllerError subclass with a message a person can act on:
the controller cannot be reached, the token was refused, or the request itself was refused
(with the fields the controller named).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cli.trust import client_context
from dnsmesh.errors import ControllerError, FieldError
from dnsmesh.policy import Policy, parse_policy
from dnsmesh.tlserrors import certificate_error

DEFAULT_SERVER = "http://127.0.0.1:8053"


class ControllerUnreachable(ControllerError):
    """The controller could not be reached."""


class ControllerRefused(ControllerError):
    """The controller answered with an error status."""

    def __init__(self, status: int, code: str, message: str, fields: list[FieldError]) -> None:
        self.status = status
        self.code = code  # the stable machine name (domain_conflict), for callers, not people
        self.fields = fields
        self.reason = _sentence(message, fields)
        super().__init__(f"{self.reason} (HTTP {status})")


class TokenRefused(ControllerRefused):
    """401 or 403: the token is missing, unknown, revoked or too weak for this request."""


@dataclass(frozen=True, slots=True)
class PolicyList:
    revision: int
    policies: list[Policy]


@dataclass(frozen=True, slots=True)
class SetOutcome:
    """One document of a set (index: its place in the set; pruned ones come after it)."""

    index: int
    name: str
    outcome: str  # created | configured | unchanged | pruned | refused
    refusal: str | None  # why, as a sentence


@dataclass(frozen=True, slots=True)
class SetResult:
    applied: bool
    message: str  # the controller's summary when refused, else ""
    items: list[SetOutcome]


class ControllerClient:
    """One controller, one token. ``transport`` lets tests use an in-process ASGI app."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        """``ca_file``: the CA bundle that vouches for an https:// controller (else the
        system's trust store); verification is never skipped."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=client_context(ca_file),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def list_policies(self, labels: dict[str, str] | None = None) -> PolicyList:
        body = self._request("GET", "/v1/policies", params=_labels(labels)).json()
        return PolicyList(body["revision"], [parse_policy(doc) for doc in body["items"]])

    def get_policy(self, name: str) -> Policy | None:
        response = self._request("GET", f"/v1/policies/{name}", allow={404})
        return None if response.status_code == 404 else parse_policy(response.json())

    # ``dry_run``: the controller runs every check of the write and stores nothing
    # (``?dry_run=true``); the answer is the one the write would get, refusals included.
    # ``force``: write even if a connected agent's local files define the name or domain.

    def create_policy(
        self, policy: Policy, *, dry_run: bool = False, force: bool = False
    ) -> Policy:
        response = self._request(
            "POST",
            "/v1/policies",
            json=policy.to_document(with_revision=False),
            params=_write_params(dry_run, force),
        )
        return parse_policy(response.json())

    def replace_policy(
        self,
        policy: Policy,
        *,
        if_match: int | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> Policy:
        response = self._request(
            "PUT",
            f"/v1/policies/{policy.name}",
            json=policy.to_document(with_revision=False),
            headers=_if_match(if_match),
            params=_write_params(dry_run, force),
        )
        return parse_policy(response.json())

    def delete_policy(
        self, name: str, *, if_match: int | None = None, dry_run: bool = False
    ) -> int:
        """Deletes a policy; returns the revision of the deletion."""
        response = self._request(
            "DELETE",
            f"/v1/policies/{name}",
            headers=_if_match(if_match),
            params=_dry_run(dry_run),
        )
        revision: int = response.json()["revision"]
        return revision

    def apply_set(
        self,
        policies: list[Policy],
        *,
        prune: dict[str, str] | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> SetResult:
        """``POST /v1/apply``: the whole set in one transaction, all or none.

        ``prune``: also delete the policies with these labels that the set does not name
        (``{}``: every policy it does not name). A set the controller refuses is a result
        (every document's outcome), not an error.
        """
        params = _write_params(dry_run, force)
        if prune is not None:
            params["prune"] = "true"
            if prune:
                params["selector"] = ",".join(f"{k}={v}" for k, v in prune.items())
        response = self._request(
            "POST",
            "/v1/apply",
            json=[p.to_document(with_revision=False) for p in policies],
            params=params,
            allow={409, 422},
        )
        answer = response.json()
        if "items" not in answer:  # a refusal of the request itself, not of its documents
            raise _refusal(response)
        items = [
            SetOutcome(
                item["index"],
                item["name"] or f"(document {item['index'] + 1})",
                item["outcome"],
                _error_sentence(item["error"]) if item["error"] else None,
            )
            for item in answer["items"]
        ]
        message = answer["error"]["message"] if "error" in answer else ""
        return SetResult(bool(answer["applied"]), message, items)

    def list_agents(
        self, name: str | None = None, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """``GET /v1/agents``: the recorded agents (with that id or node name, those labels)."""
        params = _labels(labels) + ([("name", name)] if name else [])
        body = self._request("GET", "/v1/agents", params=params).json()
        items: list[dict[str, Any]] = body["items"]
        return items

    def delete_agent(self, agent_id: str) -> None:
        """``DELETE /v1/agents/{id}``: forget a node that is gone (refused while connected)."""
        self._request("DELETE", f"/v1/agents/{agent_id}")

    def endpoints(
        self, policy: str | None = None, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """``GET /v1/endpoints``: health per endpoint address (of one policy, if given)."""
        params = _labels(labels) + ([("policy", policy)] if policy else [])
        body: dict[str, Any] = self._request("GET", "/v1/endpoints", params=params).json()
        return body

    def drain(
        self,
        address: str,
        policy: str | None = None,
        duration: str | None = None,
        *,
        force: bool = False,
    ) -> dict[str, Any]:
        """``POST /v1/endpoints/{address}/drain``: ControllerRefused (409) past a safety rule."""
        body = {k: v for k, v in (("policy", policy), ("for", duration)) if v is not None}
        params = {"force": "true"} if force else {}
        answer: dict[str, Any] = self._request(
            "POST", f"/v1/endpoints/{address}/drain", json=body, params=params
        ).json()
        return answer

    def undrain(self, address: str, policy: str | None = None) -> int:
        """``DELETE /v1/endpoints/{address}/drain``; returns the revision."""
        params = {"policy": policy} if policy else {}
        response = self._request("DELETE", f"/v1/endpoints/{address}/drain", params=params)
        revision: int = response.json()["revision"]
        return revision

    def rollout_status(self, policy: str) -> dict[str, Any]:
        """``GET /v1/policies/{name}/rollout``."""
        body: dict[str, Any] = self._request("GET", f"/v1/policies/{policy}/rollout").json()
        return body

    def rollout_command(self, policy: str, command: str) -> dict[str, Any]:
        """``POST /v1/policies/{name}/rollout/{command}``: ControllerRefused (409) if it does
        not fit."""
        path = f"/v1/policies/{policy}/rollout/{command}"
        body: dict[str, Any] = self._request("POST", path).json()
        return body

    def share(self, policy: str, window: int) -> dict[str, Any]:
        """``GET /v1/policies/{name}/share``: served against intended share."""
        path = f"/v1/policies/{policy}/share"
        body: dict[str, Any] = self._request("GET", path, params={"window": window}).json()
        return body

    def scale(self, policy: str) -> dict[str, Any]:
        """``GET /v1/policies/{name}/scale``: the demand-driven slices' counts and rates."""
        body: dict[str, Any] = self._request("GET", f"/v1/policies/{policy}/scale").json()
        return body

    def explain(self, name: str, client: str, node: str | None) -> dict[str, Any]:
        """``GET /v1/explain``: what ``client`` gets from policy (or DNS name) ``name``."""
        params = {"name": name, "client": client, **({"node": node} if node else {})}
        body: dict[str, Any] = self._request("GET", "/v1/explain", params=params).json()
        return body

    def what_if(self, document: object, client: str, node: str | None) -> dict[str, Any]:
        """``POST /v1/explain``: the proposed ``document`` beside the stored policy."""
        params = {"client": client, **({"node": node} if node else {})}
        response = self._request("POST", "/v1/explain", params=params, json=document)
        body: dict[str, Any] = response.json()
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
        except httpx.ConnectError as exc:
            if certificate_error(exc) is not None:
                raise ControllerUnreachable(
                    f"the controller at {self.server} was not trusted: {exc} (give its CA "
                    "bundle with --ca-file or $DNSMESH_CA_FILE: dnsmesh ca export)"
                ) from exc
            raise ControllerUnreachable(
                f"cannot reach the controller at {self.server}: {exc or type(exc).__name__}"
            ) from exc
        except httpx.TransportError as exc:
            raise ControllerUnreachable(
                f"cannot reach the controller at {self.server}: {exc or type(exc).__name__}"
            ) from exc
        if response.is_success or response.status_code in allow:
            return response
        raise _refusal(response)


def _write_params(dry_run: bool, force: bool) -> dict[str, str]:
    return {**_dry_run(dry_run), **({"force": "true"} if force else {})}


def _if_match(revision: int | None) -> dict[str, str]:
    return {} if revision is None else {"If-Match": f'"{revision}"'}


def _dry_run(dry_run: bool) -> dict[str, str]:
    return {"dry_run": "true"} if dry_run else {}


def _labels(labels: dict[str, str] | None) -> list[tuple[str, str]]:
    return [("label", f"{k}={v}") for k, v in (labels or {}).items()]


def _error_sentence(error: dict[str, Any]) -> str:
    fields = [FieldError(f["path"], f["message"]) for f in error.get("fields", [])]
    return _sentence(str(error["message"]), fields)


def _sentence(message: str, fields: list[FieldError]) -> str:
    """The controller's message and the fields it blamed, read as one sentence."""
    detail = "; ".join(str(f) for f in fields if f.message not in message)
    return message + (f": {detail}" if detail else "")


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
        return TokenRefused(403, code, message, fields)  # "role 'viewer' may not write ..."
    return ControllerRefused(response.status_code, code, message, fields)
