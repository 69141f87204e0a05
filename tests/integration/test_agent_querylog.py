"""The query log over real sockets: the line of a weighted policy answer says what the DNS
answer holds and what the policy offered; every source gets its line; a burst is held to
the line rate; SIGHUP reopens the file after a rotation."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode

from agent.querylog_config import QueryLogConfig
from dnsmesh.admission import parse_network
from dnsmesh.reweigh import Effective
from tests.integration.conftest import DNSMESH, AgentProcess, RunningAgent, policy_yaml
from tests.integration.fakedns import FakeUpstream
from tests.support.polling import wait_until

StartAgent = Callable[..., RunningAgent]
Spawn = Callable[..., AgentProcess]

ENDPOINTS = [
    {"address": "10.1.0.1", "weight": 5},
    {"address": "10.1.0.2", "weight": 3},
    {"address": "10.1.0.3", "weight": 2},
    {"address": "10.1.0.4", "weight": 1},
]


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_lines(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The file's lines once it has ``count`` (the writer flushes every 0.2 s)."""
    return wait_until(
        lambda: (lines := read_lines(path)) and len(lines) >= count and lines,
        timeout,
        f"{count} query log lines in {path}",
    )


def start_logged(
    start_agent: StartAgent, tmp_path: Path, log: dict[str, Any] | None = None, **options: Any
) -> tuple[RunningAgent, Path]:
    """An agent serving the weighted policy with its query log at the returned path;
    ``log``: QueryLogConfig fields, ``options``: AgentConfig ones."""
    path = tmp_path / "queries.log"
    file = tmp_path / "policies.yaml"
    file.write_text(policy_yaml("web", "web.mesh.test", ENDPOINTS, answers=2))
    config = QueryLogConfig(str(path), **(log or {}))
    return start_agent(policies=file, query_log=config, **options), path


def test_a_policy_line_matches_the_answer_and_the_policy(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    agent, path = start_logged(start_agent, tmp_path)
    # Health ejects 10.1.0.4 and halves 10.1.0.1: the line must show the weights answered by.
    effective = {"10.1.0.1": 2, "10.1.0.2": 3, "10.1.0.3": 2, "10.1.0.4": 0}
    agent.call(lambda: agent.server.served.set_weights(Effective({"web": effective})))
    answers = [agent.query("web.mesh.test"), agent.query("web.mesh.test", tcp=True)]
    lines = wait_lines(path, 2)
    for line, answer in zip(lines, answers, strict=True):
        sent = [rdata.address for rrset in answer.answer for rdata in rrset]
        assert len(sent) == 2
        assert line["decision"]["picked"] == sent
        assert line["decision"]["candidates"] == [
            {
                "address": e["address"],
                "weight": e["weight"],
                "effective_weight": effective[e["address"]],
                "state": "ejected" if e["address"] == "10.1.0.4" else "active",
            }
            for e in ENDPOINTS
        ]
        assert line["decision"]["policy"] == "web"
        assert line["decision"]["revision"] == agent.server.snapshot.revision
        assert line["decision"]["slice"] is None
        assert (line["name"], line["type"], line["rcode"]) == ("web.mesh.test", "A", "NOERROR")
        assert (line["source"], line["client"]) == ("policy", "127.0.0.1")
        assert 0 <= line["latency_ms"] < 1000


def test_every_source_gets_a_line(
    tmp_path: Path, start_agent: StartAgent, upstream: FakeUpstream
) -> None:
    upstream.answer("www.example.test", "A", "192.0.2.5")
    agent, path = start_logged(
        start_agent,
        tmp_path,
        {"client_prefix_v4": 24},
        upstreams=[upstream],
        allow=(parse_network("127.0.0.1/32"),),
    )
    agent.query("www.example.test")
    agent.query("www.example.test")
    agent.query("localhost")
    assert agent.query("web.mesh.test", source="127.0.0.2").rcode() == dns.rcode.REFUSED
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.settimeout(3)
        raw.sendto(b"\x00\x07\x01\x00\x00\x02" + bytes(6), (agent.host, agent.port))
        raw.recv(512)  # FORMERR
    lines = wait_lines(path, 5)
    seen = [(line["source"], line["rcode"], line["name"]) for line in lines]
    assert seen == [
        ("upstream", "NOERROR", "www.example.test"),
        ("cache", "NOERROR", "www.example.test"),
        ("local", "NOERROR", "localhost"),
        ("refused", "REFUSED", "web.mesh.test"),
        ("error", "FORMERR", None),
    ]
    assert {line["client"] for line in lines} == {"127.0.0.0"}  # cut to /24
    assert lines[4]["reason"] == "not exactly one question"


def test_rate_limited_queries_get_lines(tmp_path: Path, start_agent: StartAgent) -> None:
    agent, path = start_logged(
        start_agent, tmp_path, rate_limit=1.0, rate_limit_burst=1, rate_limit_slip=1
    )
    first = agent.query("web.mesh.test")
    over = [agent.query("web.mesh.test") for _ in range(2)]
    assert first.answer and all(m.flags & dns.flags.TC for m in over)
    lines = wait_lines(path, 3)
    assert [line["source"] for line in lines] == ["policy", "ratelimited", "ratelimited"]
    assert all(line["name"] == "web.mesh.test" for line in lines)


def test_a_burst_is_held_to_the_line_rate_and_every_line_left_out_is_counted(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    agent, path = start_logged(start_agent, tmp_path, {"max_rate": 20})
    burst = 300
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(3)
        query = dns.message.make_query("web.mesh.test", "A").to_wire()
        for _ in range(burst):
            client.sendto(query, (agent.host, agent.port))
            client.recv(512)
    elapsed = time.monotonic() - started

    def accounted() -> list[dict[str, Any]] | None:
        lines = read_lines(path)
        queries = [line for line in lines if not line.get("summary")]
        left_out = sum(line.get("limited", 0) for line in lines)
        return lines if len(queries) + left_out == burst else None

    # The summary line comes about a second after the last line written.
    lines = wait_until(accounted, 5.0, "every query written or counted")
    queries = [line for line in lines if not line.get("summary")]
    assert len(queries) <= 20 + 20 * elapsed + 1  # the bucket, and the rate while it lasted
    assert any(line.get("summary") for line in lines)


def test_sampling_logs_about_that_fraction(tmp_path: Path, start_agent: StartAgent) -> None:
    agent, path = start_logged(start_agent, tmp_path, {"sample": 0.5, "max_rate": 0})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(3)
        query = dns.message.make_query("web.mesh.test", "A").to_wire()
        for _ in range(400):
            client.sendto(query, (agent.host, agent.port))
            client.recv(512)
    agent.loop_thread.run(agent.server.stop(0.5))  # every queued line is written by now
    assert 120 <= len(read_lines(path)) <= 280  # 200 expected, sigma 10


def test_sighup_reopens_the_log_after_a_rotation(tmp_path: Path, spawn_agent: Spawn) -> None:
    policies = tmp_path / "web.yaml"
    policies.write_text(policy_yaml("web", "web.mesh.test", [{"address": "10.3.0.1"}]))
    path = tmp_path / "queries.log"
    agent = spawn_agent(
        "--policies", str(policies), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--no-probes", "--no-loop-check", "--query-log", str(path),
    )  # fmt: skip
    port = agent.addresses[0].port

    def ask() -> None:
        message = dns.message.make_query("web.mesh.test", "A")
        assert dns.query.udp(message, "127.0.0.1", port=port, timeout=3).answer

    ask()
    wait_lines(path, 1)
    rotated = tmp_path / "queries.log.1"
    path.rename(rotated)  # what logrotate does, then it sends SIGHUP
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_event("querylog.reopened")
    ask()
    assert len(wait_lines(path, 1)) == 1
    assert len(read_lines(rotated)) == 1
    assert path.stat().st_mode & 0o777 == 0o640  # who asked what: not for every user
    assert agent.stop() == 0


def test_sighup_without_a_query_log_leaves_the_agent_serving(
    tmp_path: Path, spawn_agent: Spawn
) -> None:
    agent = spawn_agent(
        "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--no-probes", "--no-loop-check"
    )  # fmt: skip
    agent.proc.send_signal(signal.SIGHUP)  # a logrotate config left behind
    agent.wait_event("agent.sighup")
    port = agent.addresses[0].port
    assert dns.query.udp(dns.message.make_query("localhost", "A"), "127.0.0.1", port=port).answer
    assert agent.stop() == 0


def test_a_query_log_that_cannot_be_written_stops_the_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [DNSMESH, "agent", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
         "--query-log", str(tmp_path / "missing" / "queries.log")],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--query-log" in done.stderr and "No such file or directory" in done.stderr
