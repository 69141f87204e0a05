"""How the agent proves who it is to the controller: its certificate, else its token.

An agent started with ``--join-token`` (or whose state folder already holds an identity)
speaks mTLS: it makes an EC key here, sends a CSR with the join token (``POST /v1/join``),
keeps the key and the certificate it gets (agent/sync/identity.py), and from then on
connects with that certificate and no token; its agent id is its node name. Half way
through the certificate's validity it asks for a new one (``POST /v1/renew``, over its own
short HTTPS connection authenticated by the current certificate, with a new key): the
open stream is left alone, and the next connection presents the new certificate.

Without either, it sends ``Authorization: Bearer <token>`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from agent.sync.config import SyncConfig
from agent.sync.errors import JoinRefused, SyncRetry, parse_retry_after
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields

if TYPE_CHECKING:
    # cryptography (~10 MiB resident, 40 ms to import) is for agents that speak mTLS: a
    # token agent never loads it (agent/sync/controlled_agent.py imports it only for those).
    from cryptography.hazmat.primitives.asymmetric import ec

    from agent.sync.identity import Identity, IdentityFile

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Credentials:
    """The agent's current credentials; ``ensure()`` before each connect."""

    def __init__(
        self, config: SyncConfig, identity_file: IdentityFile | None, *, clock: Clock = utc_now
    ) -> None:
        """``identity_file`` None: a token agent, with no identity file and no join token."""
        if identity_file is None and config.join_token:
            raise ValueError("an agent with a join token keeps its identity in a file")
        self.config = config
        self.file = identity_file
        self.clock = clock
        self.identity: Identity | None = identity_file.load() if identity_file else None
        self.mtls = self.identity is not None or bool(config.join_token)
        self.changed = asyncio.Event()  # set when a join or renewal stored a new identity
        if self.mtls and not config.http_url.startswith("https://"):
            raise ConfigError("an agent joins over TLS only: give an https:// --controller")
        if self.identity is not None and self.identity.node_name != config.node_name:
            raise ConfigError(
                f"the agent identity in {self.identity.path} is node "
                f"{self.identity.node_name!r}'s, not {config.node_name!r}: pass --node-name "
                f"{self.identity.node_name}, or move the file away and join again"
            )

    @property
    def agent_id(self) -> str | None:
        """With a certificate the agent id is the node name (None: the state folder's)."""
        return self.config.node_name if self.mtls else None

    def headers(self) -> dict[str, str]:
        return {} if self.mtls else {"Authorization": f"Bearer {self.config.token}"}

    def tls_context(self) -> ssl.SSLContext:
        if self.identity is not None:
            return self.identity.client_context(self.config.ca_file)
        return self.config.tls_context()

    def certificate_refused(self) -> None:
        """The controller refused the certificate (revoked, or not issued by it): with a
        join token configured, the next connect joins again with it (a revoked node needs
        a new one); without, the certificate is kept and the refusal retried slowly."""
        if self.mtls and self.identity is not None and self.config.join_token:
            log.warning(
                "sync.certificate_refused",
                extra=fields(spiffe_id=self.identity.spiffe_id, outcome="joining again"),
            )
            self.identity = None

    async def ensure(self) -> None:
        """Joins when an mTLS agent has no usable certificate; JoinRefused, SyncRetry."""
        if not self.mtls:
            return
        identity = self.identity
        if identity is not None and not identity.expired(self.clock()):
            return
        if not self.config.join_token:
            assert identity is not None
            raise JoinRefused(
                0,
                f"the certificate expired at {identity.not_after.isoformat()}; start the "
                "agent with a new join token (dnsmesh token create --role agent --join)",
            )
        if identity is not None:
            log.warning(
                "sync.certificate_expired",
                extra=fields(not_after=identity.not_after.isoformat(), outcome="joining again"),
            )
        await self._join(self.config.join_token)

    async def _join(self, token: str) -> None:
        from agent.sync.identity import csr_pem, new_key  # imported with the file

        key = new_key()
        body = await self._post(
            "/v1/join",
            {"node_name": self.config.node_name, "csr": csr_pem(key, self.config.node_name)},
            verify=self.config.tls_context(),
            headers={"Authorization": f"Bearer {token}"},
        )
        self._store(key, body, "sync.joined")

    async def renew(self) -> None:
        """A new key and certificate, asked with the current certificate."""
        identity = self.identity
        if identity is None:
            return
        from agent.sync.identity import csr_pem, new_key  # imported with the file

        key = new_key()
        body = await self._post(
            "/v1/renew",
            {"csr": csr_pem(key, self.config.node_name)},
            verify=identity.client_context(self.config.ca_file),
            headers={},
        )
        self._store(key, body, "sync.certificate_renewed")

    def _store(self, key: ec.EllipticCurvePrivateKey, body: dict[str, object], event: str) -> None:
        assert self.file is not None  # only an mTLS agent joins or renews
        try:
            self.identity = self.file.store(key, str(body["certificate"]))
        except (KeyError, ValueError) as exc:
            raise SyncRetry(f"the controller's answer holds no certificate: {exc}") from exc
        log.info(
            event,
            extra=fields(
                spiffe_id=self.identity.spiffe_id,
                not_after=self.identity.not_after.isoformat(),
                renew_at=self.identity.renew_at().isoformat(),
                file=str(self.file.path),
            ),
        )
        self.changed.set()

    async def _post(
        self,
        path: str,
        body: dict[str, str],
        *,
        verify: ssl.SSLContext,
        headers: dict[str, str],
    ) -> dict[str, object]:
        async with httpx.AsyncClient(
            base_url=self.config.http_url,
            verify=verify,
            trust_env=False,
            timeout=httpx.Timeout(10.0, connect=self.config.open_timeout),
        ) as client:
            response = await client.post(path, json=body, headers=headers)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.is_success and isinstance(answer, dict):
            return answer
        message = response.text[:300]
        if isinstance(answer, dict):
            message = str((answer.get("error") or {}).get("message", message))
        status = response.status_code
        if status in (401, 403, 404, 422):  # the token, the certificate or the name: not a blip
            raise JoinRefused(status, message)
        raise SyncRetry(
            f"POST {path}: {status} {message}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    async def renewals(self, retry_cap: float) -> None:
        """Renews at half of each certificate's validity until cancelled.

        A failed renewal is retried after a tenth of the time left (between 0.5 s and
        ``retry_cap``); the current certificate keeps working meanwhile.
        """
        while True:
            identity = self.identity
            if identity is None:
                self.changed.clear()
                await self.changed.wait()
                continue
            wait = (identity.renew_at() - self.clock()).total_seconds()
            if wait > 0:
                self.changed.clear()
                # Woken early by a join (a new identity): its own half-life counts.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), wait)
                continue
            try:
                await self.renew()
            except (httpx.HTTPError, OSError, SyncRetry, JoinRefused) as exc:
                left = (identity.not_after - self.clock()).total_seconds()
                retry = min(retry_cap, max(0.5, left / 10))
                level = logging.ERROR if isinstance(exc, JoinRefused) else logging.WARNING
                log.log(
                    level,
                    "sync.renewal_failed",
                    extra=fields(
                        error=str(exc) or type(exc).__name__,
                        not_after=identity.not_after.isoformat(),
                        retry_in=round(retry, 3),
                    ),
                )
                await asyncio.sleep(retry)
