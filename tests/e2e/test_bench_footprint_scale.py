"""A smoke of the scale benchmark (bench/footprint_scale.py) at a small N: every column filled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "footprint_scale.py"

pytestmark = pytest.mark.timing  # an agent under continuous queries: alone, after the rest


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_small_scale_bench_fills_both_tables() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "300", "--limit", "60"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    rows = [_cells(line) for line in proc.stdout.splitlines() if line.startswith("| this tree")]
    assert len(rows) == 2, proc.stdout  # the agent's row and the delta's
    agent, delta = rows
    # tree, policies, ready, ready CPU, RSS, applied, change CPU, worst, p99, quiet, queries
    assert agent[1] == "300" and agent[-1] == "", agent
    for cell in agent[2:11]:
        assert float(cell.replace(",", "")) > 0, agent
    assert float(agent[5]) < 60  # the edit applied within the limit (the bench says so too)
    # tree, policies, prepare, commit, save, longest gap, resync, resync's longest gap, error
    assert delta[1] == "300" and delta[-1] == "", delta
    for cell in delta[2:8]:
        assert float(cell.replace(",", "")) > 0, delta
