"""Who may ask the agent, how fast, and how large a UDP answer may be: pure rules, no I/O.

The agent's query entry (agent/entry.py) and UDP listener apply these; they are here so
the matching, the buckets and the size rule are tested without sockets. Time is passed in.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Loopback of both families: always in the default --allow (the node's own processes).
LOOPBACK: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Memoised verdicts per client string; cleared when full, so a flood of distinct (spoofed)
# sources costs a re-match each but never unbounded memory.
MEMO_LIMIT: Final = 65_536


def parse_network(text: str) -> Network:
    """``10.0.0.0/8``, ``2001:db8::/32``, or a bare address (a /32 or /128)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network (CIDR such as 10.0.0.0/8): {exc}") from None


def _address(client: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address, a v4-mapped v6 one as v4; None if it does not parse."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _contains(networks: tuple[Network, ...], client: str) -> bool:
    address = _address(client)
    return address is not None and any(address in network for network in networks)


class ClientAcl:
    """The clients the agent answers (``--allow``); every other one is refused.

    ``admitted`` holds the client strings already found allowed, so the query entry's check
    for a repeat client is one set membership test (no call): the policy-hit path stays at
    a parse, a dict lookup and a sendto. Refused clients are memoised apart, so a flood
    from outside costs no re-match either.
    """

    __slots__ = ("admitted", "networks", "refused")

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self.admitted: set[str] = set()
        self.refused: set[str] = set()

    def allows(self, client: str) -> bool:
        if client in self.admitted:
            return True
        if client in self.refused:
            return False
        allowed = _contains(self.networks, client)
        memo = self.admitted if allowed else self.refused
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo.add(client)
        return allowed


class RateLimiter:
    """Token buckets per client prefix (/32 and /64 by default): ``rate`` queries a second
    on average, bursts of ``burst``; exempt networks are never limited.

    Memory is bounded: at most ``max_buckets`` buckets, least recently used evicted first
    (an evicted source starts again with a full bucket, which only a flood of ``max_buckets``
    other sources can cause). ``slip``: of the queries over the limit, every ``slip``-th is
    answered with TC=1 (so a real client behind a spoofed flood retries over TCP, as BIND's
    RRL "slip" does) and the rest are dropped; 0 drops them all.
    """

    __slots__ = (
        "_buckets",
        "_keys",
        "_over",
        "burst",
        "exempt",
        "max_buckets",
        "rate",
        "slip",
        "v4_prefix",
        "v6_prefix",
    )

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        exempt: Iterable[Network] = (),
        v4_prefix: int = 32,
        v6_prefix: int = 64,
        slip: int = 2,
        max_buckets: int = 65_536,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        if not 0 <= v4_prefix <= 32 or not 0 <= v6_prefix <= 128:
            raise ValueError("prefix lengths are 0-32 (IPv4) and 0-128 (IPv6)")
        if slip < 0 or max_buckets < 1:
            raise ValueError("slip cannot be negative and max_buckets must be at least 1")
        self.rate = rate
        self.burst = burst
        self.exempt = tuple(exempt)
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self.slip = slip
        self.max_buckets = max_buckets
        # client string -> its bucket key (its prefix as text), or None when exempt.
        self._keys: dict[str, str | None] = {}
        # bucket key -> [tokens, time of the last refill]; order is least recently used.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._over = 0  # queries over the limit so far, for the slip rotation

    def key_for(self, client: str) -> str | None:
        """The bucket a client draws from (its prefix), None when it is exempt. An
        unparseable client string gets a bucket of its own."""
        key = self._keys.get(client, "")
        if key == "":
            key = self._key(client)
            if len(self._keys) >= MEMO_LIMIT:
                self._keys.clear()
            self._keys[client] = key
        return key

    def _key(self, client: str) -> str | None:
        address = _address(client)
        if address is None:
            return client
        if any(address in network for network in self.exempt):
            return None
        prefix = self.v4_prefix if address.version == 4 else self.v6_prefix
        return ipaddress.ip_network((address, prefix), strict=False).with_prefixlen

    def allow(self, client: str, now: float) -> bool:
        """Take a token for ``client`` at time ``now`` (seconds); False: over the limit."""
        key = self.key_for(client)
        if key is None:
            return True
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_buckets:
                buckets.popitem(last=False)
            bucket = buckets[key] = [float(self.burst), now]
        else:
            buckets.move_to_end(key)
            tokens = bucket[0] + (now - bucket[1]) * self.rate
            bucket[0] = tokens if tokens < self.burst else float(self.burst)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False

    def slips(self) -> bool:
        """For a query over the limit: whether it gets a TC=1 answer (else it is dropped)."""
        self._over += 1
        return self.slip > 0 and self._over % self.slip == 0

    def __len__(self) -> int:
        return len(self._buckets)


def udp_size_cap(query_size: int, factor: int) -> int:
    """The largest UDP answer sent for a query of ``query_size`` octets (amplification guard).

    An answer of up to 512 octets always goes (every client takes that much, RFC 1035
    §4.2.1, and plain DNS has always answered that large); above, at most ``factor`` times
    the query, so a spoofed query buys a reflection of at most ~10x rather than the ~40x a
    1232-octet EDNS answer to a 30-octet query gives. A larger answer goes out truncated
    (TC=1) and a real client asks again over TCP, where its address cannot be spoofed.
    ``factor`` 0 turns the guard off (no cap).
    """
    if factor <= 0:
        return 65_535
    return max(512, factor * query_size)
