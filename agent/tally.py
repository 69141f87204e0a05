"""What the query entry counts per answer source: plain ints in lists, read at scrape time.

The per-query path pays a few list increments and two clock reads; turning them into
Prometheus samples (names, labels, buckets in seconds) happens only when ``/metrics`` is
scraped (agent/metrics/collector.py). Every dimension is a small fixed set chosen here, so
a client can never grow the number of series: a query type outside ``QTYPES`` is counted
as ``other``, and nothing is ever keyed by a query name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Nanoseconds, an int: a duration's bucket is its bit length.
clock_ns = time.perf_counter_ns
# An immediate answer (local, policy, cache, the front door's) is timed one in this many:
# reading the clock twice and filing the duration cost ~9 % of a policy hit (callgrind),
# and it is the same few microseconds every time. Forwarded answers are always timed.
IMMEDIATE_SAMPLE = 16

# The query types worth a series of their own; every other one is "other".
QTYPES = (
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("DS", 43),
    ("DNSKEY", 48),
    ("SVCB", 64),
    ("HTTPS", 65),
    ("ANY", 255),
    ("CAA", 257),
)
QTYPE_LABELS = (*(name for name, _ in QTYPES), "other", "unknown")
OTHER_QTYPE = len(QTYPES)
# A query whose question was never read (over its rate limit: not parsed at all).
UNKNOWN_QTYPE = OTHER_QTYPE + 1
# qtype -> its index in QTYPE_LABELS, for every 16-bit value: one bytes subscript per query.
# (Filled in place: built by a generator with a dict per value, it cost 0.1 s per start.)
_qtype_index = bytearray([OTHER_QTYPE]) * 65536
for _index, (_, _code) in enumerate(QTYPES):
    _qtype_index[_code] = _index
QTYPE_INDEX = bytes(_qtype_index)
del _qtype_index, _index, _code

# The 4-bit header RCODE (RFC 1035 §4.1.1, RFC 6895 §2.3) by value; "none": nothing was
# sent (a refused client with --refuse-mode drop, a rate-limited query dropped).
RCODE_LABELS = (
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
    "DSOTYPENI",
    "RCODE12",
    "RCODE13",
    "RCODE14",
    "RCODE15",
    "none",
)
NO_RESPONSE = len(RCODE_LABELS) - 1

# Latency buckets are powers of two nanoseconds: a query's bucket is its duration's
# ``int.bit_length()``, one C call and no search or bound check (a duration below 2**64 ns,
# 584 years, has a bit length of at most 64). Bucket b holds durations below 2**b ns.
LATENCY_SLOTS = 65
# Exported bounds: 2**10 ns (about 1 us) up to 2**33 ns (about 8.6 s, past any query
# timeout); the slots below are folded into the first bound, those above into +Inf.
FIRST_BOUND, LAST_BOUND = 10, 33


def bucket_bounds() -> list[float]:
    """The exported upper bounds in seconds (+Inf not included)."""
    return [2**b / 1e9 for b in range(FIRST_BOUND, LAST_BOUND + 1)]


def cumulative_buckets(latency: list[int]) -> list[int]:
    """The cumulative count at each bound of ``bucket_bounds`` and then +Inf."""
    out = []
    running = sum(latency[:FIRST_BOUND])
    for slot in range(FIRST_BOUND, LAST_BOUND + 1):
        running += latency[slot]
        out.append(running)
    out.append(sum(latency))
    return out


@dataclass(slots=True, eq=False)
class SourceTally:
    """The answers of one source: by query type and RCODE, and their latency (for the
    immediate sources, of one answer in IMMEDIATE_SAMPLE: ``latency`` then holds fewer
    answers than ``kinds``)."""

    # kinds[qtype index][rcode index]
    kinds: list[list[int]] = field(
        default_factory=lambda: [[0] * len(RCODE_LABELS) for _ in QTYPE_LABELS]
    )
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_SLOTS)
    latency_ns: int = 0  # the sum of the durations in ``latency``

    def add(self, qtype: int, rcode: int, start: int) -> None:
        """One answer: ``qtype`` an index into QTYPE_LABELS, ``rcode`` into RCODE_LABELS,
        timed from ``start`` (``clock_ns()``), or not timed when ``start`` is 0. (The query
        entry inlines this for its immediate answers.)"""
        self.kinds[qtype][rcode] += 1
        if start:
            elapsed = clock_ns() - start
            self.latency[elapsed.bit_length()] += 1
            self.latency_ns += elapsed

    @property
    def total(self) -> int:
        return sum(map(sum, self.kinds))


def rcode_of(wire: bytes | None) -> int:
    """The index in RCODE_LABELS of a response (NO_RESPONSE for none)."""
    return NO_RESPONSE if wire is None else wire[3] & 0x0F
