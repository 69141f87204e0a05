"""Which addresses to probe and how: one target per address, merged from every policy using it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dnsmesh.health import OutlierRule
from dnsmesh.policy import Health, Policy, Probe, ProbeType

FALLBACK_PORT = 80  # an ICMP probe without the privilege falls back to TCP on this port


@dataclass(frozen=True, slots=True)
class Target:
    """One address's probe: the spec of the policy that probes it most often."""

    address: str
    type: ProbeType
    port: int | None
    path: str
    expect_status: str
    interval: float
    timeout: float
    rule: OutlierRule
    tcp_port: int  # the port a TCP fallback of an ICMP probe connects to

    @property
    def period(self) -> float:
        """How long one probe may take end to end: a hung endpoint costs the timeout."""
        return max(self.interval, self.timeout)


def build_plan(policies: Sequence[Policy]) -> dict[str, Target]:
    """Every endpoint address of a policy with ``health.probe``, probed once.

    Several policies sharing an address are merged: the spec with the shortest interval
    wins (ties: the shorter timeout, then the policy name), so every policy's endpoints
    are measured at least as often as it asked; the outlier rule is the most sensitive of
    theirs (OutlierRule.merge). A TCP fallback for ICMP uses any port another policy
    probes that address on, else 80.
    """
    specs: dict[str, list[tuple[Probe, Health, str]]] = {}
    for policy in policies:
        health = policy.spec.health
        if health is None or health.probe is None:
            continue
        for endpoint in policy.spec.endpoints:
            specs.setdefault(str(endpoint.address), []).append((health.probe, health, policy.name))
    plan: dict[str, Target] = {}
    for address, entries in specs.items():
        probe, _, _ = min(entries, key=lambda e: (e[0].interval, e[0].timeout, e[2]))
        ports = [p.port for p, _, _ in entries if p.port is not None]
        plan[address] = Target(
            address=address,
            type=probe.type,
            port=probe.port,
            path=probe.path,
            expect_status=probe.expect_status,
            interval=probe.interval,
            timeout=probe.timeout,
            rule=OutlierRule.merge(OutlierRule.of(h) for _, h, _ in entries),
            tcp_port=probe.port or (ports[0] if ports else FALLBACK_PORT),
        )
    return plan
