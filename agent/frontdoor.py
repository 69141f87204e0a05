"""The front door's rules built from the agent's settings: who is allowed by default, and
the rate limiter (the rules themselves are pure, in dnsmesh/admission.py).

Not an open resolver by default: without ``--allow`` the agent answers loopback and the
addresses it listens on. Listening on a wildcard (0.0.0.0 or ::) says nothing about which
clients are meant, so the default then adds the node's own addresses (read from the
kernel: /proc/net/fib_trie and /proc/net/if_inet6 on Linux), never anyone else's: other
hosts and containers must be named with ``--allow``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Iterable
from pathlib import Path

from agent.config import AgentConfig, HostPort
from dnsmesh.admission import LOOPBACK, ClientAcl, Network, RateLimiter
from dnsmesh.logs import fields

log = logging.getLogger(__name__)

_FIB_TRIE = Path("/proc/net/fib_trie")
_IF_INET6 = Path("/proc/net/if_inet6")


def node_addresses(fib_trie: Path = _FIB_TRIE, if_inet6: Path = _IF_INET6) -> list[Network]:
    """This node's own local addresses (IPv4 "host LOCAL" routes, IPv6 interface addresses);
    empty where the kernel files do not exist (not Linux)."""
    found: list[Network] = []
    try:
        previous = ""
        for line in fib_trie.read_text().splitlines():
            words = line.split()
            if words[1:3] == ["host", "LOCAL"] and words[0].startswith("/") and previous:
                found.append(ipaddress.ip_network(f"{previous}{words[0]}", strict=False))
            if len(words) == 2 and words[0] in ("|--", "+--"):
                previous = words[1]
    except OSError:
        pass
    try:
        for line in if_inet6.read_text().splitlines():
            digits = line.split()[0]
            text = ":".join(digits[i : i + 4] for i in range(0, 32, 4))
            found.append(ipaddress.ip_network(text))
    except (OSError, IndexError, ValueError):
        pass
    return found


def default_allow(listen: Iterable[HostPort]) -> tuple[Network, ...]:
    """Loopback, the listen addresses, and the node's own when one of them is a wildcard."""
    networks: list[Network] = list(LOOPBACK)
    for address in listen:
        host = ipaddress.ip_address(address.host)
        more = node_addresses() if host.is_unspecified else [ipaddress.ip_network(host)]
        for network in more:  # those not already covered, so the logged list says it plainly
            if not any(_within(network, held) for held in networks):
                networks.append(network)
    return tuple(networks)


def _within(network: Network, other: Network) -> bool:
    return network.version == other.version and network.subnet_of(other)  # type: ignore[arg-type]


def build_acl(config: AgentConfig) -> ClientAcl:
    networks = config.allow if config.allow is not None else default_allow(config.listen)
    log.info(
        "agent.allow",
        extra=fields(
            allow=[str(n) for n in networks],
            default=config.allow is None,
            refuse_mode="drop" if config.refuse_drop else "refuse",
        ),
    )
    return ClientAcl(networks)


def build_limiter(config: AgentConfig) -> RateLimiter | None:
    """The UDP rate limiter, None when ``--rate-limit`` is 0 (off)."""
    if config.rate_limit <= 0:
        return None
    burst = config.rate_limit_burst or max(1, math.ceil(config.rate_limit))
    return RateLimiter(
        config.rate_limit,
        burst,
        exempt=config.rate_limit_exempt,
        v4_prefix=config.rate_limit_v4_prefix,
        v6_prefix=config.rate_limit_v6_prefix,
        slip=config.rate_limit_slip,
    )
