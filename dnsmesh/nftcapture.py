"""The nftables ruleset of ``dnsmesh node capture``: the node's port-53 traffic to the agent.

One table of our own (``inet dnsmesh``), so turning capture off deletes exactly what turning
it on added and nobody else's rules. Its one chain sits at the NAT output hook: every new
UDP or TCP flow a local process opens to port 53, whatever the address, is DNAT-ed to the
agent, except the agent's own upstream queries, which carry the socket mark the agent sets
(``dnsmesh agent --socket-mark``) and would otherwise loop back into it. A mark, not a uid:
the agent runs as a systemd DynamicUser, whose uid is allocated at each start.

Only new flows are NAT-ed; conntrack maps the answers back, so a client sees the address it
asked. An IPv4 agent captures IPv4 traffic and an IPv6 agent IPv6 traffic (NAT cannot
change the family); with both, both are captured.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

FAMILY = "inet"
TABLE = "dnsmesh"
# "dm": the default socket mark of the agent's upstream sockets, and the mark exempted here.
DEFAULT_MARK = 0x646D
MAX_MARK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class CaptureTarget:
    """Where captured queries go: the agent's numeric address and port."""

    host: str
    port: int

    @property
    def v6(self) -> bool:
        return ipaddress.ip_address(self.host).version == 6


def capture_ruleset(targets: list[CaptureTarget], mark: int) -> str:
    """``nft -f`` input that (re)creates our table in one transaction.

    Declaring the table before deleting it makes the delete succeed whether or not it
    existed, so ``capture on`` twice leaves one copy, atomically.
    """
    if not targets:
        raise ValueError("capture needs an agent address")
    if len({t.v6 for t in targets}) != len(targets):
        raise ValueError("capture takes at most one IPv4 and one IPv6 agent address")
    if not 0 < mark <= MAX_MARK:
        raise ValueError(f"the socket mark must be 1-{MAX_MARK:#x}")
    rules = [f'meta mark {mark:#x} return comment "the agent\'s own upstream queries"']
    for target in sorted(targets, key=lambda t: t.v6):
        proto, to = (
            ("ipv6", f"ip6 to [{target.host}]") if target.v6 else ("ipv4", f"ip to {target.host}")
        )
        rules.append(
            f"meta nfproto {proto} meta l4proto {{ tcp, udp }} th dport 53 dnat {to}:{target.port}"
        )
    body = "\n".join(f"\t\t{rule}" for rule in rules)
    return (
        f"table {FAMILY} {TABLE}\n"
        f"delete table {FAMILY} {TABLE}\n"
        f"table {FAMILY} {TABLE} {{\n"
        "\tchain output {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f"{body}\n"
        "\t}\n"
        "}\n"
    )


def removal() -> list[str]:
    """The ``nft`` arguments that delete our table, and only it."""
    return ["delete", "table", FAMILY, TABLE]
