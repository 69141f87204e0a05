"""Starts, checks and stops the DNS servers under test, each on a free loopback port."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServerFailed(RuntimeError):
    """A server did not start, died, or answered wrongly."""


def wire_name(name: str) -> bytes:
    labels = name.strip(".").split(".")
    return b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\x00"


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        length = packet[offset]
        if length >= 0xC0:  # compression pointer: two bytes, ends the name (RFC 1035 §4.1.4)
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def query_a(port: int, name: str, timeout: float = 0.5) -> tuple[int, list[str]]:
    """Asks 127.0.0.1:port for NAME A once over UDP: (rcode, the A addresses answered)."""
    msg_id = random.randrange(65536)
    packet = struct.pack(">HHHHHH", msg_id, 0x0100, 1, 0, 0, 0) + wire_name(name) + b"\0\1\0\1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (LOOPBACK, port))
        reply, _ = sock.recvfrom(4096)
    rid, flags, qdcount, ancount = struct.unpack(">HHHH", reply[:8])
    if rid != msg_id or not flags & 0x8000:
        raise ServerFailed(f"port {port}: reply with wrong ID or without QR")
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(reply, offset) + 4
    addresses: list[str] = []
    for _ in range(ancount):
        offset = _skip_name(reply, offset)
        rtype, _cls, _ttl, rdlength = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if rtype == 1 and rdlength == 4:
            addresses.append(socket.inet_ntoa(reply[offset : offset + 4]))
        offset += rdlength
    return flags & 0x000F, addresses


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, in KiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used so far (/proc/PID/stat, in ticks)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    rest = stat.rsplit(")", 1)[1].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def core_ticks(core: int | None) -> tuple[int, int, int]:
    """(busy, softirq, total) jiffies of one CPU, or of all when CORE is None (/proc/stat)."""
    name = "cpu" if core is None else f"cpu{core}"
    with open("/proc/stat") as stat:
        for line in stat:
            fields = line.split()
            if fields[0] == name:
                values = [
                    int(v) for v in fields[1:9]
                ]  # user nice system idle iowait irq softirq steal
                idle = values[3] + values[4]
                return sum(values) - idle, values[6], sum(values)
    return 0, 0, 0


@dataclass
class Server:
    """One server process under test; `stop()` is idempotent."""

    label: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_kib(self) -> int | None:
        return peak_rss_kib(self.proc.pid)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies, even by SIGKILL.

    prctl(PR_SET_PDEATHSIG) survives exec (taskset execs the server), so no server outlives
    a killed benchmark. dnsmasq loses it when it drops root (prctl(2)); it exits on its own
    only by SIGTERM, so the benchmark's own cleanup still matters for it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def start(
    label: str,
    cmd: Sequence[str],
    port: int,
    logdir: Path,
    core: int | None,
    env: dict[str, str] | None = None,
) -> Server:
    """Starts CMD (pinned to CORE if given) with stdout+stderr to a log file."""
    argv = [*cmd] if core is None else ["taskset", "-c", str(core), *cmd]
    log = logdir / f"{label}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent,  # safe: the benchmark starts no threads
        )
    return Server(label, port, proc, log)


def wait_answering(server: Server, name: str, expect: Sequence[str], deadline_s: float) -> None:
    """Polls until SERVER answers NAME A with one of EXPECT, or fails after the deadline."""
    deadline = time.monotonic() + deadline_s
    last = "no reply"
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerFailed(
                f"{server.label} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            rcode, addresses = query_a(server.port, name, timeout=0.2)
        except (TimeoutError, ConnectionRefusedError):
            time.sleep(0.05)
            continue
        if rcode == 0 and addresses and set(addresses) <= set(expect):
            return
        last = f"rcode {rcode}, answers {addresses}"
        time.sleep(0.05)
    raise ServerFailed(
        f"{server.label} on port {server.port} did not answer {name} A with {list(expect)} "
        f"within {deadline_s:g} s (last: {last}):\n{server.log_tail()}"
    )
