"""A smoke of the DNS benchmark (bench/dns.py): it runs end to end and fills every row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "dns.py"

pytestmark = [
    pytest.mark.skipif(
        shutil.which("dnsperf") is None,
        reason="dnsperf is not installed (apt-get install -y dnsperf dnsmasq-base)",
    ),
    pytest.mark.timing,  # a load generator and three servers: alone, after the parallel part
]


def _agent_code_present() -> bool:
    return (REPO / "agent" / "app.py").exists()


def test_quick_bench_fills_a_row_per_server_and_scenario(tmp_path: Path) -> None:
    # Tiny runs: this checks the harness and the agent under load, not the numbers. The
    # dnsmesh command is the one of the interpreter running the tests (the project's venv).
    dnsmesh = Path(sys.executable).with_name("dnsmesh")
    assert dnsmesh.exists(), f"no dnsmesh next to {sys.executable}"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--duration",
            "0.5",
            "--p99-seconds",
            "0.3",
            "--servers",
            "agent,dnsmasq",
            "--dnsmesh",
            str(dnsmesh),
            "--results-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the bench stops every server it started, then exits
        stdout, stderr = proc.communicate(timeout=15)
        pytest.fail(f"bench did not finish in 90 s:\n{stdout}\n{stderr}")
    assert proc.returncode == 0, f"bench failed:\n{stdout}\n{stderr}"

    payload = json.loads((tmp_path / "dns-latest.json").read_text())
    rows = payload["rows"]
    servers = {"dnsmasq", "agent"} if _agent_code_present() else {"dnsmasq"}
    expected = {(s, k) for s in ("hit", "cached", "uncached", "latency") for k in servers}
    assert {(row["scenario"], row["server"]) for row in rows} == expected
    for row in rows:
        where = f"{row['scenario']}/{row['server']}"
        assert not row["error"], where
        assert row["qps"] > 0, where
        assert row["mean_ms"] > 0, where
        assert row["p99_ms"] is not None and row["p99_ms"] > 0, where
        assert row["peak_rss_kib"] > 0, where
        assert row["ok_pct"] > 90, where  # the servers answered, not just errored back
        if row["server"] == "agent" and row["scenario"] != "latency":
            assert row["ratio"] is not None and row["ratio"] > 0, where
            assert row["met"] in (True, False), where

    # The table printed on stdout has one line per row, each with numbers in it.
    table = [line for line in stdout.splitlines() if line.startswith("| ")][1:]
    assert len(table) == len(rows)
    assert all(any(ch.isdigit() for ch in line.split("|")[3]) for line in table)
