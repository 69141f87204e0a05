"""The agent's state folder: its stable id and the last applied controller state, on disk.

The state file is what lets a restarted agent answer before the controller does
(docs/design.md, "Restarts"), so a damaged one must not leave the node without answers:

* **Sealed.** The file is a header line ``dnsmesh-state/1 sha256=<hex>`` and then the state
  (JSON, ``dnsmesh.protocol.encode_state``); the SHA-256 is of those payload bytes. A file
  truncated, emptied, overwritten with garbage or altered (even into other valid JSON)
  fails the check and is not served, not even in part.
* **Kept twice.** Every write rotates the current file to ``state.previous.json`` (when
  the current one checks out; a bad one is overwritten, so the good previous file stays)
  and puts the new one in place. Each step is atomic: the new file is written to a
  temporary file and fsynced, then renamed over, and the folder fsynced so the renames
  survive a power cut (rename(2) is atomic, only a directory fsync makes it durable).
* **Fallback on load.** A current file that is missing, unreadable or fails its check is
  logged with the reason and the previous one is tried; with both bad the agent starts
  empty and says so, and the controller sends it a snapshot: never starting is worse.
* **Files from before the seal** (plain JSON, no header) still load, with a warning
  ``sync.state_unchecked``: there is no checksum to verify, only that the state decodes
  whole. The first write after the upgrade seals it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from dnsmesh.errors import ConfigError, DnsmeshError
from dnsmesh.logs import fields
from dnsmesh.protocol import AppliedState, decode_state, encode_state_pieces

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
PREVIOUS_STATE_FILE = "state.previous.json"
AGENT_ID_FILE = "agent-id"
HEADER = b"dnsmesh-state/1 sha256="
_HEADER_LINE = len(HEADER) + 64 + 1  # prefix, hex digest, newline


class StateFileError(Exception):
    """Why a state file cannot be trusted (said in the log as the file's ``error``)."""


def unseal(data: bytes) -> tuple[bytes, bool]:
    """The payload of a state file and whether it was checked; StateFileError if it fails.

    A file that starts with ``{`` is one from before the seal: passed on unchecked.
    """
    start, checked = _check_seal(data)
    return (data[start:] if start else data), checked


def _check_seal(data: bytes) -> tuple[int, bool]:
    """Where the payload starts and whether its digest was checked; StateFileError.

    Nothing here copies the payload (it may be tens of MiB): a copy is one call that holds
    the GIL throughout, and hashlib lets go of the GIL while it hashes a buffer.
    """
    start = data[:_HEADER_LINE].lstrip()  # the header's length is enough to tell
    if not start and len(data) <= _HEADER_LINE:
        raise StateFileError("the file is empty")
    if start[:1] == b"{":
        return 0, False
    if not data.startswith(HEADER):
        raise StateFileError("not a dnsmesh state file (no dnsmesh-state header)")
    if len(data) < _HEADER_LINE or data[_HEADER_LINE - 1 : _HEADER_LINE] != b"\n":
        raise StateFileError("the header is cut short or malformed")
    expected = data[len(HEADER) : _HEADER_LINE - 1].decode("ascii", "replace")
    payload = memoryview(data)[_HEADER_LINE:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise StateFileError(
            f"checksum mismatch ({len(payload)} payload bytes hash to {actual[:12]}..., the "
            f"header says {expected[:12]}...): truncated, partly written or altered"
        )
    return _HEADER_LINE, True


class StateDir:
    """One agent's state folder (created 0700 if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state_file = path / STATE_FILE
        self.previous_file = path / PREVIOUS_STATE_FILE

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
        """The last good state: the current file, else the previous one (logged), else None.

        Every file passed over is logged with why (``sync.state_corrupt``,
        ``sync.state_unreadable``); a fallback is ``sync.state_fallback``, starting empty
        after a rejection ``sync.state_none``.
        """
        rejected: dict[str, str] = {}
        for file in (self.state_file, self.previous_file):
            try:
                state = self._read(file)
            except StateFileError as exc:
                rejected[str(file)] = str(exc)
                continue
            if state is None:
                continue
            if rejected:
                log.warning(
                    "sync.state_fallback",
                    extra=fields(file=str(file), revision=state.revision, rejected=rejected),
                )
            log.info(
                "sync.state_loaded",
                extra=fields(file=str(file), revision=state.revision, policies=len(state.policies)),
            )
            return state
        if rejected:
            log.error(
                "sync.state_none",
                extra=fields(
                    rejected=rejected,
                    outcome="starting empty until the controller sends a snapshot",
                ),
            )
        return None

    def _read(self, file: Path) -> AppliedState | None:
        """The state in ``file``, None if there is no such file; StateFileError (logged)."""
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("sync.state_unreadable", extra=fields(file=str(file), error=str(exc)))
            raise StateFileError(f"unreadable: {exc}") from exc
        try:
            payload, checked = unseal(data)
            state = decode_state(payload)  # whole or not at all: never a part of it
        except (StateFileError, DnsmeshError) as exc:
            log.error("sync.state_corrupt", extra=fields(file=str(file), error=str(exc)[:300]))
            raise StateFileError(str(exc)[:300]) from exc
        if not checked:
            log.warning(
                "sync.state_unchecked",
                extra=fields(
                    file=str(file),
                    reason="written before state files carried a checksum; the next write seals it",
                ),
            )
        return state

    def _sound(self, file: Path) -> bool:
        """Whether ``file`` is worth keeping as the previous state (checked, or old and whole)."""
        try:
            data = file.read_bytes()
            if not _check_seal(data)[1]:
                decode_state(data)
        except (OSError, StateFileError, DnsmeshError):
            return False
        return True

    def save(self, state: AppliedState) -> None:
        """Replace the state file atomically and durably, keeping the current one as the
        previous if it is sound; OSError if the disk refuses.

        Written in pieces (``encode_state_pieces``) and hashed as it goes: it runs in a
        worker thread, and no step of it holds the GIL for long, whatever the policies'
        number (the whole file in one buffer was one 0.5 s call at 100,000 policies).
        """
        keep = self.previous_file if self._sound(self.state_file) else None
        write_sealed(self.state_file, encode_state_pieces(state), keep_previous=keep)


# Pieces are gathered up to this size per write(2): few system calls, and each join a copy
# of well under a millisecond.
_WRITE_BATCH = 1 << 20


def write_sealed(path: Path, pieces: Iterable[bytes], keep_previous: Path | None = None) -> None:
    """``write_atomically`` of the sealed file of ``b"".join(pieces)`` (the header with the
    SHA-256 of those bytes, then the bytes), without the whole file in memory.

    The header's digest is known only at the end: a header of the same length goes first
    and is overwritten in place before the fsync, so a crash leaves a temporary file with a
    header that does not match (never renamed into place) or the whole file.
    """
    digest = hashlib.sha256()
    placeholder = HEADER + b"0" * 64 + b"\n"

    def write(fd: int) -> None:
        _write_all(fd, placeholder)
        batch: list[bytes] = []
        size = 0
        for piece in pieces:
            batch.append(piece)
            size += len(piece)
            if size >= _WRITE_BATCH:
                _write_batch(fd, batch, digest)
                batch, size = [], 0
        _write_batch(fd, batch, digest)
        os.pwrite(fd, HEADER + digest.hexdigest().encode() + b"\n", 0)

    _replace_durably(path, write, keep_previous)


def _write_batch(fd: int, batch: list[bytes], digest: hashlib._Hash) -> None:
    chunk = b"".join(batch)
    digest.update(chunk)
    _write_all(fd, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomically(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Write temp, fsync, rename over ``path``, fsync the folder (POSIX durability).

    With ``keep_previous``, the old ``path`` is first renamed there, so a crash between the
    two renames leaves the previous file and no current one, which load falls back from.
    """
    _replace_durably(path, lambda fd: _write_all(fd, data), keep_previous)


def _replace_durably(path: Path, write: Callable[[int], None], keep_previous: Path | None) -> None:
    """``write(fd)`` into a temporary file, then fsync, rename(s), fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write(fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        if keep_previous is not None:
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
