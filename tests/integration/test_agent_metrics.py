"""The agent's admin listener: /metrics after known traffic, /healthz, /readyz, bad requests.

A real agent on loopback, real DNS queries (dnspython), a real HTTP client (httpx), and the
samples read back with prometheus_client's own parser.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import HostPort
from dnsmesh.admission import parse_network
from tests.integration.conftest import RunningAgent, policy_yaml, write_atomically
from tests.integration.fakedns import FakeUpstream
from tests.support.polling import wait_until

StartAgent = Callable[..., RunningAgent]
ADMIN = HostPort("127.0.0.1", 0)


def admin_url(agent: RunningAgent, path: str) -> str:
    admin = agent.server.admin
    assert admin is not None
    return f"http://{admin.address}{path}"


def scrape(agent: RunningAgent) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> sorted labels -> value."""
    response = httpx.get(admin_url(agent, "/metrics"), timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def test_metrics_count_known_traffic_exactly(
    tmp_path: Path, start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        policy_yaml(
            "web",
            "web.mesh.test",
            [
                {"address": "10.0.0.1", "group": "blue"},
                {"address": "10.0.0.2", "group": "green"},
            ],
            slices=[
                {"id": "canary", "match": {"client_cidrs": ["127.0.0.3/32"]}, "groups": ["green"]}
            ],
        )
    )
    upstream.answer("www.example.test", "A", "192.0.2.10")
    agent = start_agent(
        upstreams=[upstream],
        policies=path,
        admin_listen=ADMIN,
        allow=(parse_network("127.0.0.1/32"), parse_network("127.0.0.3/32")),
    )
    for _ in range(3):
        agent.query("web.mesh.test")  # policy, default view: 10.0.0.1 or 10.0.0.2
    agent.query("web.mesh.test", source="127.0.0.3")  # policy, the canary slice: 10.0.0.2
    agent.query("web.mesh.test", "AAAA")  # policy NODATA: no endpoint answered
    agent.query("www.example.test")  # forwarded
    agent.query("www.example.test")  # from the cache
    agent.query("www.example.test", tcp=True)  # from the cache, over TCP
    agent.query("localhost")  # local
    refused = agent.query("web.mesh.test", source="127.0.0.2")  # outside --allow
    assert refused.rcode() == 5

    samples = scrape(agent)
    queries = samples["dnsmesh_agent_queries_total"]
    assert queries == {
        (("qtype", "A"), ("rcode", "NOERROR"), ("source", "policy")): 4,
        (("qtype", "AAAA"), ("rcode", "NOERROR"), ("source", "policy")): 1,
        (("qtype", "A"), ("rcode", "NOERROR"), ("source", "upstream")): 1,
        (("qtype", "A"), ("rcode", "NOERROR"), ("source", "cache")): 2,
        (("qtype", "A"), ("rcode", "NOERROR"), ("source", "local")): 1,
        (("qtype", "A"), ("rcode", "REFUSED"), ("source", "refused")): 1,
    }
    answers = samples["dnsmesh_agent_answers_total"]
    default = {labels: v for labels, v in answers.items() if ("slice", "_default") in labels}
    assert sum(default.values()) == 3
    assert answers[(("endpoint", "10.0.0.2"), ("policy", "web"), ("slice", "canary"))] == 1
    assert len(answers) == len(default) + 1
    # The forward is always timed; the histogram of a source has every bucket and +Inf.
    upstream_count = (("source", "upstream"),)
    assert samples["dnsmesh_agent_query_duration_seconds_count"][upstream_count] == 1
    buckets = samples["dnsmesh_agent_query_duration_seconds_bucket"]
    assert buckets[(("le", "+Inf"), ("source", "upstream"))] == 1
    assert (("le", "1.024e-06"), ("source", "upstream")) in buckets  # ~1 us: the first bound
    assert samples["dnsmesh_agent_upstream_queries_total"] == {(("upstream", upstream.address),): 1}
    assert samples["dnsmesh_agent_upstream_up"] == {(("upstream", upstream.address),): 1}
    assert samples["dnsmesh_agent_cache_hits_total"][()] == 2
    assert samples["dnsmesh_agent_cache_misses_total"][()] == 1
    assert samples["dnsmesh_agent_cache_entries"][()] == 1
    assert samples["dnsmesh_agent_policies"][()] == 1
    assert samples["dnsmesh_agent_snapshot_age_seconds"][()] >= 0
    # A second scrape reads the same (monotonic, nothing counted twice).
    assert scrape(agent)["dnsmesh_agent_answers_total"] == answers


def test_answer_counts_survive_a_reload(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy_yaml("one", "one.mesh.test", [{"address": "10.1.0.1"}]))
    agent = start_agent(policies=path, admin_listen=ADMIN)
    asked: list[int] = []

    def ttl(name: str) -> int:
        asked.append(1)
        answer = agent.query(name).answer
        return answer[0].ttl if answer else -1

    for _ in range(2):
        ttl("one.mesh.test")
    key = (("endpoint", "10.1.0.1"), ("policy", "one"), ("slice", "_default"))
    assert scrape(agent)["dnsmesh_agent_answers_total"] == {key: 2}
    # The policy is compiled again (a new TTL): its count carries over, then grows.
    write_atomically(path, policy_yaml("one", "one.mesh.test", [{"address": "10.1.0.1"}], ttl=9))
    wait_until(lambda: ttl("one.mesh.test") == 9, what="the reload")
    assert scrape(agent)["dnsmesh_agent_answers_total"] == {key: len(asked)}
    # A policy removed takes its series with it.
    write_atomically(path, policy_yaml("two", "two.mesh.test", [{"address": "10.1.0.2"}]))
    asked.clear()
    wait_until(lambda: ttl("two.mesh.test") > 0, what="the second reload")
    after = scrape(agent)["dnsmesh_agent_answers_total"]
    assert after == {(("endpoint", "10.1.0.2"), ("policy", "two"), ("slice", "_default")): 1}


def test_readyz_waits_for_a_policy_set(tmp_path: Path, start_agent: StartAgent) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("not: [a policy")  # bad at start: served with no policies, not ready
    agent = start_agent(policies=path, admin_listen=ADMIN)
    assert httpx.get(admin_url(agent, "/healthz")).status_code == 200
    before = httpx.get(admin_url(agent, "/readyz"))
    assert before.status_code == 503 and "no policy set loaded" in before.text
    write_atomically(path, policy_yaml("r", "r.mesh.test", [{"address": "10.2.0.1"}]))
    wait_until(lambda: httpx.get(admin_url(agent, "/readyz")).status_code == 200, what="readiness")


def test_a_forwarder_without_policies_is_ready(start_agent: StartAgent) -> None:
    agent = start_agent(admin_listen=ADMIN)
    assert httpx.get(admin_url(agent, "/readyz")).text == "ready\n"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"\x16\x03\x01 not http\r\n\r\n", 400),
        (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ],
)
def test_bad_requests_get_a_clear_status(start_agent: StartAgent, raw: bytes, status: int) -> None:
    agent = start_agent(admin_listen=ADMIN)
    admin = agent.server.admin
    assert admin is not None
    with socket.create_connection((admin.address.host, admin.address.port), timeout=5) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(f"HTTP/1.1 {status} ".encode())
    if raw.startswith(b"HEAD"):
        assert reply.endswith(b"\r\n\r\n")  # headers only


def test_a_busy_admin_port_leaves_dns_serving(start_agent: StartAgent) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        agent = start_agent(admin_listen=HostPort("127.0.0.1", taken.getsockname()[1]))
        assert agent.server.admin is None
        assert agent.query("localhost").answer
