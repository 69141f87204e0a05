"""A smoke of the footprint benchmark (bench/footprint.py) at a small size: every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "footprint.py"

SMALL = ("--ref", "HEAD", "--runs", "1", "--policies", "200", "--cache-size", "200", "--json")

pytestmark = pytest.mark.timing  # starts agents one after another: alone, after the rest


def test_the_footprint_bench_measures_both_trees() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), *SMALL],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    assert "| cold start, compiled, median (ms)" in proc.stdout
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for tree in ("this", "ref"):
        assert 0 < figures["starts"][tree][0] < 60  # seconds from exec to the first answer
        assert 0 < figures["source_starts"][tree][0] < 60
        assert 10_000 < figures["idle_kib"][tree] < 1_000_000
        peak_kib, answered = figures["peak"][tree]
        assert 10_000 < peak_kib < 1_000_000 and answered == 400
