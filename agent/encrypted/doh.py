"""DNS over HTTPS (RFC 8484): POST application/dns-message over httpx, HTTP/2 when offered.

One httpx client per upstream keeps its connection open between queries (keep-alive up to
``idle_timeout``) and, over HTTP/2, carries concurrent queries as streams on that one
connection, the DoH counterpart of DoT pipelining. HTTP/2 needs the ``h2`` package (a
dependency for this reason); an HTTP/1.1-only server is spoken to in HTTP/1.1.

``trust_env=False``: no proxy or CA from the environment. A proxy would be reached by a name
the agent itself would have to resolve, and the trust store is the agent's own setting.
"""

from __future__ import annotations

import ssl

import httpx

from agent.config import HTTPS_PORT, HttpsUpstream
from agent.encrypted import Question, StreamFailure
from dnsmesh.dnsforward import UpstreamAnswer
from dnsmesh.tlserrors import certificate_error

_MEDIA = "application/dns-message"
# RFC 8484 §4.1: use ID 0 (the HTTP exchange pairs the answer, and caches may share it).
_DOH_ID = 0


class DohClient:
    """Queries one DoH upstream."""

    def __init__(
        self, upstream: HttpsUpstream, context: ssl.SSLContext, idle_timeout: float
    ) -> None:
        self.upstream = upstream
        self._headers = {"content-type": _MEDIA, "accept": _MEDIA}
        self._extensions: dict[str, str] = {}
        if upstream.name is not None:
            # Connect to the numeric URL host, but present and verify the configured name.
            port = "" if upstream.port == HTTPS_PORT else f":{upstream.port}"
            self._headers["host"] = f"{upstream.name}{port}"
            self._extensions["sni_hostname"] = upstream.name
        self._client = httpx.AsyncClient(
            http2=True,
            verify=context,
            trust_env=False,
            timeout=None,  # the upstream client's deadline bounds each attempt
            limits=httpx.Limits(keepalive_expiry=idle_timeout),
        )

    async def query(self, question: Question) -> UpstreamAnswer:
        try:
            response = await self._client.post(
                self.upstream.url,
                content=question.packet(_DOH_ID),
                headers=self._headers,
                extensions=self._extensions,
            )
        except httpx.HTTPError as exc:
            raise StreamFailure(_reason(exc)) from None
        if response.status_code != 200:
            raise StreamFailure(f"HTTP status {response.status_code}")
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != _MEDIA:
            raise StreamFailure(f"answer of type {media or 'none'!r}, not {_MEDIA}")
        return question.answer(response.content, _DOH_ID)

    async def close(self) -> None:
        await self._client.aclose()


def _reason(exc: httpx.HTTPError) -> str:
    """The root cause in words; a refused certificate is named as such (httpx wraps it)."""
    refused = certificate_error(exc)
    if refused is not None:
        return f"certificate refused: {refused.verify_message}"
    return str(exc) or type(exc).__name__
