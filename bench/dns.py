#!/usr/bin/env python3
"""The agent's DNS benchmark: `dnsmesh agent` against dnsmasq under dnsperf, same names, same run.

Usage, from the repository root (plain python3: this script needs only the standard library;
it runs the agent from .venv, creating it with `pip install -e .` if missing):

    python3 bench/dns.py                # full: 3 alternating rounds of 4 s, about 3 minutes
    python3 bench/dns.py --quick        # smoke: one round of 2 s, about 30 seconds
    python3 bench/dns.py --duration 5 --servers agent,dnsmasq --scenarios hit,latency
    python3 bench/dns.py --profile cached --duration 5   # where the agent's CPU goes (py-spy)
    python3 bench/dns.py --metrics      # also the agent with /metrics on and scraped, beside it

It installs dnsperf and dnsmasq from Debian when missing (apt-get, as root), starts an
upstream dnsmasq (serving the whole zone bench.test), then for every scenario starts each
server fresh on a free 127.0.0.1 port pinned to one core (taskset -c 1), drives them in
alternating rounds with dnsperf pinned to the other core (taskset -c 0), and prints one
table: QPS, mean and p99 latency, the server's peak RSS (VmHWM) and CPU per query, the
ratios ours/dnsmasq and whether the speed targets (bench/README.md) are met. Results also go to
bench/results/ as JSON and markdown. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

# The helper modules beside this script, and the repository root for tests.support.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _dnsperf import DnsperfFailed, PerfResult, run_dnsperf
from _profile import find_py_spy, start_recording, summarize
from _servers import (
    Server,
    ServerFailed,
    core_ticks,
    start,
    wait_answering,
)

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

POLICY_NAME = "hit.mesh.internal"
POLICY_ADDRESSES = ("127.0.10.1", "127.0.10.2")  # weighted 90/10: the real pick path runs
ZONE = "bench.test"
ZONE_ADDRESS = "127.0.0.1"
UPSTREAM_TTL = 3600  # long, so forwarded answers stay cached for the whole run

SERVERS = ("agent", "dnsmasq", "ceiling")
# "agent-metrics" (with --metrics): the agent with its admin listener on and /metrics
# scraped every --scrape-interval, measured in the same rounds as the agent without it.
ALL_SERVERS = (*SERVERS, "ceiling-fresh", "agent-metrics")
SERVER_LABELS = {
    "agent": "dnsmesh agent",
    "agent-metrics": "dnsmesh agent, /metrics scraped",
    "dnsmasq": "dnsmasq",
    "ceiling": "py-ceiling (ref)",
    "ceiling-fresh": "py-ceiling fresh ports (ref)",
}
SCENARIOS = ("hit", "cached", "uncached", "latency")


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    probe: str  # a name to ask before timing: the server is up and answers correctly
    expect: tuple[str, ...]
    max_qps: int | None = None
    qps_ratio_target: float | None = None  # ours/dnsmasq QPS must reach this
    p99_target_ms: float | None = None  # our p99 must stay under this
    servers: tuple[str, ...] = ("agent", "dnsmasq")


SCENARIO_DEFS = {
    "hit": Scenario("hit", "policy hit", POLICY_NAME, POLICY_ADDRESSES, None, 0.5, None, SERVERS),
    "cached": Scenario(
        "cached", "cached forward", f"c000.{ZONE}", (ZONE_ADDRESS,), None, 0.5, None, SERVERS
    ),
    "uncached": Scenario(
        "uncached",
        "uncached forward",
        f"probe.{ZONE}",
        (ZONE_ADDRESS,),
        None,
        1.0,
        None,
        ALL_SERVERS,
    ),
    "latency": Scenario(
        "latency", "policy hit @2000 QPS", POLICY_NAME, POLICY_ADDRESSES, 2000, None, 0.3, SERVERS
    ),
}


@dataclass
class Row:
    scenario: str
    server: str
    qps: float | None = None
    mean_ms: float | None = None
    p99_ms: float | None = None
    p50_ms: float | None = None
    peak_rss_kib: int | None = None
    ok_pct: float | None = None  # NOERROR responses / queries sent
    cpu_pct: float | None = None  # the server's CPU use during the main run (100 = one core)
    cpu_us_per_query: float | None = None  # server CPU time / queries completed
    core_busy_pct: float | None = None  # the server's core, busy with anything (incl. softirq)
    softirq_pct: float | None = None  # of that, kernel packet work (not charged to the server)
    qps_spread_pct: float | None = None  # half the max-min range of the rounds, of the median
    cpu_ratio: float | None = None  # our CPU per query / dnsmasq's
    ratio: float | None = None  # ours / dnsmasq QPS, same scenario, same run
    target: str = ""
    met: bool | None = None
    error: str = ""
    detail: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Tools and the agent


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def ensure_tools() -> dict[str, str]:
    """dnsperf, dnsmasq and taskset, installed from Debian when missing (needs root)."""
    missing = [tool for tool in ("dnsperf", "dnsmasq", "taskset") if _which(tool) is None]
    if missing:
        if os.geteuid() != 0 or _which("apt-get") is None:
            sys.exit(f"bench: missing {missing}; install: apt-get install -y dnsperf dnsmasq-base")
        print(f"bench: installing {missing} with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "dnsperf", "dnsmasq-base", "util-linux"],
            check=True,
            env=env,
        )
    tools = {tool: _which(tool) for tool in ("dnsperf", "dnsmasq", "taskset")}
    absent = [tool for tool, path in tools.items() if path is None]
    if absent:
        sys.exit(f"bench: still missing {absent} after installing")
    return {tool: str(path) for tool, path in tools.items()}


def ensure_venv(dnsmesh: str | None) -> tuple[str, str]:
    """(the dnsmesh command, a python with uvloop if possible): .venv, created if missing."""
    venv = REPO / ".venv"
    if dnsmesh is None:
        if not (venv / "bin" / "dnsmesh").exists():
            print("bench: creating .venv with `pip install -e .`", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "--quiet", "-e", str(REPO)], check=True
            )
        dnsmesh = str(venv / "bin" / "dnsmesh")
    python = venv / "bin" / "python"
    return dnsmesh, str(python if python.exists() else sys.executable)


def agent_importable(python: str) -> str:
    """'' if the agent's code can be imported by PYTHON, else why not."""
    probe = subprocess.run(
        [python, "-c", "import agent.app"], capture_output=True, text=True, check=False
    )
    if probe.returncode == 0:
        return ""
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {probe.returncode}"


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    for line in (out.stdout + out.stderr).splitlines():
        if "ersion" in line:
            return line.strip()
    return "?"


def git_commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


# ---------------------------------------------------------------------------------------
# Inputs


POLICY_YAML = f"""\
# The benchmark's one policy: a weighted pick between two endpoints, as in production.
apiVersion: dnsmesh/v1
kind: Policy
metadata: {{name: bench-hit}}
spec:
  domain: {POLICY_NAME}
  ttl: 5
  strategy: weighted
  answers: 1
  endpoints:
    - {{address: {POLICY_ADDRESSES[0]}, weight: 90}}
    - {{address: {POLICY_ADDRESSES[1]}, weight: 10}}
"""


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def unique_names(path: Path, count: int) -> Path:
    """COUNT distinct names under the zone, never asked before (a fresh random label)."""
    token = secrets.token_hex(4)
    return write_lines(path, [f"u{i}-{token}.{ZONE} A" for i in range(count)])


# ---------------------------------------------------------------------------------------
# Servers


@dataclass
class Setup:
    workdir: Path
    dnsmesh: str
    python: str
    dnsmasq: str
    upstream_port: int
    server_core: int | None
    client_core: int | None
    policies: Path
    log_level: str
    scrape_interval: float = 1.0


def start_upstream(dnsmasq: str, workdir: Path, core: int | None) -> Server:
    """The local upstream: dnsmasq answering every name under the zone itself."""
    port = free_port()
    cmd = [
        dnsmasq,
        *_dnsmasq_common(port),
        f"--address=/{ZONE}/{ZONE_ADDRESS}",
        f"--local-ttl={UPSTREAM_TTL}",
        "--cache-size=0",
    ]
    server = start("upstream", cmd, port, workdir, core)
    wait_answering(server, f"up.{ZONE}", (ZONE_ADDRESS,), 10)
    return server


def _dnsmasq_common(port: int) -> list[str]:
    return [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--pid-file=",
        "--log-facility=-",
    ]


@dataclass
class ScrapedServer(Server):
    """The agent with a scraper of its /metrics beside it (pinned to the client's core)."""

    scraper: Server | None = None

    def stop(self) -> None:
        if self.scraper is not None:
            self.scraper.stop()
        super().stop()

    def scrapes(self) -> str:
        """The scraper's own summary line, once it is stopped."""
        if self.scraper is None:
            return ""
        self.scraper.stop()
        return self.scraper.log_tail(200).strip()


def start_server(kind: str, setup: Setup) -> Server:
    port = free_port()
    if kind in ("agent", "agent-metrics"):
        admin = f"127.0.0.1:{free_port()}" if kind == "agent-metrics" else "off"
        cmd = [
            setup.dnsmesh,
            "agent",
            "--log-level",
            setup.log_level,
            "--policies",
            str(setup.policies),
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"127.0.0.1:{setup.upstream_port}",
            "--admin-listen",
            admin,
        ]
        if kind == "agent-metrics":
            server = start(kind, cmd, port, setup.workdir, setup.server_core)
            scraper = [
                setup.python,
                str(REPO / "bench" / "_scraper.py"),
                f"http://{admin}/metrics",
                str(setup.scrape_interval),
            ]
            scraped = ScrapedServer(server.label, server.port, server.proc, server.log)
            scraped.scraper = start("scraper", scraper, port, setup.workdir, setup.client_core)
            return scraped
    elif kind == "dnsmasq":
        # The reference forwarder (dnsmasq), plus the policy name as a local record.
        cmd = [
            setup.dnsmasq,
            *_dnsmasq_common(port),
            f"--server=127.0.0.1#{setup.upstream_port}",
            "--cache-size=10000",
            f"--host-record={POLICY_NAME},{POLICY_ADDRESSES[0]}",
            "--local-ttl=5",
        ]
    elif kind in ("ceiling", "ceiling-fresh"):
        cmd = [
            setup.python,
            str(REPO / "bench" / "refserver.py"),
            "--listen",
            f"127.0.0.1:{port}",
            "--name",
            POLICY_NAME,
            "--address",
            POLICY_ADDRESSES[0],
            "--upstream",
            f"127.0.0.1:{setup.upstream_port}",
        ]
        if kind == "ceiling-fresh":
            cmd.append("--fresh-ports")
    else:
        raise ValueError(kind)
    return start(kind, cmd, port, setup.workdir, setup.server_core)


# ---------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Timing:
    seconds: float  # one dnsperf run (a round) per server and scenario
    rounds: int  # rounds per scenario, servers alternating, first server rotating
    p99_seconds: float  # the separate `dnsperf -v` pass for p99 at saturation; 0: none


@dataclass(frozen=True)
class Profiling:
    py_spy: str
    results: Path  # where the raw stacks and their summary go


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


class _Inputs:
    """dnsperf input files for one scenario; uncached ones are fresh names every time."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.made = 0

    def make(self, seconds: float) -> tuple[Path, int | None]:
        """(the file, dnsperf -n): -n 1 for unique names, so no name is ever asked twice."""
        self.made += 1
        path = self.workdir / f"input-{self.scenario.key}-{self.made}.txt"
        if self.scenario.key == "uncached":
            return unique_names(path, int(seconds * 40_000) + 1000), 1
        if self.scenario.key == "cached":
            return write_lines(path, [f"c{i:03d}.{ZONE} A" for i in range(100)]), None
        return write_lines(path, [f"{POLICY_NAME} A"]), None

    def drop(self, path: Path) -> None:
        path.unlink(missing_ok=True)


def measure_scenario(
    scenario: Scenario,
    kinds: list[str],
    setup: Setup,
    timing: Timing,
    profiling: Profiling | None = None,
) -> list[Row]:
    """Every server of the scenario up at once, driven in turns: round r starts with server r.

    Alternating short rounds and taking the median keeps a burst of load from others on
    the shared machine from landing on one server only.
    """
    rows = {kind: Row(scenario.key, kind) for kind in kinds}
    servers: dict[str, Server] = {}
    runs: dict[str, list[PerfResult]] = {kind: [] for kind in kinds}
    cpu: dict[str, float] = dict.fromkeys(kinds, 0.0)
    # The server core's busy and softirq jiffies during the runs, and all its jiffies.
    core: dict[str, list[int]] = {kind: [0, 0, 0] for kind in kinds}
    inputs = _Inputs(scenario, setup.workdir)
    verbose = setup.workdir / f"{scenario.key}-v.out"

    def fail(kind: str, exc: Exception) -> None:
        rows[kind].error = str(exc).splitlines()[0][:200]
        rows[kind].detail["error"] = str(exc)

    def drive(kind: str, seconds: float, with_v: bool) -> PerfResult:
        server = servers[kind]
        path, max_runs = inputs.make(seconds)
        try:
            return run_dnsperf(
                port=server.port,
                datafile=path,
                seconds=seconds,
                core=setup.client_core,
                max_qps=scenario.max_qps,
                max_runs=max_runs,
                verbose_to=verbose if with_v else None,
            )
        finally:
            inputs.drop(path)
            if not server.alive():
                raise ServerFailed(f"{kind} died during the run:\n{server.log_tail()}")

    try:
        for kind in kinds:
            try:
                servers[kind] = start_server(kind, setup)
                deadline = 30 if kind.startswith("agent") else 10
                wait_answering(servers[kind], scenario.probe, scenario.expect, deadline)
            except ServerFailed as exc:
                fail(kind, exc)
        for round_index in range(timing.rounds):
            live = [kind for kind in kinds if not rows[kind].error]
            if not live:
                break
            shift = round_index % len(live)
            for kind in live[shift:] + live[:shift]:
                recorder = None
                if profiling is not None:
                    stacks = profiling.results / f"profile-{scenario.key}-{kind}.raw"
                    recorder = start_recording(
                        profiling.py_spy,
                        servers[kind].pid,
                        timing.seconds,
                        stacks,
                        "raw",
                        setup.client_core,
                    )
                before = servers[kind].cpu_seconds() or 0.0
                core_before = core_ticks(setup.server_core)
                try:
                    # Paced runs are cheap to log per response, so p99 comes from them.
                    result = drive(kind, timing.seconds, with_v=scenario.max_qps is not None)
                except (ServerFailed, DnsperfFailed) as exc:
                    fail(kind, exc)
                    continue
                cpu[kind] += (servers[kind].cpu_seconds() or 0.0) - before
                core_after = core_ticks(setup.server_core)
                for index in range(3):
                    core[kind][index] += core_after[index] - core_before[index]
                runs[kind].append(result)
                if recorder is not None:
                    rows[kind].detail["profile"] = _finish_profile(
                        recorder, stacks, f"{scenario.title}: {result.qps:,.0f} QPS"
                    )
        if scenario.max_qps is None and timing.p99_seconds > 0:
            for kind in kinds:
                if rows[kind].error or not runs[kind]:
                    continue
                try:
                    p99_run = drive(kind, timing.p99_seconds, with_v=True)
                except (ServerFailed, DnsperfFailed) as exc:
                    fail(kind, exc)
                    continue
                rows[kind].p99_ms = p99_run.p99_ms
                rows[kind].p50_ms = p99_run.p50_ms
                rows[kind].detail["p99_pass"] = asdict(p99_run)
        for kind in kinds:
            if kind in servers:
                rows[kind].peak_rss_kib = servers[kind].peak_rss_kib()
            _fill(rows[kind], runs[kind], cpu[kind], paced=scenario.max_qps is not None)
            busy, softirq, total = core[kind]
            if total:
                rows[kind].core_busy_pct = 100.0 * busy / total
                rows[kind].softirq_pct = 100.0 * softirq / total
    finally:
        for kind, server in servers.items():
            if isinstance(server, ScrapedServer):
                rows[kind].detail["scraper"] = server.scrapes()
            server.stop()
        verbose.unlink(missing_ok=True)
    return [rows[kind] for kind in kinds]


def _finish_profile(recorder: subprocess.Popen[bytes], stacks: Path, title: str) -> str:
    _, err = recorder.communicate(timeout=60)
    if recorder.returncode != 0:
        raise ServerFailed(f"py-spy failed: {err.decode(errors='replace')}")
    summary = f"{title}\n{summarize(stacks)}"
    stacks.with_suffix(".txt").write_text(summary + "\n")
    print(summary, file=sys.stderr)
    return str(stacks.with_suffix(".txt"))


def _fill(row: Row, runs: list[PerfResult], cpu: float, *, paced: bool) -> None:
    if not runs:
        return
    qps = [run.qps for run in runs]
    row.qps = _median(qps)
    row.qps_spread_pct = 100.0 * (max(qps) - min(qps)) / 2 / row.qps if row.qps else 0.0
    row.mean_ms = _median([run.mean_ms for run in runs])
    sent = sum(run.sent for run in runs)
    completed = sum(run.completed for run in runs)
    row.ok_pct = 100.0 * sum(run.noerror for run in runs) / sent if sent else 0.0
    seconds = sum(run.run_s for run in runs)
    row.cpu_pct = 100.0 * cpu / seconds if seconds else None
    row.cpu_us_per_query = 1e6 * cpu / completed if completed else None
    if paced:
        p99s = [run.p99_ms for run in runs if run.p99_ms is not None]
        row.p99_ms = _median(p99s) if p99s else None
        p50s = [run.p50_ms for run in runs if run.p50_ms is not None]
        row.p50_ms = _median(p50s) if p50s else None
    row.detail["runs"] = [asdict(run) for run in runs]


def judge(rows: list[Row]) -> None:
    """Ratios against dnsmasq in the same scenario and the speed targets."""
    for scenario in SCENARIO_DEFS.values():
        mine = [row for row in rows if row.scenario == scenario.key]
        ref = next((row for row in mine if row.server == "dnsmasq"), None)
        for row in mine:
            if row.server == "dnsmasq" or row.qps is None:
                continue
            if ref is not None and ref.qps and scenario.max_qps is None:
                row.ratio = row.qps / ref.qps
            if ref is not None and ref.cpu_us_per_query and row.cpu_us_per_query:
                row.cpu_ratio = row.cpu_us_per_query / ref.cpu_us_per_query
            if row.server == "agent-metrics":
                plain = next((r for r in mine if r.server == "agent" and r.qps), None)
                if plain is not None and plain.qps and scenario.max_qps is None:
                    row.target = f"{row.qps / plain.qps:.2f}x the agent's QPS without"
                continue
            if row.server != "agent":
                continue
            healthy = (row.ok_pct or 0.0) >= 99.0
            if scenario.qps_ratio_target is not None:
                row.target = f">= {scenario.qps_ratio_target:g}x dnsmasq QPS"
                if row.ratio is not None:
                    row.met = healthy and row.ratio >= scenario.qps_ratio_target
            if scenario.p99_target_ms is not None:
                row.target = f"p99 <= {scenario.p99_target_ms:g} ms"
                if row.p99_ms is not None:
                    row.met = healthy and row.p99_ms <= scenario.p99_target_ms


# ---------------------------------------------------------------------------------------
# Reporting


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[Row]) -> str:
    head = (
        "| scenario | server | QPS | mean ms | p99 ms | peak RSS MiB | NOERROR % "
        "| CPU % server/softirq/other | CPU us/query | QPS ours/dnsmasq | CPU/query ours/dnsmasq "
        "| target | met |"
    )
    lines = [head, "|" + "---|" * 13]
    for row in rows:
        met = {True: "YES", False: "NO", None: "-" if not row.target else "?"}[row.met]
        rss = None if row.peak_rss_kib is None else row.peak_rss_kib / 1024
        cells = [
            SCENARIO_DEFS[row.scenario].title,
            SERVER_LABELS[row.server],
            _num(row.qps, ",.0f") + (f" ±{row.qps_spread_pct:.0f}%" if row.qps_spread_pct else ""),
            _num(row.mean_ms, ".3f"),
            _num(row.p99_ms, ".3f"),
            _num(rss, ".1f"),
            _num(row.ok_pct, ".1f"),
            f"{_num(row.cpu_pct, '.0f')}/{_num(row.softirq_pct, '.0f')}/"
            f"{_num(other_pct(row), '.0f')}",
            _num(row.cpu_us_per_query, ".1f"),
            "-" if row.ratio is None else f"{row.ratio:.2f}x",
            "-" if row.cpu_ratio is None else f"{row.cpu_ratio:.2f}x",
            row.target or "-",
            met if not row.error else f"ERROR: {row.error}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_average() -> float:
    return os.getloadavg()[0]


def other_pct(row: Row) -> float | None:
    """How much of the server's core went to neither the server nor softirq: others' work."""
    if row.core_busy_pct is None or row.cpu_pct is None or row.softirq_pct is None:
        return None
    return max(0.0, row.core_busy_pct - row.cpu_pct - row.softirq_pct)


def crowded(rows: list[Row]) -> list[str]:
    """Throughput rows during which others' work took a fifth or more of the server core."""
    return [
        f"{SCENARIO_DEFS[row.scenario].title} / {SERVER_LABELS[row.server]} ({other:.0f} %)"
        for row in rows
        if SCENARIO_DEFS[row.scenario].max_qps is None
        and (other := other_pct(row)) is not None
        and other >= 20
    ]


def notes(
    setup: Setup,
    timing: Timing,
    versions: dict[str, str],
    skipped: list[str],
    load: tuple[float, float],
    rows: list[Row],
) -> str:
    pin = (
        f"servers pinned to core {setup.server_core}, dnsperf and the upstream dnsmasq share "
        f"core {setup.client_core}"
        if setup.server_core is not None
        else "no pinning (fewer than 2 cores)"
    )
    items = [
        f"{timing.rounds} round(s) of {timing.seconds:g} s per server and scenario, servers "
        "alternating (the first one rotates per round); QPS and mean latency are the median "
        "of the rounds, ± half their range; every server started fresh per scenario; "
        f"{pin}.",
        "QPS and mean latency: dnsperf at saturation (-q 100 outstanding, UDP, no EDNS).",
        (
            f"p99 in throughput rows: a separate {timing.p99_seconds:.2g} s `dnsperf -v` pass "
            "(per-response lines cost dnsperf CPU, so that pass is not used for QPS)."
            if timing.p99_seconds > 0
            else "p99 in throughput rows: not measured (--no-p99-pass)."
        ),
        "p99 at 2000 QPS: from the same paced run (-Q 2000 -v).",
        "uncached forward: every query a distinct name (dnsperf -n 1, no repeats); both "
        "forwarders ask the same upstream dnsmasq.",
        "py-ceiling is a reference, not dnsmesh (bench/refserver.py): Python+uvloop reading "
        "its socket itself (add_reader, recvfrom/sendto, up to 64 per wakeup) and only the "
        "question, a prebuilt answer for the policy name, a dict cache, and "
        "callback forwarding over a fixed pool of 32 upstream sockets; it skips most of what "
        "a resolver must do, so it bounds what Python can reach here. The fresh-ports "
        "variant (uncached only) opens a new upstream socket per query as the agent does "
        "(RFC 5452 §9.2), with add_reader instead of a transport.",
        "peak RSS: VmHWM of the server process at the end of its scenario. CPU % of the "
        "server's core over its runs: the server's own user+system time / softirq (kernel "
        "packet and socket work, partly for the server's packets, never charged to it) / "
        "other (the rest of the busy time: others' processes). CPU us/query: the server's "
        "own time per query completed.",
        f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on "
        f"{os.cpu_count()} cores: above ~1 others were competing for the cores and QPS moves "
        "with them (CPU us/query much less); compare rows of one run, not across runs.",
        "versions: " + "; ".join(f"{key} {value}" for key, value in versions.items()),
    ]
    items += [f"skipped: {why}" for why in skipped]
    busy = crowded(rows)
    if busy:
        items.append(
            "WARNING: others' work took >= 20 % of the server core during: "
            f"{'; '.join(busy)}. Where that server was below ~80 % itself it was probably "
            "starved, so its QPS (and the ratios and targets built on it) understate it; "
            "CPU us/query holds."
        )
    return "\n".join(f"- {item}" for item in items)


def save(results: Path, markdown: str, payload: dict[str, object]) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    text = json.dumps(payload, indent=2)
    for name in (f"dns-{stamp}", "dns-latest"):
        (results / f"{name}.md").write_text(markdown)
        (results / f"{name}.json").write_text(text)
    return results / f"dns-{stamp}.md"


# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the dnsmesh agent against dnsmasq with dnsperf (loopback only)."
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per dnsperf run (a round; default 4, --quick 2)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke: one 2 s round")
    parser.add_argument(
        "--rounds", type=int, help="rounds per scenario, servers alternating (default 3)"
    )
    parser.add_argument(
        "--p99-seconds", type=float, help="length of the -v pass for p99 at saturation"
    )
    parser.add_argument("--no-p99-pass", action="store_true", help="skip the -v pass")
    parser.add_argument(
        "--servers", default=",".join(ALL_SERVERS), help="of " + ",".join(ALL_SERVERS)
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="of " + ",".join(SCENARIOS)
    )
    parser.add_argument("--dnsmesh", help="the dnsmesh command (default .venv/bin/dnsmesh)")
    parser.add_argument("--agent-log-level", default="warning")
    parser.add_argument("--server-core", type=int, default=1)
    parser.add_argument("--client-core", type=int, default=0)
    parser.add_argument(
        "--profile",
        metavar="SCENARIO",
        choices=SCENARIOS,
        help="instead of the table: run the agent alone in SCENARIO under py-spy and print "
        "where its CPU time goes (raw stacks and summary in the results dir)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write the results")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="default bench/results/ (gitignored)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also run the agent with its admin listener on and /metrics scraped, in the "
        "same rounds as the agent without it (server agent-metrics)",
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often --metrics scrapes (default 1; Prometheus' default is 15-60)",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 4.0
    if args.rounds is None:
        args.rounds = 1 if args.quick or args.profile else 3
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be in [1, 20]")
    if args.p99_seconds is None:
        args.p99_seconds = max(0.5, min(3.0, args.duration * args.rounds / 4))
    if args.no_p99_pass or args.profile:
        args.p99_seconds = 0.0
    if args.metrics and "agent-metrics" not in args.servers.split(","):
        args.servers += ",agent-metrics"
    elif not args.metrics:  # only asked for: it doubles the agent's share of the run
        args.servers = ",".join(s for s in args.servers.split(",") if s != "agent-metrics")
    if not 0 < args.scrape_interval <= 60:
        parser.error("--scrape-interval must be in (0, 60] seconds")
    for name, allowed in (("servers", ALL_SERVERS), ("scenarios", SCENARIOS)):
        chosen = [item for item in getattr(args, name).split(",") if item]
        unknown = set(chosen) - set(allowed)
        if unknown:
            parser.error(f"unknown {name}: {sorted(unknown)}")
        setattr(args, name, chosen)
    if not 0 < args.duration <= 120:
        parser.error("--duration must be in (0, 120] seconds")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    tools = ensure_tools()
    dnsmesh, python = ensure_venv(args.dnsmesh)
    skipped: list[str] = []
    servers = list(args.servers)
    if "agent" in servers:
        why = agent_importable(python)
        if why:
            servers.remove("agent")
            if "agent-metrics" in servers:
                servers.remove("agent-metrics")
            skipped.append(f"dnsmesh agent not runnable ({why})")
            print(f"bench: skipping the agent: {why}", file=sys.stderr)
    pinned = (os.cpu_count() or 1) >= 2
    workdir = Path(tempfile.mkdtemp(prefix="dnsmesh-bench-"))
    policies = workdir / "policies.yaml"
    policies.write_text(POLICY_YAML)
    timing = Timing(args.duration, args.rounds, args.p99_seconds)
    versions = {
        "dnsperf": tool_version([tools["dnsperf"], "-h"]),
        "dnsmasq": tool_version([tools["dnsmasq"], "--version"]).split(" Copyright")[0],
        "python": platform.python_version(),
        "dnsmesh": git_commit(),
    }
    rows: list[Row] = []
    load_start = load_average()
    upstream: Server | None = None
    profiling = None
    if args.profile:
        args.scenarios, servers = [args.profile], ["agent"] if "agent" in servers else []
        if not servers:
            sys.exit("bench: --profile needs the agent")
        args.results_dir.mkdir(parents=True, exist_ok=True)
        profiling = Profiling(find_py_spy(REPO, args.results_dir), args.results_dir)
    try:
        upstream = start_upstream(tools["dnsmasq"], workdir, args.client_core if pinned else None)
        setup = Setup(
            workdir=workdir,
            dnsmesh=dnsmesh,
            python=python,
            dnsmasq=tools["dnsmasq"],
            upstream_port=upstream.port,
            server_core=args.server_core if pinned else None,
            client_core=args.client_core if pinned else None,
            policies=policies,
            log_level=args.agent_log_level,
            scrape_interval=args.scrape_interval,
        )
        for key in args.scenarios:
            scenario = SCENARIO_DEFS[key]
            kinds = [kind for kind in scenario.servers if kind in servers]
            if "agent" in kinds and "agent-metrics" in servers:  # side by side, same rounds
                kinds.insert(kinds.index("agent") + 1, "agent-metrics")
            print(f"bench: {scenario.title}: {', '.join(kinds)} ...", file=sys.stderr)
            rows += measure_scenario(scenario, kinds, setup, timing, profiling)
    finally:
        if upstream is not None:
            upstream.stop()
        if args.keep:
            print(f"bench: work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    judge(rows)
    load = (load_start, load_average())
    markdown = f"{table(rows)}\n\n{notes(setup, timing, versions, skipped, load, rows)}\n"
    print(markdown)
    if not args.no_save and profiling is None:
        payload: dict[str, object] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_s": timing.seconds,
            "rounds": timing.rounds,
            "p99_pass_s": timing.p99_seconds,
            "versions": versions,
            "skipped": skipped,
            "load_average": load,
            "rows": [asdict(row) for row in rows],
        }
        print(f"bench: saved {save(args.results_dir, markdown, payload)}", file=sys.stderr)
    return 1 if any(row.error for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
