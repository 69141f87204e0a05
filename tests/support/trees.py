"""A folder tree as data (every path's kind, bytes, mode and link target), to compare a
node's files before and after something claims to have put them back."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """``{relative path: (kind, bytes or link target, mode)}`` for everything under ``root``."""
    tree: dict[str, tuple[str, bytes | str, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            relative = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                tree[relative] = ("symlink", os.readlink(path), 0)
            elif stat.S_ISDIR(info.st_mode):
                tree[relative] = ("dir", b"", mode)
            else:
                tree[relative] = ("file", path.read_bytes(), mode)
    return tree
