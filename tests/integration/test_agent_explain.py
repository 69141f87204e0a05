"""The real ``dnsmesh agent`` process: slow start in its answers, and its admin ``/explain``
against the answers it really gives.

A policy file edited under ``--policies``, real DNS queries over UDP (dnspython, from the
loopback address the explanation is asked for), and the admin port over HTTP (httpx).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import httpx
import pytest

from dnsmesh.policy import format_duration
from tests.integration.conftest import AgentProcess, write_atomically
from tests.support.policies import policy_text

Spawn = Callable[..., AgentProcess]
# The chi-square statistic a right distribution exceeds with probability 0.001, by degrees
# of freedom (a flake once in a thousand runs).
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}


def admin(agent: AgentProcess) -> str:
    address: str = agent.wait_event("agent.admin_listening")[0]["address"]
    return "http://" + address


def explain(agent: AgentProcess, name: str, client: str) -> httpx.Response:
    return httpx.get(f"{admin(agent)}/explain", params={"name": name, "client": client}, timeout=15)


def answers(port: int, name: str, count: int, *, source: str = "127.0.0.1") -> list[str]:
    """The first address of ``count`` real answers to ``source``."""
    out = []
    for _ in range(count):
        query = dns.message.make_query(name, "A")
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=2, source=source)
        out.append(response.answer[0][0].to_text())
    return out


def chi_square(seen: Counter[str], shares: dict[str, float]) -> tuple[float, int]:
    """Pearson's statistic of ``seen`` against ``shares`` and its degrees of freedom."""
    total = sum(seen.values())
    assert set(seen) <= set(shares), f"answered outside the explanation: {seen} {shares}"
    live = {a: p for a, p in shares.items() if p > 0}
    statistic = sum((seen[a] - total * p) ** 2 / (total * p) for a, p in live.items())
    return statistic, len(live) - 1


def start(tmp_path: Path, spawn_agent: Spawn, files: dict[str, str]) -> tuple[AgentProcess, Path]:
    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in files.items():
        (policies / name).write_text(text)
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"
    )  # fmt: skip
    return agent, policies


def endpoints(*addresses: str, weight: int = 1) -> list[dict[str, Any]]:
    return [{"address": a, "weight": weight} for a in addresses]


OLD = ("10.7.0.1", "10.7.0.2", "10.7.0.3")
NEW = "10.7.0.9"


@pytest.mark.timing
def test_an_added_endpoint_ramps_up_over_slow_start(tmp_path: Path, spawn_agent: Spawn) -> None:
    """slow_start 4 s: the new endpoint starts at a tenth of its weight (a share of
    0.1 / 3.1, 3 %, where its full share is 25 %) and has its whole share after the window."""
    window = 4.0
    health = {"slow_start": format_duration(window)}

    def web(*addresses: str) -> str:
        return policy_text("web", endpoints(*addresses), ttl=0, health=health)

    agent, policies = start(tmp_path, spawn_agent, {"web.yaml": web(*OLD)})
    port = agent.addresses[0].port
    assert NEW not in answers(port, "web.mesh.internal", 50)

    write_atomically(policies / "web.yaml", web(*OLD, NEW))
    began = agent.wait_event("health.slow_start", timeout=15)[0]
    assert began["ramping"] == {"web": [NEW]}
    seen = time.monotonic()
    early: list[str] = []
    # The first 0.75 s: the ramp's first step (10 %) is served until the refresh 1.25 s
    # in, and even that one (38 %) gives it 11 % of the answers.
    while time.monotonic() - seen < 0.75 and len(early) < 300:
        early.extend(answers(port, "web.mesh.internal", 10))
    ramping = explain(agent, "web", "127.0.0.1").json()
    by_address = {c["address"]: c for c in ramping["candidates"]}
    assert 0.1 <= by_address[NEW]["slow_start"] < 1
    assert "slow_start" not in by_address[OLD[0]]

    # After the window (and a refresh): its whole share, 1/4.
    time.sleep(max(0.0, seen + window + 1.5 - time.monotonic()))
    late = answers(port, "web.mesh.internal", 600)
    early_share = early.count(NEW) / len(early)
    late_share = late.count(NEW) / len(late)
    assert len(early) >= 40
    assert early_share < 0.125, (early_share, len(early))  # well below half its share
    assert 0.18 < late_share < 0.32, late_share  # 0.25 +- 4 standard errors
    done = explain(agent, "web", "127.0.0.1").json()
    assert all("slow_start" not in c for c in done["candidates"])


def test_admin_explain_matches_the_weighted_answers(tmp_path: Path, spawn_agent: Spawn) -> None:
    weighted = [
        {"address": "10.7.1.1", "weight": 1},
        {"address": "10.7.1.2", "weight": 3},
        {"address": "10.7.1.3", "weight": 6},
        {"address": "10.7.1.4", "weight": 0},
    ]
    agent, _ = start(tmp_path, spawn_agent, {"w.yaml": policy_text("w", weighted, ttl=0)})
    body = explain(agent, "w.mesh.internal", "127.0.0.1").json()
    assert body["source"] == "agent" and body["policy"] == "w" and body["action"] == "answer"
    shares = body["distribution"]["A"]["shares"]
    assert shares.get("10.7.1.4", 0) == 0  # weight 0: never answered
    seen = Counter(answers(agent.addresses[0].port, "w.mesh.internal", 1000))
    statistic, freedom = chi_square(seen, shares)
    assert statistic < CHI2_999[freedom], (statistic, seen, shares)


def test_admin_explain_tells_each_sticky_client_its_answer(
    tmp_path: Path, spawn_agent: Spawn
) -> None:
    sticky = policy_text(
        "s", endpoints(*(f"10.7.2.{i}" for i in range(1, 6))), strategy="sticky", ttl=0
    )
    agent, _ = start(tmp_path, spawn_agent, {"s.yaml": sticky})
    port = agent.addresses[0].port
    told: dict[str, str] = {}
    for i in range(1, 21):
        client = f"127.0.3.{i}"
        body = explain(agent, "s", client).json()
        (told[client],) = body["distribution"]["A"]["answer"]
        assert set(answers(port, "s.mesh.internal", 5, source=client)) == {told[client]}
    assert len(set(told.values())) >= 2  # the clients really are spread


def test_admin_explain_refuses_bad_questions(tmp_path: Path, spawn_agent: Spawn) -> None:
    agent, _ = start(
        tmp_path, spawn_agent, {"w.yaml": policy_text("w", endpoints("10.7.3.1"), ttl=0)}
    )
    base = admin(agent)
    cases = {
        "/explain?client=127.0.0.1": (400, "name is required"),
        "/explain?name=w": (400, "client is required"),
        "/explain?name=w&client=nobody": (400, "'nobody' is not an IPv4 or IPv6 address"),
        "/explain?name=a..b&client=127.0.0.1": (400, "neither a policy nor a DNS name"),
        "/explain?name=%ff&client=127.0.0.1": (400, "not UTF-8"),
        "/explain?name=unknown.mesh.internal&client=::1": (404, "no policy is called or answers"),
    }
    for path, (status, error) in cases.items():
        response = httpx.get(base + path, timeout=15)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert error in response.json()["error"], (path, response.text)
    assert explain(agent, "w", "::1").json()["client"] == "::1"
