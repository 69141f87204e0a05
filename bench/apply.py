"""Benchmark of ``dnsmesh apply -f`` of N policies on PostgreSQL: the CLI's wall time.

For each tree (``--ref COMMIT`` exported beside this build, side by side in the same run),
each round: a fresh PostgreSQL database (made from --database, dropped after), a real
``dnsmesh controller`` of that tree, N policies in files, and that tree's own CLI timed as a
subprocess for: ``apply`` creating all N (one request, one revision), ``apply --dry-run`` of
N changed documents (the diffs printed), the real ``apply`` of those N changes, and the same
files again (N unchanged). The trees alternate within each round so load drifts hit both.

    python bench/apply.py --ref c7a93a0 [--policies 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _reftree import Tree, trees
from controller_api import policy, postgres_database

from tests.support.controller import ControllerProcess

PHASES = ("create", "dry-run update", "update", "unchanged")
APPLY_TIMEOUT_S = 120.0


def write_policies(folder: Path, count: int, weight: int, per_file: int = 100) -> None:
    """``count`` policies, ``per_file`` documents to a file, as an operator's folder holds."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, count, per_file):
        documents = [
            policy(f"p{i:05d}", weight) for i in range(start, min(count, start + per_file))
        ]
        (folder / f"set-{start // per_file:03d}.yaml").write_text(
            yaml.safe_dump_all(documents, sort_keys=False)
        )


def one_round(tree: Tree, admin_url: str, count: int, work: Path) -> dict[str, float]:
    timings: dict[str, float] = {}
    with postgres_database(admin_url) as url:
        token = tree.prepare(url, role="editor")
        with ControllerProcess(url, tree.path, stop_timeout=15.0) as controller:
            env = {**os.environ, "DNSMESH_SERVER": controller.base_url, "DNSMESH_TOKEN": token}
            first, second = work / "first", work / "second"
            write_policies(first, count, 50)
            write_policies(second, count, 60)
            for phase, folder, extra in (
                ("create", first, ()),
                ("dry-run update", second, ("--dry-run",)),
                ("update", second, ()),
                ("unchanged", second, ()),
            ):
                started = time.perf_counter()
                done = tree.dnsmesh(
                    "apply", "-f", str(folder), *extra, env=env, timeout=APPLY_TIMEOUT_S
                )
                timings[phase] = time.perf_counter() - started
                expected = {"create": " created  [", "update": " configured  ["}.get(phase)
                if done.returncode != 0 or (expected and done.stdout.count(expected) != count):
                    raise RuntimeError(f"{tree.label} {phase}: {done.stderr[-2000:]}")
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        default=os.environ.get(
            "DNSMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL URL used to create (and drop) a scratch database per round",
    )
    parser.add_argument("--ref", help="a commit to compare with (e.g. c7a93a0)")
    parser.add_argument("--policies", type=int, default=1000, help="policies in the files")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per tree")
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"dnsmesh apply -f of {args.policies} policies, PostgreSQL, {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    results: dict[str, dict[str, list[float]]] = {}
    with trees(args.ref) as measured, tempfile.TemporaryDirectory(prefix="dnsmesh-apply-") as tmp:
        for round_number in range(args.rounds):
            for tree in measured:
                work = Path(tmp) / f"{round_number}-{len(results)}-{tree.path.name}"
                timings = one_round(tree, args.database, args.policies, work)
                for phase, seconds in timings.items():
                    results.setdefault(tree.label, {}).setdefault(phase, []).append(seconds)
    labels = list(results)
    print(
        "| phase (CLI wall time, s) | "
        + " | ".join(f"{label} median (min-max)" for label in labels)
        + " |"
    )
    print("|---|" + "---:|" * len(labels))
    for phase in PHASES:
        cells = []
        for label in labels:
            values = results[label][phase]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"| {phase} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
