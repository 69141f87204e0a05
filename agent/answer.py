"""Where an answer came from (Blocky's ResponseType), and the forwarder's answer with it."""

from __future__ import annotations

from typing import Final, NamedTuple


class Source:
    """Where an answer came from; logs and metrics read this, never the handlers' insides.

    Plain string constants rather than an Enum: an Enum member's ``__hash__`` is a Python
    call, and the query entry counts every answer by source in a dict.
    """

    LOCAL: Final = "local"  # special-use names answered here (RFC 6761/6762)
    POLICY: Final = "policy"  # the policy snapshot
    CACHE: Final = "cache"  # a fresh cached upstream answer
    STALE: Final = "stale"  # an expired cached answer while upstreams fail (RFC 8767)
    UPSTREAM: Final = "upstream"  # forwarded and answered just now
    ERROR: Final = "error"  # SERVFAIL/REFUSED made here
    # The front door's, before any handler: a client outside --allow, a query over its rate.
    REFUSED: Final = "refused"
    RATELIMITED: Final = "ratelimited"
    ALL: Final = (LOCAL, POLICY, CACHE, STALE, UPSTREAM, ERROR, REFUSED, RATELIMITED)


class Answer(NamedTuple):
    """The forwarding handler's answer. Immediate handlers return bytes and their source is
    their place in the pipeline (agent.pipeline), so none of these is built on the hot path;
    a forwarded answer costs a network exchange, next to which this tuple is nothing.
    A NamedTuple, not a frozen dataclass: a frozen dataclass's ``__init__`` costs more."""

    wire: bytes
    source: str  # one of Source's constants
    reason: str = ""  # a word for logs when the source alone does not say it ("loop", ...)
