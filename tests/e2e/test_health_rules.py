"""Anti-flap and the all-down answers over real DNS: a real agent process probing real HTTP
endpoints on loopback, asked with dnspython.

* rise/fall: an endpoint whose probes flap (a scripted server: one answer per probe) is
  ejected only after ``fall`` failures in a row and back only after ``rise`` successes.
* ``on_all_down``: four policies whose every endpoint is dead answer fail-open, SERVFAIL,
  NODATA and their fallback group.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode

from tests.e2e.health_support import _block, answers, local_agent, time_until
from tests.integration.conftest import AgentProcess
from tests.support.policies import policy_text
from tests.support.ports import free_port

PROBE = {"type": "http", "interval": 0.05, "timeout": 0.3}


class Scripted(ThreadingHTTPServer):
    """An HTTP endpoint answering 200 or 503 as ``pattern`` says, one step per request."""

    daemon_threads = True

    def __init__(self, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)
        self.lock = threading.Lock()
        self.requests = 0
        self.pattern: Iterator[bool] = itertools.repeat(True)

    def play(self, pattern: list[bool]) -> None:
        with self.lock:
            self.pattern = itertools.cycle(pattern)

    def next_ok(self) -> bool:
        with self.lock:
            self.requests += 1
            return next(self.pattern)


class _Handler(BaseHTTPRequestHandler):
    server: Scripted

    def do_GET(self) -> None:
        ok = self.server.next_ok()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@contextlib.contextmanager
def scripted(hosts: list[str], port: int) -> Iterator[list[Scripted]]:
    servers = [Scripted(h, port) for h in hosts]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _probes_pass(server: Scripted, count: int) -> None:
    start = server.requests
    time_until(lambda: server.requests >= start + count, 10, f"{count} probes", 0.02)


def test_a_flapping_endpoint_needs_fall_failures_and_rise_successes_in_a_row(
    tmp_path: Path,
) -> None:
    block = _block()
    hosts = [f"{block}.1", f"{block}.2"]
    port = free_port(hosts[0])
    with scripted(hosts, port) as (flappy, steady):
        flappy.play([True, False, False])  # never three failures in a row
        policy = tmp_path / "flap.yaml"
        health = {
            "probe": {**PROBE, "port": port},
            "fall": 3,
            "rise": 3,
            "outlier": {"base_ejection": "0s"},
        }
        endpoints = [{"address": h} for h in hosts]
        policy.write_text(
            policy_text("flap", endpoints, domain="flap.rules.test", ttl=0, health=health)
        )
        with local_agent(policy) as agent:
            _probes_pass(flappy, 15)
            assert not agent.events("health.ejected"), "two failures in a row ejected it"
            assert hosts[0] in answers(agent, "flap.rules.test", 30)
            flappy.play([False])
            agent.wait_event("health.ejected")
            flappy.play([True, True, False])  # never three successes in a row
            _probes_pass(flappy, 15)
            assert not agent.events("health.returned"), "two successes in a row brought it back"
            assert set(answers(agent, "flap.rules.test", 20)) == {hosts[1]}
            flappy.play([True])
            agent.wait_event("health.returned")
            time_until(lambda: hosts[0] in answers(agent, "flap.rules.test", 20), 5, "back", 0.05)
        assert steady.requests > 0


def _ask(agent: AgentProcess, name: str) -> dns.message.Message:
    address = agent.addresses[0]
    query = dns.message.make_query(name, "A", use_edns=0)
    return dns.query.udp(query, address.host, port=address.port, timeout=2.0)


def test_each_on_all_down_answer_over_real_dns(tmp_path: Path) -> None:
    block = _block()
    dead = free_port(f"{block}.1")  # nothing listens: every probe is refused at once
    probe = {"probe": {**PROBE, "type": "tcp", "port": dead}, "fall": 1}
    main = [{"address": f"{block}.1", "group": "main"}, {"address": f"{block}.2", "group": "main"}]
    standby = {"address": f"{block}.9", "group": "dr", "weight": 0}
    modes: dict[str, Any] = {
        "open": "fail-open",
        "fail": "servfail",
        "empty": "nodata",
        "standby": {"fallback_group": "dr"},
    }
    documents = [
        policy_text(
            name,
            [*main, standby],
            domain=f"{name}.rules.test",
            ttl=0,
            health={**probe, "on_all_down": mode},
        )
        for name, mode in modes.items()
    ]
    policies = tmp_path / "down.yaml"
    policies.write_text("\n---\n".join(documents))
    with local_agent(policies) as agent:
        agent.wait_event("health.all_down", count=3)
        agent.wait_event("health.fail_open")
        opened = _ask(agent, "open.rules.test")
        assert opened.rcode() == dns.rcode.NOERROR
        assert {r.address for rrset in opened.answer for r in rrset} <= {f"{block}.1", f"{block}.2"}
        assert opened.answer
        failed = _ask(agent, "fail.rules.test")
        assert failed.rcode() == dns.rcode.SERVFAIL
        ede = [o for o in failed.options if isinstance(o, dns.edns.EDEOption)]
        assert [o.text for o in ede] == ["every endpoint of policy fail is down"]
        empty = _ask(agent, "empty.rules.test")
        assert empty.rcode() == dns.rcode.NOERROR and not empty.answer and empty.authority
        fallback = _ask(agent, "standby.rules.test")
        assert [r.address for rrset in fallback.answer for r in rrset] == [f"{block}.9"]
        modes_logged = {e["policy"]: e["answer"] for e in agent.events("health.all_down")}
        assert modes_logged == {"fail": "servfail", "empty": "nodata", "standby": "fallback"}
