"""The special-use names the agent answers itself and never lets a policy take.

RFC 6761 §6.3 (``localhost``: loopback, answered by every caching server without asking
anyone), §6.4 (``invalid``: always NXDOMAIN) and RFC 6762 §22.1 (``local``: multicast DNS,
never unicast). The agent's first handler answers them before the policy lookup, so a policy
for one of them would be accepted and never served; the validator refuses it instead.
"""

from __future__ import annotations

SPECIAL_USE_ZONES = ("localhost", "invalid", "local")


def special_use_zone(domain: str) -> str | None:
    """The special-use zone ``domain`` (normalised text, maybe ``*.``-prefixed) is in, if any."""
    name = domain.removeprefix("*.")
    for zone in SPECIAL_USE_ZONES:
        if name == zone or name.endswith("." + zone):
            return zone
    return None
