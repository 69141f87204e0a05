"""The audit trail of refused writes (401/403), rate-limited per source address.

A refused write leaves one audit row (operation ``write.refused``): who (the token's name
when the token was valid but too weak, ``unknown-token`` or ``anonymous`` otherwise), the
route, the reason, the source address, the status and the token's display prefix when one
was presented. A token bucket per source (20 rows a second, bursts of 50) keeps a flood from
filling the table; the refusals it drops are counted, logged when dropping starts, and the
count is written into that source's next row (``after.dropped``). Recording never changes
the response: a refusal while the database is away is logged and not audited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from controller.auth import TOKEN_PREFIX, Principal
from controller.db.session import Database
from controller.repositories.history import append_audit
from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.controller.api")

OPERATION = "write.refused"
RATE_PER_S = 20.0
BURST = 50.0
MAX_SOURCES = 10_000  # buckets kept; idle (full) ones are forgotten first
_SHOWN_PREFIX = 12  # as much of a presented token as a token listing shows
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    dropped: int = 0  # since the source's last admitted row
    unlogged: int = 0  # since the last log line about it
    logged_at: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    dropped: int  # refusals of this source dropped since its last admitted row
    to_log: int  # drops to report in a log line now (0: none; at most one line per LOG_EVERY_S)


LOG_EVERY_S = 10.0


class TokenBuckets:
    """Per-key token buckets; ``take(key)`` says whether a row may be written now."""

    def __init__(
        self,
        rate_per_s: float = RATE_PER_S,
        burst: float = BURST,
        *,
        max_keys: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> Verdict:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate_per_s)
        bucket.at = now
        if bucket.tokens < 1.0:
            bucket.dropped += 1
            bucket.unlogged += 1
            return Verdict(False, bucket.dropped, self._log_due(bucket, now))
        bucket.tokens -= 1.0
        dropped, bucket.dropped = bucket.dropped, 0
        return Verdict(True, dropped, self._log_due(bucket, now))

    @staticmethod
    def _log_due(bucket: _Bucket, now: float) -> int:
        if not bucket.unlogged or now - bucket.logged_at < LOG_EVERY_S:
            return 0
        count, bucket.unlogged, bucket.logged_at = bucket.unlogged, 0, now
        return count

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_keys:
            return
        # A bucket that has refilled is the same as no bucket, unless it owes a count.
        full_after = self.burst / self.rate_per_s
        for key, bucket in list(self._buckets.items()):
            if now - bucket.at >= full_after and bucket.dropped == bucket.unlogged == 0:
                del self._buckets[key]
        while len(self._buckets) >= self.max_keys:  # all busy: forget the oldest
            del self._buckets[next(iter(self._buckets))]


class RefusalAudit:
    def __init__(self, db: Database, buckets: TokenBuckets | None = None) -> None:
        self.db = db
        self.buckets = buckets or TokenBuckets()

    async def record(
        self,
        request: Request,
        *,
        status: int,
        reason: str,
        principal: Principal | None,
        secret: str | None,
    ) -> None:
        if request.method in _READS:
            return
        source = request.client.host if request.client else "unknown"
        verdict = self.buckets.take(source)
        if verdict.to_log:
            log.warning(
                "audit.refusals_dropped", extra=fields(source=source, dropped=verdict.to_log)
            )
        if not verdict.admitted:
            return
        if principal is not None:
            actor = principal.name
        else:
            actor = "unknown-token" if secret else "anonymous"
        after: dict[str, object] = {
            "method": request.method,
            "path": request.url.path,
            "status": status,
            "reason": reason,
            "source": source,
        }
        if secret and secret.startswith(TOKEN_PREFIX):
            after["token_prefix"] = secret[:_SHOWN_PREFIX]
        if verdict.dropped:
            after["dropped"] = verdict.dropped
        try:
            await run_in_threadpool(self._write, actor, request.url.path, after)
        except Exception as error:  # the refusal stands whether or not it could be audited
            log.warning("audit.refusal_not_recorded", extra=fields(source=source, error=str(error)))

    def _write(self, actor: str, path: str, after: dict[str, object]) -> None:
        self.db.write(
            lambda session: append_audit(
                session,
                at=self.db.clock(),
                actor=actor[:63],
                operation=OPERATION,
                target=path[:127],
                revision=None,
                before=None,
                after=after,
            )
        )
