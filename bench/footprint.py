#!/usr/bin/env python3
"""The agent's footprint, this tree against a git ref, side by side in one run.

    python3 bench/footprint.py                  # against c7a93a0 (before the footprint work)
    python3 bench/footprint.py --ref HEAD~1     # against any commit, tag or branch
    python3 bench/footprint.py --runs 9 --policies 2000

Three figures per tree, each from the real ``dnsmesh agent`` process:

* **cold start**: from exec to the first correct policy answer (``checkout.mesh.internal``
  A from the example policies), served from the state file with the controller down
  (``--controller`` names a loopback port nothing listens on). The median of ``--runs``
  starts, the trees' starts interleaved so a burst of load elsewhere hits both alike.
  Twice: *compiled*, with the tree's bytecode cached as an installed package has it (pip
  compiles every module it installs; the cache here is a ``PYTHONPYCACHEPREFIX`` folder
  of the benchmark's, warmed by one start), and *from source*, every module compiled at
  each start as in a checkout run with ``PYTHONDONTWRITEBYTECODE`` (+70-100 ms here).
* **idle RSS**: resident memory (VmRSS) after 2 s idle with the example policies.
* **peak RSS**: the high-water mark (VmHWM) with ``--policies`` generated policies in the
  state file, ``--cache-size`` and as many distinct forwarded names asked, answered by a
  loopback upstream this script runs (so the cache fills), plus one answer per policy.

The ref's tree is a temporary ``git worktree`` (removed at the end); both run with this
interpreter, the tree first on PYTHONPATH. Each tree writes its own state file with its
own code, so a change of the file's format is measured as that tree writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import Server, ServerFailed, query_a, start, wire_name

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REF = "c7a93a0"  # the commit the footprint work started from
EXPECT = ("127.0.10.1", "127.0.10.2")  # checkout.mesh.internal's endpoints

# Writes a state file of the example policies (or N generated ones) with the tree's code.
_WRITE_STATE = """
import sys
from pathlib import Path
from agent.sync.state_file import StateDir
from dnsmesh.policy import parse_policy
from dnsmesh.policyfile import load_policy_path
from dnsmesh.protocol import AppliedState

folder, count = Path(sys.argv[1]), int(sys.argv[2])
policies = [loaded.policy for loaded in load_policy_path(Path(sys.argv[3]))]
for i in range(count):
    policies.append(parse_policy({
        "apiVersion": "dnsmesh/v1", "kind": "Policy",
        "metadata": {"name": f"gen-{i}"},
        "spec": {"domain": f"gen-{i}.bench.internal", "ttl": 30, "endpoints": [
            {"address": f"127.{20 + i // 65536}.{i // 256 % 256}.{i % 256}", "weight": 70},
            {"address": f"127.{40 + i // 65536}.{i // 256 % 256}.{i % 256}", "weight": 30},
        ]},
    }))
folder.mkdir(parents=True, exist_ok=True)
state = StateDir(folder)
state.agent_id()
state.save(AppliedState(1, {p.name: p for p in policies}))
"""


def free_port() -> int:
    """A loopback port free for both UDP and TCP right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class Upstream:
    """A loopback resolver answering every A query with 192.0.2.1 (TTL 300), in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            end = 12
            while data[end]:
                end += data[end] + 1
            question = data[12 : end + 5]
            header = struct.pack(">HHHHHH", struct.unpack(">H", data[:2])[0], 0x8180, 1, 1, 0, 0)
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])
            self.sock.sendto(header + question + answer, addr)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


class Tree:
    """One tree under test: its folder and a state folder per policy count."""

    def __init__(self, label: str, path: Path, work: Path) -> None:
        self.label = label
        self.path = path
        self.work = work / label
        self.work.mkdir()
        self.env = {"PYTHONPATH": str(path), "PYTHONHASHSEED": "0"}
        # Bytecode of every module this tree's agent imports, in a folder of this tree's
        # own, written by its first start (an empty PYTHONDONTWRITEBYTECODE lets Python
        # write it). The source starts read no such folder and write nothing, so the
        # tree's modules are compiled each time and the installed packages' are not.
        self.compiled_env = {
            **self.env,
            "PYTHONPYCACHEPREFIX": str(self.work / "pycache"),
            "PYTHONDONTWRITEBYTECODE": "",
        }
        self.source_env = {**self.env, "PYTHONPYCACHEPREFIX": "", "PYTHONDONTWRITEBYTECODE": "1"}

    def state_dir(self, generated: int) -> Path:
        folder = self.work / f"state-{generated}"
        if not folder.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _WRITE_STATE,
                    str(folder),
                    str(generated),
                    str(ROOT / "policies"),
                ],
                env={**os.environ, **self.env},
                check=True,
                cwd=self.work,
            )
        return folder

    def start(self, state: Path, upstream: int, *extra: str, compiled: bool = True) -> Server:
        port = free_port()
        dead = free_port()  # the controller's: nothing listens there
        cmd = [
            sys.executable,
            # -P: the working folder (this tree) is not put before PYTHONPATH on sys.path,
            # so the tree measured is the one on PYTHONPATH, the ref's too.
            "-P",
            "-m",
            "cli.main",
            "agent",
            "--log-level",
            "warning",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{upstream}",
            "--controller",
            f"http://127.0.0.1:{dead}",
            "--token",
            "bench",
            "--state-dir",
            str(state),
            *extra,
        ]
        env = self.compiled_env if compiled else self.source_env
        return start(self.label, cmd, port, self.work, None, env=env)


class PortTaken(ServerFailed):
    """Another process took the agent's port between our check and its bind."""


def answering(
    tree: Tree, state: Path, upstream: int, *extra: str, compiled: bool = True
) -> tuple[Server, float]:
    """A started agent of TREE once it answers checkout.mesh.internal correctly, and the
    seconds from exec to that answer. A port taken meanwhile (other processes share the
    machine) is retried on another, at most three times."""
    for _ in range(3):
        began = time.monotonic()
        server = tree.start(state, upstream, *extra, compiled=compiled)
        try:
            return server, _first_answer(server, began)
        except PortTaken:
            server.stop()
        except BaseException:
            server.stop()
            raise
    raise ServerFailed(f"{tree.label}: no free port in three tries")


def _first_answer(server: Server, began: float) -> float:
    deadline = began + 60
    while time.monotonic() < deadline:
        if not server.alive():
            log = server.log_tail()
            fault = PortTaken if "Address already in use" in log else ServerFailed
            raise fault(f"{server.label} exited:\n{log}")
        try:
            rcode, addresses = query_a(server.port, "checkout.mesh.internal", timeout=0.005)
        except (TimeoutError, ConnectionRefusedError):
            continue
        except ServerFailed:
            # A late reply to an earlier query of ours, on a socket that got its port.
            continue
        if rcode == 0 and addresses and set(addresses) <= set(EXPECT):
            return time.monotonic() - began
        raise ServerFailed(f"{server.label}: wrong answer rcode {rcode} {addresses}")
    raise ServerFailed(f"{server.label}: no answer within 60 s:\n{server.log_tail()}")


def cold_start(tree: Tree, upstream: int, compiled: bool) -> float:
    """Seconds from exec to the first correct answer of checkout.mesh.internal."""
    server, elapsed = answering(tree, tree.state_dir(0), upstream, compiled=compiled)
    server.stop()
    return elapsed


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ServerFailed(f"no {field} for {pid}")


def idle_rss(tree: Tree, upstream: int) -> int:
    """VmRSS in KiB after 2 s idle with the example policies (once answering)."""
    server, _ = answering(tree, tree.state_dir(0), upstream)
    try:
        time.sleep(2.0)
        return status_kib(server.pid, "VmRSS")
    finally:
        server.stop()


def ask_many(port: int, names: list[str], window: int = 64) -> int:
    """Asks every name A once over UDP, ``window`` in flight; the number answered."""
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        pending = 0
        for msg_id, name in enumerate(names):
            packet = struct.pack(">HHHHHH", msg_id & 0xFFFF, 0x0100, 1, 0, 0, 0)
            sock.sendto(packet + wire_name(name) + b"\0\1\0\1", ("127.0.0.1", port))
            pending += 1
            while pending >= window:
                pending -= 1
                answered += _receive(sock)
        while pending:
            pending -= 1
            answered += _receive(sock)
    return answered


def _receive(sock: socket.socket) -> int:
    try:
        sock.recvfrom(4096)
    except TimeoutError:
        return 0
    return 1


def peak_rss(tree: Tree, upstream: int, policies: int, cache: int) -> tuple[int, int]:
    """(VmHWM KiB, names answered) with POLICIES policies, a full cache and every policy asked."""
    server, _ = answering(tree, tree.state_dir(policies), upstream, "--cache-size", str(cache))
    try:
        forwarded = [f"n{i}.forward.bench.example" for i in range(cache)]
        asked = [f"gen-{i}.bench.internal" for i in range(policies)]
        answered = ask_many(server.port, forwarded) + ask_many(server.port, asked)
        # As long as the idle figure waits: the sync stack is imported by then, in both.
        time.sleep(2.0)
        return status_kib(server.pid, "VmHWM"), answered
    finally:
        server.stop()


@contextmanager
def ref_tree(ref: str, work: Path) -> Iterator[Path]:
    path = work / "ref-tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), ref], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
        )


def commit(path: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", default=DEFAULT_REF, help="the git ref to compare against")
    parser.add_argument("--runs", type=int, default=7, help="cold starts per tree (median)")
    parser.add_argument("--policies", type=int, default=10_000, help="policies for peak RSS")
    parser.add_argument("--cache-size", type=int, default=10_000, help="and forwarded names")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dnsmesh-footprint-") as tmp:
        work = Path(tmp)
        upstream = Upstream()
        try:
            with ref_tree(args.ref, work) as ref_path:
                trees = [Tree("this", ROOT, work), Tree("ref", ref_path, work)]
                labels = {
                    "this": f"this build ({commit(ROOT)})",
                    "ref": f"{args.ref} ({commit(ref_path)})",
                }
                starts: dict[str, list[float]] = {t.label: [] for t in trees}
                sourced: dict[str, list[float]] = {t.label: [] for t in trees}
                for tree in trees:
                    tree.state_dir(0)
                    cold_start(tree, upstream.port, True)  # writes the bytecode cache
                    cold_start(tree, upstream.port, False)  # warms the page cache
                for _ in range(args.runs):
                    for tree in trees:
                        starts[tree.label].append(cold_start(tree, upstream.port, True))
                        sourced[tree.label].append(cold_start(tree, upstream.port, False))
                idle = {t.label: idle_rss(t, upstream.port) for t in trees}
                peak = {
                    t.label: peak_rss(t, upstream.port, args.policies, args.cache_size)
                    for t in trees
                }
        finally:
            upstream.close()
    rows = [
        (
            "cold start, compiled, median (ms)",
            {k: f"{statistics.median(v) * 1000:.0f}" for k, v in starts.items()},
        ),
        (
            "cold start, compiled, min-max (ms)",
            {k: f"{min(v) * 1000:.0f}-{max(v) * 1000:.0f}" for k, v in starts.items()},
        ),
        (
            "cold start from source, median (ms)",
            {k: f"{statistics.median(v) * 1000:.0f}" for k, v in sourced.items()},
        ),
        ("idle RSS after 2 s (MiB)", {k: f"{v / 1024:.1f}" for k, v in idle.items()}),
        (
            f"peak RSS, {args.policies} policies + {args.cache_size} cached (MiB)",
            {k: f"{v[0] / 1024:.1f}" for k, v in peak.items()},
        ),
        ("  names answered in that run", {k: str(v[1]) for k, v in peak.items()}),
    ]
    width = max(len(r[0]) for r in rows)
    cols = [labels["this"], labels["ref"]]
    print(f"| {'':{width}} | {cols[0]} | {cols[1]} |")
    print(f"|{'-' * (width + 2)}|{'-' * (len(cols[0]) + 1)}:|{'-' * (len(cols[1]) + 1)}:|")
    for name, values in rows:
        this, ref = values["this"].rjust(len(cols[0])), values["ref"].rjust(len(cols[1]))
        print(f"| {name:{width}} | {this} | {ref} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        print(
            json.dumps({"starts": starts, "source_starts": sourced, "idle_kib": idle, "peak": peak})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
