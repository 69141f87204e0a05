"""Smokes of the controller benchmarks at small N: each runs end to end and prints its table.

bench/controller_api.py compares with ``--ref HEAD`` here (the harness of the side-by-side
mode: a commit exported and its own controller run; bench/apply.py shares it and runs this
build only, since each of its trees starts the CLI six times), bench/controller_push.py runs
one controller on SQLite and two replicas on PostgreSQL. The numbers are not checked:
they are the benchmarks' to print, at sizes the loaded test machine can spare.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POSTGRES = os.environ.get(
    "DNSMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BENCH_TIMEOUT_S = 200.0  # process starts are slow on the loaded test machine

# Several controllers and client processes at once; longer than the suite's 120 s default.
pytestmark = [pytest.mark.timing, pytest.mark.timeout(BENCH_TIMEOUT_S + 30)]


def _bench(*args: str) -> list[str]:
    """The table rows the bench printed (every line that starts with '| ' past the header).

    The bench runs in a session of its own: past the time bound its whole group is ended,
    the controllers and client processes it started with it."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"{args[0]} did not finish in {BENCH_TIMEOUT_S} s:\n{stdout}\n{stderr}")
    assert process.returncode == 0, f"{args[0]} failed:\n{stdout}\n{stderr}"
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [row for row in rows[1:] if not row.startswith("|--")]


@pytest.mark.postgres
def test_apply_bench_times_every_phase() -> None:
    rows = _bench("bench/apply.py", "--policies", "20", "--rounds", "1")
    assert [row.split("|")[1].strip() for row in rows] == [
        "create",
        "dry-run update",
        "update",
        "unchanged",
    ]
    assert all(len(row.split("|")) == 4 for row in rows)  # phase, this build


@pytest.mark.postgres
def test_api_bench_runs_the_ref_and_this_build() -> None:
    rows = _bench(
        "bench/controller_api.py",
        *("--no-sqlite", "--ref", "HEAD", "--policies", "10", "--ops", "20"),
        *("--list-ops", "5", "--max-seconds", "3"),
    )
    trees = [row.split("|")[1].strip() for row in rows]
    assert len(rows) == 8 and trees[0].startswith("before (") and trees[-1] == "this build"


def test_push_bench_converges_a_few_agents_on_one_controller() -> None:
    rows = _bench(
        "bench/controller_push.py",
        *("--agents", "20", "--rounds", "1", "--workers", "2", "--settle", "0.5"),
    )
    cells = [cell.strip() for cell in rows[0].split("|")[1:-1]]
    assert cells[0] == "20" and cells[8] == "0"  # agents, missing


@pytest.mark.postgres
def test_push_bench_splits_agents_over_two_replicas() -> None:
    rows = _bench(
        "bench/controller_push.py",
        *("--agents", "20", "--rounds", "1", "--settle", "0.5"),
        *("--replicas", "2", "--database", POSTGRES),
    )
    cells = [cell.strip() for cell in rows[0].split("|")[1:-1]]
    assert cells[0] == "20" and cells[8] == "0"
