"""The agent's state folder: its stable id and the last applied controller state, on disk.

The state file is what lets a restarted agent answer before the controller does
(docs/design.md, "Restarts"). It is replaced atomically: written to a temporary file, fsynced,
renamed over the old one, and the folder fsynced so the rename itself survives a power
cut (rename(2) is atomic, but only a directory fsync makes it durable). A state file that
cannot be read or decoded is logged and ignored: the agent then starts empty and the
controller sends it a snapshot, which is always safer than not starting.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from dnsmesh.errors import ConfigError, DnsmeshError
from dnsmesh.logs import fields
from dnsmesh.protocol import AppliedState, decode_state, encode_state

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
AGENT_ID_FILE = "agent-id"


class StateDir:
    """One agent's state folder (created 0700 if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state_file = path / STATE_FILE

    def ensure(self) -> None:
        """Create the folder; ConfigError if it cannot exist (the agent cannot persist)."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the state folder {self.path}: {exc}") from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ConfigError(f"the state folder {self.path} is not writable")

    def agent_id(self) -> str:
        """The agent's stable id: read from the folder, or minted and stored on first run.

        The id survives restarts so the controller's per-agent status follows one node
        rather than growing a row per process.
        """
        file = self.path / AGENT_ID_FILE
        try:
            existing = file.read_text().strip()
        except FileNotFoundError:
            existing = ""
        except OSError as exc:
            raise ConfigError(f"cannot read {file}: {exc}") from exc
        if existing and len(existing) <= 128 and existing.isprintable():
            return existing
        minted = "agent-" + secrets.token_hex(8)
        try:
            write_atomically(file, (minted + "\n").encode())
        except OSError as exc:
            raise ConfigError(f"cannot store the agent id in {file}: {exc}") from exc
        log.info("sync.agent_id_minted", extra=fields(agent_id=minted, file=str(file)))
        return minted

    def load(self) -> AppliedState | None:
        """The last applied state, or None (missing, unreadable or corrupt: logged)."""
        try:
            data = self.state_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error(
                "sync.state_unreadable", extra=fields(file=str(self.state_file), error=str(exc))
            )
            return None
        try:
            return decode_state(data)
        except DnsmeshError as exc:
            log.error(
                "sync.state_corrupt",
                extra=fields(file=str(self.state_file), error=str(exc)[:300]),
            )
            return None

    def save(self, state: AppliedState) -> None:
        """Replace the state file atomically and durably; OSError if the disk refuses."""
        write_atomically(self.state_file, encode_state(state))


def write_atomically(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename over ``path``, fsync the folder (POSIX durability)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
