"""A smoke of the coordinated-probing benchmark (bench/probing.py): small, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "probing.py"

pytestmark = pytest.mark.timing  # a CPU-bound simulation: alone, after the parallel part


def test_the_bench_prints_both_modes_and_both_detect() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--agents", "60", "--endpoints", "10", "--seconds", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:4]}
    assert float(rows["off"][-3]) == pytest.approx(60.0, rel=0.1)  # every agent, 1 probe/s
    assert float(rows["N=3"][-3]) == pytest.approx(3.0, rel=0.1)
