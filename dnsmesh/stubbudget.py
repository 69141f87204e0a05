"""How long a node's glibc stub must wait so that it never gives up before the agent answers.

The budget chain (docs/design.md, "Forwarding and its time budget"): an upstream attempt
(``--attempt-timeout``) < the whole forwarded query (``--query-timeout``, then SERVFAIL) <
the stub's first wait. The agent's answer to a forwarded query comes at the latest:

- with nothing stale cached: SERVFAIL when the upstream client's deadline, ``query_timeout``,
  ends; that deadline covers every attempt, the TCP retry of a truncated answer and the wait
  for a late answer;
- with a stale entry: stale at ``stale_answer_after`` (RFC 8767's client response timer), or
  when the fetch fails at ``query_timeout``, whichever comes first.

glibc's ``res_send`` waits, for the nameserver at index ``i`` of ``n``, ``timeout`` seconds
when ``i == 0`` and ``(timeout << i) // n`` (at least 1) otherwise, then moves to the next
one, and goes round ``attempts`` times. A stub that gives up on its first nameserver before
the agent answers resends; the answer to its first query then lands on a socket it no
longer reads. So the first wait alone must outlast the agent's worst case, with a margin
for a loaded machine; ``attempts`` beyond one is for a lost datagram or a restarting agent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# What the stub waits beyond the agent's deadline: the answer still has to be built, sent
# and read on a loaded machine. Half a second is more than any of that takes.
DELIVERY_MARGIN = 0.5
# One retry, glibc's default: a datagram lost, or the agent restarting (SO_REUSEPORT
# overlaps the two processes, but a stop can still drop what was queued).
STUB_ATTEMPTS = 2
GLIBC_MAX_TIMEOUT = 30  # RES_MAXRETRANS: glibc caps options timeout: here
GLIBC_MAX_ATTEMPTS = 5  # RES_MAXRETRY


@dataclass(frozen=True, slots=True)
class StubOptions:
    """The ``options timeout:N attempts:M`` of a resolv.conf that names the agent."""

    timeout: int
    attempts: int

    def words(self) -> list[str]:
        return [f"timeout:{self.timeout}", f"attempts:{self.attempts}"]


def agent_worst_case(query_timeout: float, stale_answer_after: float) -> float:
    """The longest the agent takes to answer a forwarded query: SERVFAIL or stale."""
    without_stale = query_timeout
    with_stale = min(stale_answer_after, query_timeout)
    return max(without_stale, with_stale)


def glibc_waits(options: StubOptions, nameservers: int) -> list[int]:
    """Seconds glibc waits on each nameserver, in order, over all its attempts."""
    timeout = min(options.timeout, GLIBC_MAX_TIMEOUT)
    attempts = min(options.attempts, GLIBC_MAX_ATTEMPTS)
    per_round = []
    for index in range(nameservers):
        seconds = timeout << index
        if index > 0:
            seconds //= nameservers
        per_round.append(max(seconds, 1))
    return per_round * attempts


def stub_options(query_timeout: float, stale_answer_after: float) -> StubOptions:
    """The smallest whole-second ``timeout`` whose first wait outlasts the agent, plus margin."""
    worst = agent_worst_case(query_timeout, stale_answer_after)
    return StubOptions(timeout=max(1, math.ceil(worst + DELIVERY_MARGIN)), attempts=STUB_ATTEMPTS)
