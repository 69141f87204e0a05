"""Every document installs dnsmesh with the one command the README's quick start uses."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    REPO / "README.md",
    REPO / "bench" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]
# "pip install" and its arguments, up to the end of the command (a backtick, &&, the line).
_INSTALL = re.compile(r"pip install((?:[ \t]+(?!&&)[^\s`]+)+)")


def _installs(text: str) -> set[str]:
    found = set()
    for match in _INSTALL.finditer(text):
        words = [w for w in match.group(1).split() if w not in ("-q", "--quiet")]
        found.add(" ".join(["pip install", *words]))
    return found


def test_every_document_installs_dnsmesh_the_same_way() -> None:
    quick_start = (REPO / "README.md").read_text().split("<!-- quick-start -->")[1]
    assert "python3 -m venv .venv && .venv/bin/pip install -e ." in quick_start
    commands = {doc.relative_to(REPO).as_posix(): _installs(doc.read_text()) for doc in DOCUMENTS}
    assert {name: found for name, found in commands.items() if found - {"pip install -e ."}} == {}
    assert commands["docs/mesh.md"] and commands["bench/README.md"]  # they do say how
