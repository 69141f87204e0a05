"""A damaged state file never leaves a node without answers, nor serves what it did not write.

The files are written here by hand (header, SHA-256, payload), so these tests pin the format
rather than trust the code under test to write its own fixtures.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.sync.state_file import StateDir
from dnsmesh.protocol import AppliedState, SnapshotMessage, apply_update, encode_state
from tests.integration.conftest import AgentProcess
from tests.integration.sync_support import policy, resolve
from tests.support.ports import free_port

Spawn = Callable[..., AgentProcess]
WEB = "web.mesh.internal"


def state(revision: int, address: str) -> AppliedState:
    return apply_update(
        AppliedState.empty(),
        SnapshotMessage(revision=revision, policies=[policy("web", [address])]),
    )


def sealed(payload: bytes) -> bytes:
    return (
        b"dnsmesh-state/1 sha256=" + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    )


GOOD_CURRENT = sealed(encode_state(state(4, "127.0.10.2")))
GOOD_PREVIOUS = sealed(encode_state(state(3, "127.0.10.1")))

CORRUPTIONS: dict[str, bytes] = {
    "truncated": GOOD_CURRENT[: len(GOOD_CURRENT) // 2],
    "empty": b"",
    "garbage": bytes(range(256)) * 4,
    # Still valid JSON, still a valid state: only the checksum can tell.
    "altered": GOOD_CURRENT.replace(b"127.0.10.2", b"127.0.66.6"),
}


def agent_with_state(spawn: Spawn, folder: Path, tmp: Path) -> AgentProcess:
    """An agent whose controller is nowhere: what it answers comes from its state folder."""
    token = tmp / "token"
    token.write_text("dnsm_unused\n")
    return spawn(
        "--controller", f"http://127.0.0.1:{free_port()}", "--token-file", str(token),
        "--state-dir", str(folder), "--listen", "127.0.0.1:0",
        "--upstream", f"127.0.0.1:{free_port()}", "--no-loop-check", "--query-timeout", "0.3",
    )  # fmt: skip


def ask(agent: AgentProcess, name: str) -> list[str] | None:
    address = agent.addresses[0]
    return resolve(address.host, address.port, name)


@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_a_bad_current_file_falls_back_to_the_previous_one(
    spawn_agent: Spawn, tmp_path: Path, damage: str
) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / "state.json").write_bytes(CORRUPTIONS[damage])
    (folder / "state.previous.json").write_bytes(GOOD_PREVIOUS)
    agent = agent_with_state(spawn_agent, folder, tmp_path)
    assert ask(agent, WEB) == ["127.0.10.1"]  # the previous file's answer, never 127.0.66.6
    fallback = agent.events("sync.state_fallback")
    assert len(fallback) == 1 and fallback[0]["file"] == str(folder / "state.previous.json")
    assert fallback[0]["revision"] == 3
    assert str(folder / "state.json") in fallback[0]["rejected"]
    corrupt = agent.events("sync.state_corrupt")
    assert [c["file"] for c in corrupt] == [str(folder / "state.json")]
    loaded = agent.events("sync.state_loaded")
    assert loaded and loaded[0]["file"] == str(folder / "state.previous.json")


def test_with_both_files_bad_the_agent_starts_empty_and_says_so(
    spawn_agent: Spawn, tmp_path: Path
) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / "state.json").write_bytes(CORRUPTIONS["altered"])
    (folder / "state.previous.json").write_bytes(CORRUPTIONS["truncated"])
    agent = agent_with_state(spawn_agent, folder, tmp_path)
    assert ask(agent, WEB) == []  # no policy: forwarded to a dead upstream, SERVFAIL
    none = agent.events("sync.state_none")
    assert len(none) == 1 and "starting empty" in none[0]["outcome"]
    assert set(none[0]["rejected"]) == {
        str(folder / "state.json"),
        str(folder / "state.previous.json"),
    }
    assert all("checksum mismatch" in why for why in none[0]["rejected"].values())
    assert not agent.events("sync.state_loaded")


def test_a_good_current_file_is_used_and_the_previous_one_ignored(
    spawn_agent: Spawn, tmp_path: Path
) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / "state.json").write_bytes(GOOD_CURRENT)
    (folder / "state.previous.json").write_bytes(GOOD_PREVIOUS)
    agent = agent_with_state(spawn_agent, folder, tmp_path)
    assert ask(agent, WEB) == ["127.0.10.2"]
    assert not agent.events("sync.state_fallback") and not agent.events("sync.state_corrupt")


# -- the folder itself -----------------------------------------------------------------------


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.__dict__["dnsmesh_fields"] for r in caplog.records if r.getMessage() == name]


def test_every_write_keeps_the_previous_file_and_seals_the_new_one(tmp_path: Path) -> None:
    folder = StateDir(tmp_path)
    folder.save(state(1, "127.0.10.1"))
    folder.save(state(2, "127.0.10.2"))
    assert folder.state_file.read_bytes() == sealed(encode_state(state(2, "127.0.10.2")))
    assert folder.previous_file.read_bytes() == sealed(encode_state(state(1, "127.0.10.1")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.previous.json"]


def test_a_write_over_a_bad_current_file_keeps_the_good_previous_one(tmp_path: Path) -> None:
    folder = StateDir(tmp_path)
    folder.previous_file.write_bytes(GOOD_PREVIOUS)
    folder.state_file.write_bytes(CORRUPTIONS["altered"])
    folder.save(state(5, "127.0.10.5"))
    assert folder.previous_file.read_bytes() == GOOD_PREVIOUS  # not the altered file
    loaded = folder.load()
    assert loaded is not None and loaded.revision == 5


def test_a_missing_current_file_with_a_previous_one_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash between the two renames of a write leaves exactly this."""
    folder = StateDir(tmp_path)
    folder.previous_file.write_bytes(GOOD_PREVIOUS)
    with caplog.at_level(logging.INFO):
        loaded = folder.load()
    assert loaded is not None and loaded.revision == 3
    assert events(caplog, "sync.state_loaded")[0]["file"] == str(folder.previous_file)


def test_a_file_from_before_the_checksum_loads_unchecked_and_the_next_write_seals_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = StateDir(tmp_path)
    old = encode_state(state(7, "127.0.10.7"))  # what earlier agents wrote: plain JSON
    folder.state_file.write_bytes(old)
    with caplog.at_level(logging.INFO):
        loaded = folder.load()
    assert loaded is not None and loaded.revision == 7
    assert events(caplog, "sync.state_unchecked")[0]["file"] == str(folder.state_file)
    folder.save(state(8, "127.0.10.8"))
    assert folder.previous_file.read_bytes() == old  # whole, so kept as the previous
    assert folder.state_file.read_bytes().startswith(b"dnsmesh-state/1 sha256=")


def test_a_first_start_with_no_files_says_nothing_and_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        assert StateDir(tmp_path).load() is None
    assert not [r for r in caplog.records if r.getMessage().startswith("sync.state")]
