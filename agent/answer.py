"""What every handler returns: the response and where it came from (Blocky's ResponseType)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Source(StrEnum):
    """Where an answer came from; logs and metrics read this, never the handlers' insides."""

    LOCAL = "local"  # special-use names answered here (RFC 6761/6762)
    POLICY = "policy"  # the policy snapshot
    CACHE = "cache"  # a fresh cached upstream answer
    STALE = "stale"  # an expired cached answer while upstreams fail (RFC 8767)
    UPSTREAM = "upstream"  # forwarded and answered just now
    ERROR = "error"  # SERVFAIL/REFUSED/FORMERR/NOTIMP made here


@dataclass(frozen=True, slots=True)
class Answer:
    wire: bytes
    source: Source
    reason: str = ""  # a word for logs when the source alone does not say it ("loop", ...)
