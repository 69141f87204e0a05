"""The resolver pipeline: small handlers in a fixed order, assembled in one place.

Handlers before the last answer at once (no awaits), so a policy hit over UDP costs a parse,
a dict lookup, the pre-built response and a sendto. They return the response bytes only:
where an answer came from is the handler's place in the pipeline, so its Source is paired
with it here and counted by the query entry (agent/entry.py), and no Answer object is built
per immediate answer (building and reading one cost ~0.35 us, about 5% of a policy hit).
Only the last handler, forwarding, is asynchronous; the listeners start a task for it only
when every handler before passed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.answer import Answer, Source
from agent.cache import Cache
from agent.handlers.cached import CachedAnswers
from agent.handlers.forward import Forwarder
from agent.handlers.local import LocalNames
from agent.handlers.loopguard import LoopGuard
from agent.handlers.policy import DecidingPolicyAnswers, PolicyAnswers
from agent.served import ServedSnapshot
from agent.upstream import UpstreamClient
from dnsmesh.dnsforward import UpstreamAnswer
from dnsmesh.dnswire import Query

ImmediateHandler = Callable[[Query, str], bytes | None]
FinalHandler = Callable[[Query, str], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The handlers in order; agent.entry.QueryEntry walks them, the first answer wins."""

    immediate: tuple[tuple[ImmediateHandler, str], ...]  # (handler, its Source constant)
    final: FinalHandler
    # The policy handler, whose decisions the query log reads (None: a pipeline built by hand).
    policies: PolicyAnswers | None = None


def build_pipeline(
    served: ServedSnapshot,
    cache: Cache[UpstreamAnswer],
    upstream: UpstreamClient,
    loop_guard: LoopGuard,
    rng: random.Random,
    *,
    stale_ttl: int,
    stale_answer_after: float,
    keep_decisions: bool = False,
) -> Pipeline:
    """``keep_decisions``: the query log is on, and reads which policy answered."""
    policies = (DecidingPolicyAnswers if keep_decisions else PolicyAnswers)(served, rng)
    return Pipeline(
        immediate=(
            # 1. Special-use names first: RFC 6761/6762 say they are answered locally and
            #    never sent anywhere, and no policy may take "localhost" over.
            (LocalNames().answer, Source.LOCAL),
            # 2. Policies before the cache: a policy answer is picked per query (weights,
            #    stickiness, the client's slice) and a reload must show on the next query;
            #    a cached copy would freeze one pick. A name that was forwarded and cached
            #    before a policy appeared for it is answered by the policy from then on.
            (policies.answer, Source.POLICY),
            # 3. The cache before forwarding, the point of having one.
            (CachedAnswers(cache).answer, Source.CACHE),
            # 4. The loop guard just before forwarding: only a query about to be forwarded
            #    can be our own probe coming back, and hits above never pay for the check.
            #    Its REFUSED is an error made here.
            (loop_guard.answer, Source.ERROR),
        ),
        # 5. Forwarding last: the only step that waits on the network.
        final=Forwarder(
            upstream, cache, stale_ttl=stale_ttl, stale_answer_after=stale_answer_after
        ).answer,
        policies=policies,
    )
