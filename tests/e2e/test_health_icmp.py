"""ICMP probes end to end: as root they measure loopback endpoints; without CAP_NET_RAW the
agent says so once and probes the same endpoints over TCP (port 80 here), so a dead endpoint
is still ejected instead of silently never being probed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.health_support import (
    Streak,
    answers,
    endpoints,
    health_policy,
    local_agent,
    time_until,
)

ICMP = {"type": "icmp", "interval": 0.2, "timeout": 0.3}
OUTLIER = {"consecutive_failures": 3, "base_ejection": "1s"}
SETPRIV = shutil.which("setpriv")


def test_icmp_probes_measure_loopback_endpoints(tmp_path: Path) -> None:
    with endpoints(tmp_path, 2) as eps:
        policies = tmp_path / "policies.yaml"
        name = health_policy(policies, eps, strategy="latency-weighted", probe=ICMP)
        with local_agent(policies) as agent:
            agent.wait_event("health.reweighted", timeout=5)  # latencies measured by ping
            assert not agent.events("probe.icmp_unavailable")
            seen = answers(agent, name, 100)
            assert set(seen) == {e.host for e in eps}, seen  # both ~equally fast: both answered


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv to drop CAP_NET_RAW")
def test_without_raw_sockets_icmp_falls_back_to_tcp_once_and_still_ejects(
    tmp_path: Path,
) -> None:
    assert SETPRIV is not None
    # Port 80 is the fallback when no policy names a port; each test has its own addresses.
    with endpoints(tmp_path, 2, port=80) as (good, bad):
        policies = tmp_path / "policies.yaml"
        name = health_policy(policies, [good, bad], probe=ICMP, outlier=OUTLIER)
        drop = [SETPRIV, "--bounding-set=-net_raw", "--inh-caps=-net_raw"]
        with local_agent(policies, prefix=drop) as agent:
            agent.wait_event("probe.icmp_unavailable", timeout=5)
            time_until(lambda: len(answers(agent, name, 40)) == 2, timeout=5, what="both")
            bad.kill()
            gone = Streak(agent, name, bad.host, present=False)
            time_until(gone, timeout=5, what="the dead endpoint ejected via the TCP fallback")
            assert len(agent.events("probe.icmp_unavailable")) == 1, "said once, not per probe"
