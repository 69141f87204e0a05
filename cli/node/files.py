"""What a path was (absent, a file with its bytes, mode and owner, or a symlink), and putting
it back byte for byte; writes that replace a file in one rename.

Paths are node paths (``/etc/resolv.conf``) under a root (``/`` on the node itself, an image
or a test tree otherwise): ``Root.host(path)`` is where it is here.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dnsmesh.errors import ConfigError

Kind = Literal["absent", "file", "symlink"]


@dataclass(frozen=True, slots=True)
class Root:
    path: Path

    def host(self, node_path: str) -> Path:
        return self.path / node_path.lstrip("/")

    @property
    def is_node(self) -> bool:
        """Whether this root is the running system's own (``/``)."""
        return self.path.resolve() == Path("/")


@dataclass(frozen=True, slots=True)
class PathState:
    """One path as it was: enough to restore it exactly."""

    kind: Kind
    data: bytes = b""
    target: str = ""
    mode: int = 0
    uid: int = -1
    gid: int = -1

    def describe(self) -> str:
        if self.kind == "absent":
            return "absent"
        if self.kind == "symlink":
            return f"a symlink to {self.target}"
        return f"a file of {len(self.data)} bytes, mode {self.mode:04o}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "data": base64.b64encode(self.data).decode(),
            "target": self.target,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PathState:
        return cls(
            kind=raw["kind"],
            data=base64.b64decode(raw["data"]),
            target=raw["target"],
            mode=int(raw["mode"]),
            uid=int(raw["uid"]),
            gid=int(raw["gid"]),
        )


def read_state(path: Path) -> PathState:
    """What ``path`` is now; ConfigError for anything we could not put back (a directory)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return PathState("absent")
    if stat.S_ISLNK(info.st_mode):
        return PathState("symlink", target=os.readlink(path), uid=info.st_uid, gid=info.st_gid)
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path} is neither a file nor a symlink: not touching it")
    return PathState(
        "file",
        data=path.read_bytes(),
        mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
    )


def _temporary(path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.dnsmesh-tmp")
    tmp.unlink(missing_ok=True)  # left by an interrupted write
    return tmp


def _replace(tmp: Path, path: Path, state: PathState) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno != errno.EBUSY or state.kind != "file":
            raise
        # A bind-mounted file (a container's /etc/resolv.conf) cannot be renamed over:
        # write it in place instead.
        tmp.unlink()
        with path.open("wb") as out:
            out.write(state.data)
        os.chmod(path, state.mode)


def _owner(state: PathState) -> tuple[int, int] | None:
    """The owner to give back, when we may (root), else None."""
    if state.uid < 0 or os.geteuid() != 0:
        return None
    return state.uid, state.gid


def write_state(path: Path, state: PathState) -> None:
    """Make ``path`` be ``state``: a file or symlink written beside it and renamed over it,
    or removed when ``state`` is absent."""
    if state.kind == "absent":
        path.unlink(missing_ok=True)
        return
    tmp = _temporary(path)
    owner = _owner(state)
    if state.kind == "symlink":
        os.symlink(state.target, tmp)
        if owner is not None:
            os.lchown(tmp, *owner)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(state.data)
            out.flush()
            os.fchmod(fd, state.mode)  # the mode exactly, whatever the umask
            if owner is not None:
                os.fchown(fd, *owner)
            os.fsync(fd)
    _replace(tmp, path, state)
