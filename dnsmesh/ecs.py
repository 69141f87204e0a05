"""EDNS Client Subnet (RFC 7871): parse the option of a query, build the one of its answer.

Pure, no I/O. A forwarder that serves many clients says with ECS which network the query
came from (FAMILY, SOURCE PREFIX-LENGTH, the address truncated to it); the answer says with
SCOPE PREFIX-LENGTH for how much of that network it holds, so a cache downstream hands it
to those clients only (0: to everyone). The agent trusts ECS only from the forwarders it
is told to (``--trust-ecs-from``); the parse here checks the option whoever sent it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Final, NamedTuple

OPTION_ECS: Final = 8  # the EDNS option code (RFC 7871 §6)
FAMILY_IPV4: Final = 1  # IANA address family numbers
FAMILY_IPV6: Final = 2
_ADDRESS_BITS: Final = {FAMILY_IPV4: 32, FAMILY_IPV6: 128}
_FIXED = struct.Struct("!HBB")  # family, source prefix-length, scope prefix-length
_OPTION_HEAD = struct.Struct("!HH")  # option code, option length (RFC 6891 §6.1.2)
# A trusted forwarder names the same few networks over and over, and the parse's memo
# (dnsmesh/dnswire.py) hands back the same ClientSubnet for the same query: the network's
# text and the answer's option are memoised per network (cleared when full, so a flood of
# distinct networks costs what it did without the memo, and no more memory than this).
MEMO_LIMIT: Final = 4096
_KEYS: dict[ClientSubnet, str] = {}
_OPTIONS: dict[tuple[ClientSubnet, int], bytes] = {}


class EcsError(ValueError):
    """A malformed ECS option: the query is answered FORMERR (RFC 7871 §6, §7.1.2)."""


class ClientSubnet(NamedTuple):
    """A query's ECS option: the client's network as the forwarder sent it."""

    family: int  # FAMILY_IPV4 or FAMILY_IPV6
    source: int  # SOURCE PREFIX-LENGTH
    address: bytes  # ADDRESS as sent: ceil(source / 8) octets, bits past source zero

    @property
    def key(self) -> str:
        """The network as text ("10.8.0.0/24"): the "client" a policy answers for it.

        A client address from a socket never holds a "/", so the compiled policy tells an
        ECS network from a client address by the text alone (dnsmesh/snapshot.py). Made
        with inet_ntop (RFC 5952 text, as ``ipaddress`` writes it but for the old
        IPv4-compatible ::a.b.c.d) in a fifth of the time ``ipaddress`` takes: this runs
        for every ECS query a trusted forwarder sends, and memoised (``MEMO_LIMIT``)."""
        text = _KEYS.get(self)
        if text is None:
            text = network_text(self)
            if len(_KEYS) >= MEMO_LIMIT:
                _KEYS.clear()
            _KEYS[self] = text
        return text


def network_text(subnet: ClientSubnet) -> str:
    """``ClientSubnet.key`` without the memo."""
    if subnet.family == FAMILY_IPV4:
        text = socket.inet_ntop(socket.AF_INET, subnet.address.ljust(4, b"\0"))
    else:
        text = socket.inet_ntop(socket.AF_INET6, subnet.address.ljust(16, b"\0"))
    return f"{text}/{subnet.source}"


def parse_ecs(data: bytes) -> ClientSubnet:
    """The option data of a query's ECS option; EcsError names what is wrong.

    RFC 7871 §6: FAMILY 1 or 2; SOURCE at most the family's address length; SCOPE 0 in a
    query; ADDRESS exactly ceil(SOURCE / 8) octets with every bit past SOURCE zero. §7.1.2
    asks for FORMERR for a malformed option, and §6 for these cases explicitly, "as a
    signal to the software developer making the request to fix their implementation".
    """
    if len(data) < _FIXED.size:
        raise EcsError("ECS option shorter than its 4 fixed octets")
    family, source, scope = _FIXED.unpack_from(data)
    bits = _ADDRESS_BITS.get(family)
    if bits is None:
        raise EcsError(f"ECS family {family} is neither 1 (IPv4) nor 2 (IPv6)")
    if source > bits:
        raise EcsError(f"ECS source prefix-length {source} is longer than {bits}")
    if scope:
        raise EcsError("ECS scope prefix-length must be 0 in a query")
    address = data[_FIXED.size :]
    if len(address) != (source + 7) // 8:
        raise EcsError(f"ECS address of {len(address)} octets for a /{source}")
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise EcsError(f"ECS address has bits set past its /{source}")
    return ClientSubnet(family, source, address)


def ecs_option(subnet: ClientSubnet, scope: int) -> bytes:
    """The option data for the answer: FAMILY, SOURCE and ADDRESS copied from the query
    (RFC 7871 §7.2.1), with ``scope``: how many leading bits of the address the answer
    depends on (0: none, any client may be given it)."""
    return _FIXED.pack(subnet.family, subnet.source, scope) + subnet.address


def answer_option(subnet: ClientSubnet, scope: int) -> bytes:
    """The whole option for the answer (code, length, then ``ecs_option``'s data), as an
    OPT's RDATA holds it; memoised per (network, scope) (``MEMO_LIMIT``)."""
    key = (subnet, scope)
    option = _OPTIONS.get(key)
    if option is None:
        data = ecs_option(subnet, scope)
        option = _OPTION_HEAD.pack(OPTION_ECS, len(data)) + data
        if len(_OPTIONS) >= MEMO_LIMIT:
            _OPTIONS.clear()
        _OPTIONS[key] = option
    return option


def build_ecs(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    """The option data a forwarder sends for ``network`` (scope 0): for tests and tools."""
    family = FAMILY_IPV4 if network.version == 4 else FAMILY_IPV6
    source = network.prefixlen
    address = network.network_address.packed[: (source + 7) // 8]
    return _FIXED.pack(family, source, 0) + address
