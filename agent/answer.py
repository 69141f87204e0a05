"""What every handler returns: the response and where it came from (Blocky's ResponseType)."""

from __future__ import annotations

from typing import Final, NamedTuple


class Source:
    """Where an answer came from; logs and metrics read this, never the handlers' insides.

    Plain string constants rather than an Enum: an Enum member's ``__hash__`` is a Python
    call, and the listeners count every answer by source in a dict.
    """

    LOCAL: Final = "local"  # special-use names answered here (RFC 6761/6762)
    POLICY: Final = "policy"  # the policy snapshot
    CACHE: Final = "cache"  # a fresh cached upstream answer
    STALE: Final = "stale"  # an expired cached answer while upstreams fail (RFC 8767)
    UPSTREAM: Final = "upstream"  # forwarded and answered just now
    ERROR: Final = "error"  # SERVFAIL/REFUSED made here
    ALL: Final = (LOCAL, POLICY, CACHE, STALE, UPSTREAM, ERROR)


class Answer(NamedTuple):
    """A NamedTuple, not a frozen dataclass: one is built per query, and a frozen dataclass's
    ``__init__`` costs several times as much."""

    wire: bytes
    source: str  # one of Source's constants
    reason: str = ""  # a word for logs when the source alone does not say it ("loop", ...)
