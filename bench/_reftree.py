"""A tree to benchmark: this checkout, or a commit exported to a temporary folder (--ref).

Its ``dnsmesh`` runs as ``python -m cli.main`` with the tree as the working directory, so the
tree's own packages come first on the path, ahead of the editable install of this checkout;
the database is migrated and the token minted by the tree's own code, so a ref with another
schema is measured on its own schema.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Tree:
    label: str
    path: Path

    def dnsmesh(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=self.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def prepare(self, url: str, role: str = "admin") -> str:
        """Migrates the database with this tree's migrations; a token of ``role``."""
        for command in (
            ("db", "upgrade", "--database", url),
            ("token", "create", "--database", url, "--role", role, "--name", f"bench-{role}"),
        ):
            done = self.dnsmesh(*command)
            if done.returncode != 0:
                raise RuntimeError(f"{self.label}: dnsmesh {' '.join(command)}: {done.stderr}")
        return done.stdout.strip().splitlines()[-1]


@contextmanager
def trees(ref: str | None) -> Iterator[list[Tree]]:
    """``[before (ref), this build]``, or this build alone without a ref."""
    if ref is None:
        yield [Tree("this build", ROOT)]
        return
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix=f"dnsmesh-ref-{commit}-") as folder:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        yield [Tree(f"before ({commit})", Path(folder)), Tree("this build", ROOT)]
