"""The query log's rules, without I/O: which lines are written, and what each one says.

The agent's query path hands a small tuple (a ``Record``) to a bounded queue and nothing
more; everything that costs is done here, on the log's writer thread (agent/querylog.py):
names to text, the client's prefix, the policy decision, ``json.dumps``. So the loop pays a
clock read, an admission test and an append per query, whatever a line holds.

**Admission** (``LineAdmission``): a line is sampled first (``--query-log-sample``: that
fraction of queries is logged), then held to ``--query-log-max-rate`` lines a second by a
token bucket, so a flood writes at most that many lines and cannot fill the disk. Lines the
rate left out are counted; so are lines dropped because the writer's queue was full. Both
counts are running totals carried by every record, and ``LineFormatter`` writes the part
not yet reported on the next line (``limited``, ``overflow``), or on a summary line when no
line followed them.

**The decision** of a policy answer is read from what answered: the compiled policy that
made the response (its name and the revision it was compiled for, so a reload between the
answer and the line cannot relabel it), the view the client's slice selects (a pure
function of that policy and the client), that view's candidates as compiled
(dnsmesh/snapshot.py), and the addresses in the response itself: ``picked`` is read out of
the answer section that was sent, not recomputed.
"""

from __future__ import annotations

import ipaddress
import json
import random
import time
from collections.abc import Callable
from typing import Any

import dns.rcode
import dns.rdatatype

from dnsmesh.dnswire import CLASS_IN, TYPE_A, TYPE_AAAA, Query, name_to_text
from dnsmesh.snapshot import Candidate, CompiledPolicy

# (start, end, client, query, source, response, policy, reason, limited, overflow):
#   start, end  perf_counter() seconds when the query arrived and when it was answered
#   query       the parsed query; None when it could not be parsed
#   response    the response as built (before any UDP fitting); None when nothing was sent
#   policy      the compiled policy that answered, for source "policy"; else None
#   reason      a word when the source alone does not say it ("" mostly)
#   limited, overflow  the running totals of lines left out so far (see LineFormatter)
# A plain tuple: built on the loop for every admitted query, where a NamedTuple's
# constructor would cost a Python call.
Record = tuple[
    float, float, str, Query | None, str, bytes | None, CompiledPolicy | None, str, int, int
]

# Memo tables (client prefixes, names, decisions) are cleared when they reach this size: a
# flood of distinct values costs the work each time, never unbounded memory.
_MEMO_LIMIT = 65536
# Decision heads kept at most: policies x slices x families in use, with room for reloads.
_HEADS_LIMIT = 4096
# One encoder for every line: json.dumps with arguments builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class LineAdmission:
    """Whether a query gets a line: sampled, then at most ``max_rate`` lines a second.

    ``max_rate`` 0 means no rate bound. The bucket holds one second's worth, so a burst
    after a quiet time is written whole up to that, and a flood gets ``max_rate`` lines a
    second. ``limited`` counts the lines the rate left out (not the sampled-out ones: not
    logging those is what sampling asked for).
    """

    __slots__ = ("_last", "_random", "_tokens", "burst", "limited", "rate", "sample")

    def __init__(
        self, sample: float = 1.0, max_rate: float = 1000.0, *, rng: random.Random | None = None
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError("the sample is a fraction from 0 to 1")
        if max_rate < 0:
            raise ValueError("the line rate cannot be negative")
        self.sample = sample
        self.rate = max_rate
        self.burst = max(1.0, max_rate)
        self._tokens = self.burst
        self._last: float | None = None
        self._random: Callable[[], float] = (rng or random.Random()).random
        self.limited = 0

    def admit(self, now: float) -> bool:
        """``now``: seconds on a monotonic clock."""
        if self.sample < 1.0 and self._random() >= self.sample:
            return False
        if not self.rate:
            return True
        last = self._last
        self._last = now
        tokens = self._tokens
        if last is not None and now > last:
            tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._tokens = tokens
            self.limited += 1
            return False
        self._tokens = tokens - 1.0
        return True


class ClientMask:
    """A client address cut to its prefix for privacy (``--query-log-client-prefix-v4`` and
    ``-v6``): 192.0.2.77 at 24 bits is 192.0.2.0. The full lengths keep addresses whole."""

    __slots__ = ("_memo", "v4_prefix", "v6_prefix")

    def __init__(self, v4_prefix: int = 32, v6_prefix: int = 128) -> None:
        if not 0 <= v4_prefix <= 32 or not 0 <= v6_prefix <= 128:
            raise ValueError("the IPv4 prefix is 0-32 bits and the IPv6 prefix 0-128")
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self._memo: dict[str, str] = {}

    def __call__(self, client: str) -> str:
        if self.v4_prefix == 32 and self.v6_prefix == 128:
            return client
        masked = self._memo.get(client)
        if masked is None:
            masked = self._mask(client)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[client] = masked
        return masked

    def _mask(self, client: str) -> str:
        try:
            # A scope (fe80::1%eth0) names an interface of this node: not the client's.
            address = ipaddress.ip_address(client.partition("%")[0])
        except ValueError:
            return client  # not an address (a test's stand-in): nothing to hide
        prefix = self.v4_prefix if address.version == 4 else self.v6_prefix
        return str(ipaddress.ip_network((address, prefix), strict=False).network_address)


class Decisions:
    """The ``decision`` of policy lines, as JSON text.

    All of a decision but ``picked`` is fixed for one policy revision, slice and candidate
    list, so that part is encoded once and kept, keyed by those values (never by the
    compiled policy: holding compiled policies would keep every snapshot a reload or a
    re-weighing replaced alive); a line then costs the view lookup, one hash of the key
    and reading the addresses out of the answer.
    """

    __slots__ = ("_addresses", "_heads", "_picks")

    def __init__(self) -> None:
        self._heads: dict[tuple[str, int, str | None, tuple[Candidate, ...]], str] = {}
        self._addresses: dict[bytes, str] = {}
        self._picks: dict[bytes, str] = {}  # the sections after the question -> picked, as JSON

    def text(self, policy: CompiledPolicy, client: str, query: Query, response: bytes) -> str:
        """What ``policy`` decided for this answer: the candidates of the view the client's
        slice selects, in the family asked for, and what the answer holds."""
        candidates: tuple[Candidate, ...] = ()
        slice_id: str | None = None
        if query.qclass == CLASS_IN:  # another class is refused before any view is consulted
            view = policy.view_of(client)
            slice_id = view.slice
            qtype = query.qtype
            if qtype == TYPE_A:
                candidates = view.candidates(4)
            elif qtype == TYPE_AAAA:
                candidates = view.candidates(6)
        key = (policy.name, policy.revision, slice_id, candidates)
        head = self._heads.get(key)
        if head is None:
            head = _decision_head(*key)
            if len(self._heads) >= _HEADS_LIMIT:
                self._heads.clear()
            self._heads[key] = head
        # A policy's answers repeat (the same pre-encoded records, a few combinations), so
        # the addresses are read out of each distinct answer once.
        size = len(query.question)
        sections = response[12 + size :]
        picked = self._picks.get(sections)
        if picked is None:
            picked = _encode(self.picked(response, size))
            if len(self._picks) >= _MEMO_LIMIT:
                self._picks.clear()
            self._picks[sections] = picked
        return head + picked + "}"

    def picked(self, response: bytes, question_size: int) -> list[str]:
        """The A and AAAA addresses in ``response``'s answer section, in answer order.

        ``question_size``: the octets of the question section, which the response echoes
        after its header. A response cut short yields the addresses before the cut.
        """
        found: list[str] = []
        addresses = self._addresses
        try:
            count = int.from_bytes(response[6:8], "big")
            pos = 12 + question_size
            for _ in range(count):
                length = response[pos]
                while length and length < 0xC0:  # the owner: labels to the root or a pointer
                    pos += length + 1
                    length = response[pos]
                pos += 2 if length else 1
                rtype = int.from_bytes(response[pos : pos + 2], "big")
                rdlength = int.from_bytes(response[pos + 8 : pos + 10], "big")
                rdata = response[pos + 10 : pos + 10 + rdlength]
                pos += 10 + rdlength
                if len(rdata) != rdlength:
                    break
                if (rtype == TYPE_A and rdlength == 4) or (rtype == TYPE_AAAA and rdlength == 16):
                    text = addresses.get(rdata)
                    if text is None:  # as the candidates spell it (ipaddress, RFC 5952)
                        text = str(ipaddress.ip_address(rdata))
                        if len(addresses) >= _MEMO_LIMIT:
                            addresses.clear()
                        addresses[rdata] = text
                    found.append(text)
        except IndexError:
            pass
        return found


def _decision_head(
    policy: str, revision: int, slice_id: str | None, candidates: tuple[Candidate, ...]
) -> str:
    """A decision's JSON up to the value of ``picked``."""
    fixed = {
        "policy": policy,
        "slice": slice_id,
        "revision": revision,
        "candidates": [c._asdict() for c in candidates],
    }
    return _encode(fixed)[:-1] + ',"picked":'


_TYPES: dict[int, str] = {}
_RCODES: dict[int, str] = {}


def type_text(qtype: int) -> str:
    """A, AAAA, HTTPS ...; TYPE65280 for a type without a mnemonic (RFC 3597 §5)."""
    text = _TYPES.get(qtype)
    if text is None:
        text = _TYPES[qtype] = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))
    return text


def rcode_text(response: bytes) -> str:
    """The response header's RCODE as text (NOERROR, NXDOMAIN ...)."""
    rcode = response[3] & 0x0F
    text = _RCODES.get(rcode)
    if text is None:
        text = _RCODES[rcode] = dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
    return text


class LineFormatter:
    """Records to JSON lines; keeps how much of the left-out counts it has written.

    Records arrive in the order they were made, each with the running totals of lines left
    out so far, so the part a line reports is its totals less what earlier lines (or a
    summary) reported: every left-out line is counted once.
    """

    __slots__ = ("_names", "_second", "_stamp", "decisions", "limited", "mask", "overflow")

    def __init__(self, mask: ClientMask | None = None) -> None:
        self.mask = mask or ClientMask()
        self.decisions = Decisions()
        self.limited = 0  # the totals reported so far
        self.overflow = 0
        self._names: dict[bytes, str] = {}
        self._second = -1  # the last whole second formatted, and its text
        self._stamp = ""

    def line(self, record: Record, wall_offset: float) -> str:
        """One JSON line (with its newline). ``wall_offset``: time.time() - perf_counter()."""
        start, end, client, query, source, response, policy, reason, limited, overflow = record
        line: dict[str, Any] = {
            "time": self._time(start + wall_offset),
            "client": self.mask(client),
            "name": None if query is None else self._name(query.qname),
            "type": None if query is None else type_text(query.qtype),
            "rcode": None if response is None else rcode_text(response),
            "source": source,
            "latency_ms": round((end - start) * 1000.0, 3),
        }
        if reason:
            line["reason"] = reason
        self._left_out(line, limited, overflow)
        text = _encode(line)
        if policy is not None and query is not None and response is not None:
            decided = self.decisions.text(policy, client, query, response)
            return f'{text[:-1]},"decision":{decided}}}\n'
        return text + "\n"

    def summary(self, limited: int, overflow: int, wall: float) -> str | None:
        """A line with the left-out counts not reported yet (None when there are none):
        for a flood that ended, after which no line came to carry them."""
        line: dict[str, Any] = {"time": self._time(wall), "summary": True}
        self._left_out(line, limited, overflow)
        return _encode(line) + "\n" if len(line) > 2 else None

    def _left_out(self, line: dict[str, Any], limited: int, overflow: int) -> None:
        if limited > self.limited:
            line["limited"] = limited - self.limited
            self.limited = limited
        if overflow > self.overflow:
            line["overflow"] = overflow - self.overflow
            self.overflow = overflow

    def _name(self, qname: bytes) -> str:
        text = self._names.get(qname)
        if text is None:
            text = name_to_text(qname)
            if len(self._names) >= _MEMO_LIMIT:
                self._names.clear()
            self._names[qname] = text
        return text

    def _time(self, wall: float) -> str:
        """ISO 8601 in UTC with milliseconds, as the agent's JSON logs write it."""
        second = int(wall)
        if second != self._second:  # lines come in bursts: format each second once
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((wall - second) * 1000):03d}Z"
