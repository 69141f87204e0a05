"""Hand-off (agent/handoff.py): ten replacements under steady load lose no query; a crash's
cost, measured; SIGUSR2 starts the successor itself and tells systemd its pid."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from agent.sync.state_file import StateDir
from dnsmesh import protocol
from dnsmesh.policy import parse_policy
from tests.integration.conftest import AgentProcess
from tests.integration.fakedns import FakeUpstream
from tests.support.policies import policy_doc
from tests.support.polling import wait_until
from tests.support.ports import free_port

Spawn = Callable[..., AgentProcess]

POLICY_NAME = "handoff.mesh.internal"
POLICY_ADDRESS = "10.7.0.1"
FORWARDED = [f"f{i}.example.test" for i in range(8)]
FORWARDED_ADDRESS = "192.0.2.77"
UPSTREAM_DELAY = 0.15  # so forwarded queries are in flight at every hand-off
UDP_RATE = 200  # queries a second, half policy names, half forwarded
HANDOFFS = 10
# Client sockets the UDP queries rotate over: SO_REUSEPORT spreads by the 4-tuple's hash,
# so one client socket would always land on the same socket of the group.
CLIENT_SOCKETS = 8


def saved_state(state_dir: Path) -> None:
    """A state folder as an agent that followed a controller leaves it."""
    policy = parse_policy(
        policy_doc("handoff", [{"address": POLICY_ADDRESS}], domain=POLICY_NAME, ttl=5)
    )
    StateDir(state_dir).ensure()
    StateDir(state_dir).save(protocol.AppliedState(1, {"handoff": policy}))


def agent_flags(state_dir: Path, port: int, upstream: FakeUpstream) -> list[str]:
    # The controller is away (nothing listens there): every answer comes from the state
    # file each new agent loads, or from the upstream.
    return [
        "--controller", f"http://127.0.0.1:{free_port()}", "--token", "unused",
        "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}",
        "--upstream", upstream.address, "--cache-size", "0", "--no-probes",
        "--drain-timeout", "3", "--query-timeout", "2", "--attempt-timeout", "1",
    ]  # fmt: skip


def correct(name: str, reply: dns.message.Message) -> bool:
    want = POLICY_ADDRESS if name == POLICY_NAME else FORWARDED_ADDRESS
    return (
        reply.rcode() == dns.rcode.NOERROR
        and bool(reply.answer)
        and reply.answer[0][0].to_text() == want
    )


@dataclass
class Load:
    """UDP queries at a fixed rate from a few sockets, and TCP queries one connection each."""

    port: int
    sent: dict[int, str] = field(default_factory=dict)  # id -> name
    answered: dict[int, bool] = field(default_factory=dict)  # id -> correct
    tcp_sent: int = 0
    tcp_failed: list[str] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)

    def udp_sender(self, socks: list[socket.socket]) -> None:
        interval = 1 / UDP_RATE
        began = time.monotonic()
        n = 0
        while self.running.is_set() and n < 65536:
            name = POLICY_NAME if n % 2 == 0 else FORWARDED[n // 2 % len(FORWARDED)]
            query = dns.message.make_query(name, "A", id=n)
            self.sent[n] = name
            socks[n % len(socks)].sendto(query.to_wire(), ("127.0.0.1", self.port))
            n += 1
            # Paced against the start, so a slow wakeup does not lower the rate.
            time.sleep(max(0.0, began + n * interval - time.monotonic()))

    def udp_receiver(self, socks: list[socket.socket], done: threading.Event) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in socks:
                selector.register(sock, selectors.EVENT_READ)
            while not done.is_set():
                for key, _ in selector.select(0.2):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    reply = dns.message.from_wire(sock.recv(4096))
                    name = self.sent.get(reply.id)
                    if name is not None:
                        self.answered[reply.id] = correct(name, reply)

    def tcp_client(self) -> None:
        n = 0
        while self.running.is_set():
            name = POLICY_NAME if n % 2 == 0 else FORWARDED[n % len(FORWARDED)]
            n += 1
            self.tcp_sent += 1
            try:
                reply = dns.query.tcp(
                    dns.message.make_query(name, "A"), "127.0.0.1", port=self.port, timeout=3
                )
            except (OSError, EOFError, dns.exception.DNSException) as exc:
                self.tcp_failed.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if not correct(name, reply):
                self.tcp_failed.append(f"{name}: {reply}")
            time.sleep(0.02)

    @contextlib.contextmanager
    def running_load(self) -> Iterator[None]:
        self.running.set()
        done = threading.Event()
        with contextlib.ExitStack() as stack:
            socks = []
            for _ in range(CLIENT_SOCKETS):
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                sock.bind(("127.0.0.1", 0))
                socks.append(sock)
            threads = [
                threading.Thread(target=self.udp_sender, args=(socks,)),
                threading.Thread(target=self.udp_receiver, args=(socks, done)),
                threading.Thread(target=self.tcp_client),
            ]
            for thread in threads:
                thread.start()
            try:
                yield
            finally:
                self.running.clear()
                threads[0].join()
                threads[2].join()
                # Every answer is back within the query timeout, or it is lost.
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: len(self.answered) == len(self.sent), 3.0)
                done.set()
                threads[1].join()


@pytest.mark.timing
def test_ten_hand_offs_under_load_lose_no_query(
    tmp_path: Path, spawn_agent: Spawn, upstream: FakeUpstream
) -> None:
    for name in FORWARDED:
        upstream.answer(name, "A", FORWARDED_ADDRESS, delay=UPSTREAM_DELAY)
    state = tmp_path / "state"
    saved_state(state)
    port = free_port()
    flags = agent_flags(state, port, upstream)
    agent = spawn_agent(*flags)
    load = Load(port)
    took = []
    with load.running_load():
        time.sleep(0.3)  # the load is steady before the first hand-off
        for _ in range(HANDOFFS):
            forwarded_before = sum(upstream.count(n) for n in FORWARDED)
            began = time.monotonic()
            successor = spawn_agent(*flags, "--replace")
            assert agent.proc.wait(10) == 0
            took.append(time.monotonic() - began)
            successor.wait_event("handoff.done")
            assert agent.events("handoff.ready") and agent.events("agent.stopped")
            # Forwards were in flight at the hand-off, and the old agent answered them.
            assert sum(upstream.count(n) for n in FORWARDED) > forwarded_before
            agent = successor
        time.sleep(0.3)
    lost = [i for i in load.sent if i not in load.answered]
    wrong = [i for i, ok in load.answered.items() if not ok]
    print(
        f"{HANDOFFS} hand-offs: {len(load.sent)} UDP queries, {load.tcp_sent} TCP; "
        f"hand-off (spawn to old exit) median {statistics.median(took):.2f} s, "
        f"max {max(took):.2f} s"
    )
    assert len(load.sent) > UDP_RATE * 2
    assert not lost, f"{len(lost)} of {len(load.sent)} UDP queries lost"
    assert not wrong
    assert load.tcp_sent > 20 and not load.tcp_failed, load.tcp_failed[:5]
    assert all(e["abandoned"] == 0 for e in agent.events("agent.stopped"))
    assert agent.stop() == 0


def test_a_connection_silent_at_the_hand_off_is_answered_when_it_speaks(
    tmp_path: Path, spawn_agent: Spawn, upstream: FakeUpstream
) -> None:
    """A TCP connection accepted just before a hand-off whose first query comes later than
    the old agent's linger (0.3 s): the old agent answers it rather than closing it, which
    reset such clients under load."""
    state = tmp_path / "state"
    saved_state(state)
    port = free_port()
    flags = agent_flags(state, port, upstream)
    agent = spawn_agent(*flags)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        time.sleep(0.2)  # accepted by the old agent before the successor shares the socket
        successor = spawn_agent(*flags, "--replace")
        agent.wait_event("handoff.ready")
        time.sleep(1.0)  # well past the linger, within the 3 s drain deadline
        wire = dns.message.make_query(POLICY_NAME, "A").to_wire()
        conn.sendall(len(wire).to_bytes(2, "big") + wire)
        reply = dns.query.receive_tcp(conn, expiration=time.time() + 5)[0]
        assert correct(POLICY_NAME, reply)
    assert agent.proc.wait(10) == 0
    assert successor.stop() == 0


def test_replace_with_nothing_running_binds_afresh(
    tmp_path: Path, spawn_agent: Spawn, upstream: FakeUpstream
) -> None:
    state = tmp_path / "state"
    saved_state(state)
    agent = spawn_agent(*agent_flags(state, free_port(), upstream), "--replace")
    assert agent.events("handoff.none")
    # The control socket opens just after the DNS listeners (agent.started): wait for it.
    wait_until(lambda: (state / "agent.sock").is_socket(), 5, "the control socket")
    assert agent.stop() == 0
    assert not (state / "agent.sock").exists()  # removed: it was ours


def first_answer(port: int, timeout: float) -> float:
    """Seconds until the agent on ``port`` answers the policy name correctly."""
    began = time.monotonic()
    query = dns.message.make_query(POLICY_NAME, "A")
    while time.monotonic() - began < timeout:
        with contextlib.suppress(OSError, dns.exception.Timeout):
            if correct(POLICY_NAME, dns.query.udp(query, "127.0.0.1", port=port, timeout=0.05)):
                return time.monotonic() - began
    raise AssertionError(f"no answer within {timeout} s")


@pytest.mark.timing
def test_a_crash_costs_the_restart_until_the_state_file_answers(
    tmp_path: Path, spawn_agent: Spawn, upstream: FakeUpstream
) -> None:
    """SIGKILL is not lossless: what is queued or in flight in the killed agent is gone, and
    nothing answers until the restarted one has loaded its state file. Measured from exec."""
    state = tmp_path / "state"
    saved_state(state)
    port = free_port()
    flags = agent_flags(state, port, upstream)
    costs = []
    agent = spawn_agent(*flags)
    for _ in range(3):
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(5)
        agent = spawn_agent(*flags, wait=False)  # what Restart= does (after RestartSec)
        costs.append(first_answer(port, 15.0))
    # The killed agent left its control socket behind: a stale file, replaced, not fatal.
    # The new one is bound once the agent has started (it answers from the state file first).
    deadline = time.monotonic() + 10.0
    while not (state / "agent.sock").is_socket() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (state / "agent.sock").is_socket()
    print(
        "crash restart, exec to first answer from the state file: "
        + ", ".join(f"{c:.2f} s" for c in costs)
    )
    assert max(costs) < 10.0


def test_sigusr2_starts_the_successor_which_tells_systemd_its_pid(
    tmp_path: Path, spawn_agent: Spawn, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    saved_state(state)
    port = free_port()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(15)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    admin = free_port()  # a fixed admin port: the successor binds it beside the old agent
    agent = spawn_agent(*agent_flags(state, port, upstream), "--admin-listen", f"127.0.0.1:{admin}")
    successor_pid = 0
    try:
        assert notify.recv(4096) == b"READY=1"
        agent.proc.send_signal(signal.SIGUSR2)
        message = notify.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in message.splitlines())
        successor_pid = int(fields["MAINPID"])
        assert fields["READY"] == "1" and successor_pid != agent.proc.pid
        assert agent.proc.wait(10) == 0
        spawned = agent.events("handoff.spawned")[0]
        assert spawned["pid"] == successor_pid and spawned["command"][-1] == "--replace"
        assert first_answer(port, 5.0) < 5.0  # the successor serves alone
        # ... and has the admin port (SO_REUSEPORT there too): its health, not the old one's.
        health = httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=2, trust_env=False)
        assert health.status_code == 200, health.text
    finally:
        notify.close()
        if successor_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(successor_pid, signal.SIGTERM)
            wait_until(lambda: not _alive(successor_pid), 10, "the successor's exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie until someone reaps it: the successor is our grandchild, reparented.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"
    return False


def test_a_control_path_too_long_for_a_unix_socket_is_warned_about_not_fatal(
    tmp_path: Path, spawn_agent: Spawn, upstream: FakeUpstream
) -> None:
    state = tmp_path / ("d" * 110)  # past AF_UNIX's 107 bytes whatever tmp_path is
    saved_state(state)
    port = free_port()
    agent = spawn_agent(*agent_flags(state, port, upstream), "--replace")
    # The control socket is bound after the agent started (Succession.after_start).
    assert agent.events("handoff.failed") and agent.wait_event("handoff.unavailable")
    assert first_answer(port, 5.0) < 5.0
    assert agent.stop() == 0
