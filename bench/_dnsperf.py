"""Runs dnsperf once against one server and reads its numbers (QPS, latency, rcodes)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PerfResult:
    sent: int
    completed: int
    lost: int
    noerror: int
    qps: float
    mean_ms: float
    run_s: float
    p99_ms: float | None = None  # only when dnsperf ran with -v (one line per response)
    p50_ms: float | None = None
    rcodes: dict[str, int] = field(default_factory=dict)


class DnsperfFailed(RuntimeError):
    """dnsperf exited with an error or printed no statistics."""


_NUM = r"([0-9.]+)"


def _grab(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise DnsperfFailed(f"dnsperf output lacks {pattern!r}:\n{text[-2000:]}")
    return match.group(1)


def parse_statistics(text: str) -> PerfResult:
    """The summary dnsperf prints at the end of a run (dnsperf 2.x layout)."""
    rcodes: dict[str, int] = {}
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes:
        for name, count in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1)):
            rcodes[name] = int(count)
    return PerfResult(
        sent=int(_grab(r"Queries sent:\s+(\d+)", text)),
        completed=int(_grab(r"Queries completed:\s+(\d+)", text)),
        lost=int(_grab(r"Queries lost:\s+(\d+)", text)),
        noerror=rcodes.get("NOERROR", 0),
        qps=float(_grab(r"Queries per second:\s+" + _NUM, text)),
        mean_ms=float(_grab(r"Average Latency \(s\):\s+" + _NUM, text)) * 1000.0,
        run_s=float(_grab(r"Run time \(s\):\s+" + _NUM, text)),
        rcodes=rcodes,
    )


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


def latencies_from_verbose(path: Path) -> list[float]:
    """Per-response latencies in ms from `dnsperf -v` lines: '> NOERROR name A 0.000123'."""
    values: list[float] = []
    with path.open("rb") as lines:
        for line in lines:
            if line.startswith(b"> "):
                try:
                    values.append(float(line.rsplit(None, 1)[1]) * 1000.0)
                except (ValueError, IndexError):
                    continue
    values.sort()
    return values


def run_dnsperf(
    *,
    port: int,
    datafile: Path,
    seconds: float,
    core: int | None,
    max_qps: int | None = None,
    verbose_to: Path | None = None,
    max_runs: int | None = None,
    outstanding: int = 100,
) -> PerfResult:
    """One bounded dnsperf run against 127.0.0.1:port; -v output (if asked) goes to a file.

    Bounded in time (-l) and, with max_runs, in count (-n passes over the input file); the
    process itself gets a hard timeout on top so a wedged run cannot hang the benchmark.
    """
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile)]
    cmd += ["-l", f"{seconds:g}", "-q", str(outstanding), "-t", "2"]
    if max_qps is not None:
        cmd += ["-Q", str(max_qps)]
    if max_runs is not None:
        cmd += ["-n", str(max_runs)]
    if verbose_to is not None:
        cmd.append("-v")
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    stdout = verbose_to.open("wb") if verbose_to is not None else subprocess.PIPE
    try:
        proc = subprocess.run(
            cmd,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=seconds + 30,
            check=False,
        )
    finally:
        if verbose_to is not None and not isinstance(stdout, int):
            stdout.close()
    if verbose_to is not None:
        text = verbose_to.read_bytes()[-4000:].decode(errors="replace")
    else:
        text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise DnsperfFailed(
            f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    result = parse_statistics(text)
    if verbose_to is None:
        return result
    latencies = latencies_from_verbose(verbose_to)
    if not latencies:
        return result
    return PerfResult(
        sent=result.sent,
        completed=result.completed,
        lost=result.lost,
        noerror=result.noerror,
        qps=result.qps,
        mean_ms=result.mean_ms,
        run_s=result.run_s,
        p99_ms=percentile(latencies, 0.99),
        p50_ms=percentile(latencies, 0.50),
        rcodes=result.rcodes,
    )
