"""``dnsmesh up``: one command starts a controller and an agent, applies policies/, answers
dig and dnspython at once, keeps its tokens private, and exits 0 on SIGTERM or Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.integration.conftest import REPO
from tests.integration.sync_support import resolve
from tests.support.polling import wait_until
from tests.support.ports import free_port

DIG = "/usr/bin/dig"


class Output:
    """Collects a pipe's lines in a thread (the children's logs must never fill the pipe)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def dnsmesh_up(cwd: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``dnsmesh up`` and wait for its summary; yields the process and its stdout."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    out, err = Output(process.stdout), Output(process.stderr)
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops both." not in out.text:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no summary (status {process.poll()}):\n{out.text}{err.text}")
            time.sleep(0.05)
        yield process, out.text
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        out.thread.join(5)
        err.thread.join(5)
        process.stdout.close()
        process.stderr.close()


def _no_child_left(data_dir: Path) -> bool:
    """No process of ours still runs with this data folder on its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(data_dir).encode() in (entry / "cmdline").read_bytes():
                return False
    return True


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_runs_a_mesh_that_answers_at_once_and_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    api, dns = free_port(), free_port()
    data = tmp_path / "state"
    args = (
        "--data-dir",
        str(data),
        "-f",
        str(REPO / "policies"),
        "--api",
        f"127.0.0.1:{api}",
        "--dns",
        f"127.0.0.1:{dns}",
        "--upstream",
        f"127.0.0.1:{free_port()}",  # nobody serves it: nothing leaves the machine
    )
    with dnsmesh_up(tmp_path, *args) as (process, out):
        assert f"https://127.0.0.1:{api}" in out and f"127.0.0.1:{dns} (UDP and TCP)" in out
        bundle = data / "tls" / "ca-bundle.pem"
        assert f"CA bundle    {bundle}" in out
        # The API is HTTPS only, vouched for by the bundle in the data folder and nothing else.
        assert _healthy(api, bundle)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{api}/healthz", timeout=2.0, trust_env=False)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{api}/healthz", timeout=2.0, trust_env=False)
        assert (data / "tls" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
        assert (data / "tls" / "server-key.pem").stat().st_mode & 0o777 == 0o600
        assert str(data / "admin-token") in out and "policy/checkout created" in out
        assert "4 from " in out
        # Answered at once: the summary is printed only after the agent ACKed the policies.
        assert resolve("127.0.0.1", dns, "checkout.mesh.internal") in (
            ["127.0.10.1"],
            ["127.0.10.2"],
        )
        assert resolve("127.0.0.1", dns, "orders-db.mesh.internal") == ["127.0.20.1"]
        dig = subprocess.run(
            [
                DIG,
                "@127.0.0.1",
                "-p",
                str(dns),
                "+short",
                "+time=2",
                "+tries=1",
                "x.api.mesh.internal",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert len(dig.stdout.split()) == 2  # the wildcard policy answers 2 records
        token = (data / "admin-token").read_text().strip()
        assert token.startswith("dnsm_")
        assert (data / "admin-token").stat().st_mode & 0o777 == 0o600
        # The agent joined: a certificate and key of its own, the join token spent.
        assert (data / "agent" / "identity.pem").stat().st_mode & 0o777 == 0o600
        assert (data / "agent-join-token").stat().st_mode & 0o777 == 0o600
        assert not (data / "agent-token").exists()
        assert data.stat().st_mode & 0o777 == 0o700

        process.send_signal(stop_signal)
        assert process.wait(30) == 0
    assert _no_child_left(data)


def test_up_again_keeps_its_tokens_and_data(tmp_path: Path) -> None:
    data = tmp_path / "state"
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "web.yaml").write_text(
        "apiVersion: dnsmesh/v1\nkind: Policy\nmetadata: {name: web}\n"
        "spec: {domain: web.mesh.internal, endpoints: [{address: 127.0.10.9}]}\n"
    )
    tokens = []
    for _ in range(2):
        dns = free_port()
        args = ("--data-dir", str(data), "--api", f"127.0.0.1:{free_port()}")
        with dnsmesh_up(
            tmp_path, *args, "--dns", f"127.0.0.1:{dns}", "--upstream", f"127.0.0.1:{free_port()}"
        ) as (process, out):
            assert "1 from policies (revision" in out  # ./policies by default
            assert resolve("127.0.0.1", dns, "web.mesh.internal") == ["127.0.10.9"]
            tokens.append((data / "admin-token").read_text())
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
    assert tokens[0] == tokens[1]


def _child_of(parent: int, command: str) -> int | None:
    """The pid of ``parent``'s child running ``dnsmesh COMMAND``, if there is one."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if ppid == parent and command.encode() in argv[3:4]:  # python -m cli.main COMMAND
                return int(entry.name)
    return None


class Answers:
    """Asks the agent for a policy name every 50 ms in a thread; counts the misses."""

    def __init__(self, port: int, name: str, expected: list[str]) -> None:
        self.port, self.name, self.expected = port, name, expected
        self.asked = 0
        self.missed: list[object] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.05):
            answer = resolve("127.0.0.1", self.port, self.name, timeout=1.0)
            self.asked += 1
            if answer != self.expected:
                self.missed.append(answer)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def test_up_restarts_a_dead_child_and_the_agent_answers_throughout(tmp_path: Path) -> None:
    api, dns = free_port(), free_port()
    data = tmp_path / "state"
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "web.yaml").write_text(
        "apiVersion: dnsmesh/v1\nkind: Policy\nmetadata: {name: web}\n"
        "spec: {domain: web.mesh.internal, endpoints: [{address: 127.0.10.9}]}\n"
    )
    args = ("--data-dir", str(data), "--api", f"127.0.0.1:{api}", "--dns", f"127.0.0.1:{dns}")
    with dnsmesh_up(tmp_path, *args, "--upstream", f"127.0.0.1:{free_port()}") as (process, _):
        controller = _child_of(process.pid, "controller")
        assert controller is not None
        answers = Answers(dns, "web.mesh.internal", ["127.0.10.9"])
        try:
            os.kill(controller, signal.SIGKILL)
            restarted = wait_until(
                lambda: _child_of(process.pid, "controller") not in (None, controller),
                timeout=30,
                what="the controller restarted",
            )
            assert restarted
            wait_until(
                lambda: _healthy(api, data / "tls" / "ca-bundle.pem"),
                timeout=30,
                what="the new controller healthy",
            )
        finally:
            answers.stop()
        # The agent answered all along: the name comes from its state, not the controller.
        assert answers.asked >= 5 and answers.missed == [], answers.missed

        # A policy applied to the new controller reaches the agent.
        (policies / "api.yaml").write_text(
            "apiVersion: dnsmesh/v1\nkind: Policy\nmetadata: {name: api}\n"
            "spec: {domain: api.mesh.internal, endpoints: [{address: 127.0.10.8}]}\n"
        )
        token = (data / "admin-token").read_text().strip()
        env = {
            **os.environ,
            "DNSMESH_SERVER": f"https://127.0.0.1:{api}",
            "DNSMESH_TOKEN": token,
            "DNSMESH_CA_FILE": str(data / "tls" / "ca-bundle.pem"),
        }
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "apply", "-f", str(policies)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(
            lambda: resolve("127.0.0.1", dns, "api.mesh.internal") == ["127.0.10.8"],
            timeout=30,
            what="the new policy answered",
        )

        # Now the agent: it is started again and answers again.
        agent = _child_of(process.pid, "agent")
        assert agent is not None
        os.kill(agent, signal.SIGKILL)
        wait_until(
            lambda: _child_of(process.pid, "agent") not in (None, agent),
            timeout=30,
            what="the agent restarted",
        )
        wait_until(
            lambda: resolve("127.0.0.1", dns, "api.mesh.internal") == ["127.0.10.8"],
            timeout=30,
            what="the restarted agent answers",
        )
        assert process.poll() is None  # up itself kept running
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert _no_child_left(data)


def _healthy(port: int, ca_file: Path) -> bool:
    try:
        return httpx.get(
            f"https://127.0.0.1:{port}/healthz",
            timeout=1.0,
            trust_env=False,
            verify=ssl.create_default_context(cafile=str(ca_file)),
        ).is_success
    except httpx.HTTPError:
        return False
