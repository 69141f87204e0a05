"""The agent's sync building blocks without a network: the clash rule, coalescing, the state
file on a real filesystem, backoff bounds and the controller URL derivation."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest

from agent.sync.client import backoff_delay
from agent.sync.config import (
    add_sync_arguments,
    http_url,
    parse_labels,
    stream_url,
    sync_config_from_args,
)
from agent.sync.errors import parse_retry_after
from agent.sync.policy_sources import Applied, PolicySources, Refused, find_clashes
from agent.sync.state_file import StateDir, write_atomically
from dnsmesh.errors import ConfigError
from dnsmesh.policyfile import SourcedPolicy, load_policy_path
from dnsmesh.protocol import AppliedState, Delta, PolicyChange, SnapshotMessage, apply_update
from dnsmesh.snapshot import Snapshot as Compiled


def doc(name: str, domain: str | None = None, address: str = "127.0.10.1") -> dict[str, Any]:
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"domain": domain or f"{name}.mesh.internal", "endpoints": [{"address": address}]},
    }


def write_local(path: Path, *docs: dict[str, Any]) -> list[SourcedPolicy]:
    path.write_text("\n---\n".join(json.dumps(d) for d in docs))
    return load_policy_path(path)


class Published:
    def __init__(self) -> None:
        self.snapshots: list[Compiled] = []

    def __call__(self, snapshot: Compiled) -> None:
        self.snapshots.append(snapshot)

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.snapshots[-1].policies()}

    @property
    def domains(self) -> set[str]:
        return {p.domain for p in self.snapshots[-1].policies()}


def sources_with_local(tmp_path: Path, *docs: dict[str, Any]) -> tuple[PolicySources, Published]:
    published = Published()
    sources = PolicySources(published)
    local = write_local(tmp_path / "local.yaml", *docs)
    sources.commit_local(sources.stage_local(local))
    return sources, published


# -- the clash rule --------------------------------------------------------------------------


def test_clashes_are_found_by_name_and_by_domain(tmp_path: Path) -> None:
    local = write_local(tmp_path / "l.yaml", doc("web"), doc("db", "db.example"))
    controller = apply_update(
        AppliedState.empty(),
        SnapshotMessage(revision=1, policies=[doc("web", "other.example"), doc("x", "db.example")]),
    ).policies
    clashes = sorted(find_clashes(local, controller), key=lambda c: c.what)
    assert [(c.controller.name, c.local.policy.name, c.what) for c in clashes] == [
        ("x", "db", "domain"),
        ("web", "web", "name"),
    ]
    assert find_clashes(local, {}) == []


def test_a_controller_policy_clashing_with_a_local_file_is_shadowed_and_the_rest_applies(
    tmp_path: Path,
) -> None:
    sources, published = sources_with_local(tmp_path, doc("local-web", "web.mesh.internal"))
    assert sources.receive([SnapshotMessage(revision=3, policies=[doc("api")])]) == [Applied(3)]
    assert published.names == {"local-web", "api"} and sources.shadowed == []

    clash = Delta(since=3, revision=4, changes=[PolicyChange(name="web", policy=doc("web"))])
    assert sources.receive([clash]) == [Applied(4)]
    # Revision 4 runs; its "web" is not served here: the local file keeps the domain.
    assert sources.running.revision == 4 and published.snapshots[-1].revision == 4
    assert published.names == {"local-web", "api"}
    (shadowed,) = sources.shadowed
    assert shadowed.name == "web"
    assert str(tmp_path / "local.yaml") in shadowed.reason
    assert "'web.mesh.internal'" in shadowed.reason and "local-web" in shadowed.reason
    ack = sources.acknowledgement()
    assert ack.revision == 4 and [s.name for s in ack.shadowed] == ["web"]
    assert [(p.name, p.domain) for p in ack.local] == [("local-web", "web.mesh.internal")]

    # A later, unrelated revision applies and is served too.
    unrelated = Delta(since=4, revision=5, changes=[PolicyChange(name="db", policy=doc("db"))])
    assert sources.receive([unrelated]) == [Applied(5)]
    assert published.names == {"local-web", "api", "db"}
    assert [s.name for s in sources.shadowed] == ["web"]


def test_removing_the_clash_locally_serves_the_controller_policy_and_reports_it(
    tmp_path: Path,
) -> None:
    changed: list[int] = []
    published = Published()
    sources = PolicySources(published, lambda: changed.append(sources.running.revision))
    sources.start_from(
        apply_update(
            AppliedState.empty(),
            SnapshotMessage(revision=9, policies=[doc("web", "web.example"), doc("api")]),
        )
    )
    sources.commit_local(sources.stage_local(write_local(tmp_path / "local.yaml", doc("web"))))
    assert changed == [9] and [s.name for s in sources.shadowed] == ["web"]
    assert published.domains == {"web.mesh.internal", "api.mesh.internal"}  # the local web

    sources.commit_local(sources.stage_local(write_local(tmp_path / "local.yaml", doc("other"))))
    assert changed == [9, 9] and sources.shadowed == []
    assert published.names == {"other", "web", "api"}
    assert "web.example" in published.domains


def test_a_local_edit_that_clashes_with_the_controller_shadows_its_policy(
    tmp_path: Path,
) -> None:
    sources, published = sources_with_local(tmp_path, doc("local"))
    sources.receive([SnapshotMessage(revision=7, policies=[doc("checkout")])])
    clashing = write_local(
        tmp_path / "local.yaml", doc("local"), doc("mine", "checkout.mesh.internal")
    )
    sources.commit_local(sources.stage_local(clashing))
    assert published.names == {"local", "mine"}
    (shadowed,) = sources.shadowed
    assert shadowed.name == "checkout" and "(document 2)" in shadowed.reason


def test_a_controller_update_landing_while_files_are_parsed_is_not_lost(tmp_path: Path) -> None:
    sources, published = sources_with_local(tmp_path, doc("local"))
    staged = sources.stage_local(write_local(tmp_path / "local.yaml", doc("local2")))
    # The reloader parses in a worker thread; meanwhile the loop applies a push.
    assert sources.receive([SnapshotMessage(revision=2, policies=[doc("pushed")])]) == [Applied(2)]
    sources.commit_local(staged)
    assert published.names == {"local2", "pushed"} and published.snapshots[-1].revision == 2

    staged = sources.stage_local(write_local(tmp_path / "local.yaml", doc("late", "late.mesh")))
    late = Delta(
        since=2, revision=3, changes=[PolicyChange(name="x", policy=doc("x", "late.mesh"))]
    )
    assert sources.receive([late]) == [Applied(3)]  # no clash with what runs (local2)
    sources.commit_local(staged)  # the staged files clash with it now: the file wins
    assert published.names == {"late", "pushed"} and published.snapshots[-1].revision == 3
    assert [s.name for s in sources.shadowed] == ["x"]


def test_an_update_prepared_in_a_thread_is_redone_if_the_state_moved(tmp_path: Path) -> None:
    sources, published = sources_with_local(tmp_path, doc("local"))
    sources.receive([SnapshotMessage(revision=1, policies=[doc("a")])])
    prepared = sources.prepare(
        [Delta(since=1, revision=2, changes=[PolicyChange(name="b", policy=doc("b", "x.mesh"))])]
    )
    assert prepared.snapshot is not None and sources.running.revision == 1  # nothing swapped
    # Meanwhile (on the loop) a local reload takes the domain the update brings.
    sources.commit_local(
        sources.stage_local(write_local(tmp_path / "local.yaml", doc("x", "x.mesh")))
    )
    assert sources.commit(prepared) == [Applied(2)]
    assert published.names == {"x", "a"} and [s.name for s in sources.shadowed] == ["b"]


# -- coalescing, gaps, invalid updates -------------------------------------------------------


def test_a_burst_is_applied_with_one_compile_and_one_swap() -> None:
    published = Published()
    sources = PolicySources(published)
    burst: list[SnapshotMessage | Delta] = [SnapshotMessage(revision=1, policies=[doc("a")])]
    for revision in range(2, 50):
        change = PolicyChange(name="a", policy=doc("a", address=f"127.0.0.{revision}"))
        burst.append(Delta(since=revision - 1, revision=revision, changes=[change]))
    assert sources.receive(burst) == [Applied(49)]
    assert len(published.snapshots) == 1 and published.snapshots[0].revision == 49


def test_a_gap_asks_for_a_resync_and_keeps_what_runs() -> None:
    published = Published()
    sources = PolicySources(published)
    sources.receive([SnapshotMessage(revision=4, policies=[doc("a")])])
    gap = Delta(since=6, revision=8, changes=[PolicyChange(name="a", policy=None)])
    (outcome,) = sources.receive([gap])
    assert outcome == Refused(8, outcome.reason, resync=True)
    assert "revision 6" in outcome.reason and "at 4" in outcome.reason
    assert sources.running.revision == 4 and len(published.snapshots) == 1


def test_an_invalid_document_is_refused_whole() -> None:
    published = Published()
    sources = PolicySources(published)
    sources.receive([SnapshotMessage(revision=1, policies=[doc("a")])])
    bad = doc("b")
    bad["spec"]["endpoints"] = [{"address": "not-an-ip"}]
    both = [PolicyChange(name="a", policy=None), PolicyChange(name="b", policy=bad)]
    (outcome,) = sources.receive([Delta(since=1, revision=2, changes=both)])
    assert isinstance(outcome, Refused) and "spec.endpoints[0].address" in outcome.reason
    assert set(sources.running.policies) == {"a"} and sources.running.revision == 1


def test_an_empty_delta_at_the_current_revision_is_harmless() -> None:
    sources = PolicySources(Published())
    sources.receive([SnapshotMessage(revision=3, policies=[doc("a")])])
    assert sources.receive([Delta(since=3, revision=3, changes=[])]) == [Applied(3)]


# -- the state folder -----------------------------------------------------------------------


def test_state_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = StateDir(tmp_path / "state")
    folder.ensure()
    assert folder.load() is None
    state = apply_update(AppliedState.empty(), SnapshotMessage(revision=12, policies=[doc("a")]))
    folder.save(state)
    loaded = folder.load()
    assert loaded is not None and loaded.revision == 12 and set(loaded.policies) == {"a"}
    assert sorted(p.name for p in folder.path.iterdir()) == ["state.json"]
    assert (folder.path.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"type": "snapshot", "revision": 1}', json.dumps({"x": 1}).encode()],
)
def test_a_corrupt_state_file_is_logged_and_ignored(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    folder = StateDir(tmp_path)
    folder.state_file.write_bytes(content)
    with caplog.at_level(logging.ERROR):
        assert folder.load() is None
    assert any(r.getMessage() == "sync.state_corrupt" for r in caplog.records)


def test_an_unreadable_state_file_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = StateDir(tmp_path)
    folder.state_file.mkdir()  # reading a folder fails with an OSError for any user
    with caplog.at_level(logging.ERROR):
        assert folder.load() is None
    assert any(r.getMessage() == "sync.state_unreadable" for r in caplog.records)


def test_the_agent_id_is_minted_once_and_kept(tmp_path: Path) -> None:
    first = StateDir(tmp_path).agent_id()
    assert first.startswith("agent-") and StateDir(tmp_path).agent_id() == first
    (tmp_path / "agent-id").write_text("node-7-agent\n")
    assert StateDir(tmp_path).agent_id() == "node-7-agent"


def test_write_atomically_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["f"]


def test_an_unusable_state_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="state folder"):
        StateDir(tmp_path / "file" / "state").ensure()


# -- backoff and settings -------------------------------------------------------------------


def test_retry_after_is_read_in_seconds_and_bounded() -> None:
    assert parse_retry_after("1") == 1.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("86400") == 60.0 and parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None


def test_backoff_is_equal_jitter_within_a_doubling_capped_window() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        window = min(10.0, 0.4 * 2**attempt)
        delays = [backoff_delay(attempt, 0.4, 10.0, rng) for _ in range(200)]
        assert all(window / 2 <= d <= window for d in delays)
        assert max(delays) > window * 0.9 and min(delays) < window * 0.6  # spread, not fixed
    # The first retry comes quickly, but not in the instant of the close.
    first = [backoff_delay(0, 0.4, 10.0, rng) for _ in range(200)]
    assert min(first) >= 0.2 and max(first) <= 0.4
    assert backoff_delay(10_000, 0.4, 10.0, rng) <= 10.0
    # While connects are refused the window stops at the refused cap.
    assert all(0.5 <= backoff_delay(20, 0.4, 1.0, rng) <= 1.0 for _ in range(200))


@pytest.mark.parametrize(
    ("given", "ws", "http"),
    [
        ("http://127.0.0.1:8053", "ws://127.0.0.1:8053/v1/agents/stream", "http://127.0.0.1:8053"),
        ("https://ctl.example/", "wss://ctl.example/v1/agents/stream", "https://ctl.example"),
        ("http://[::1]:80/mesh", "ws://[::1]:80/mesh/v1/agents/stream", "http://[::1]:80/mesh"),
        ("wss://c:1/v1/agents/stream", "wss://c:1/v1/agents/stream", "https://c:1"),
    ],
)
def test_controller_urls(given: str, ws: str, http: str) -> None:
    assert stream_url(given) == ws and http_url(given) == http


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sync_arguments(parser)
    return parser.parse_args(argv)


def test_sync_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sync_config_from_args(parse()) is None
    token = tmp_path / "token"
    token.write_text("dnsm_secret\n")
    config = sync_config_from_args(
        parse(
            "--controller=http://127.0.0.1:1",
            f"--token-file={token}",
            "--label=zone=a",
            "--label",
            "rack=7",
            "--node-name=n1",
            f"--state-dir={tmp_path}",
            "--sync=http",
        )
    )
    assert config is not None and config.token == "dnsm_secret" and config.mode == "http"
    assert config.labels == {"zone": "a", "rack": "7"} and config.node_name == "n1"
    assert (config.backoff_base, config.backoff_cap, config.refused_cap) == (0.4, 10.0, 1.0)
    with pytest.raises(ConfigError, match="--token"):
        monkeypatch.delenv("DNSMESH_AGENT_TOKEN", raising=False)
        sync_config_from_args(parse("--controller=http://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="not an http"):
        sync_config_from_args(parse("--controller=ftp://x", "--token=t"))
    with pytest.raises(ConfigError, match="positive"):
        sync_config_from_args(parse("--controller=http://x", "--token=t", "--sync-backoff-cap=0"))
    with pytest.raises(ConfigError, match="positive"):
        sync_config_from_args(parse("--controller=http://x", "--token=t", "--sync-refused-cap=0"))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_labels(["novalue"])


def test_several_controllers_rotate_on_reconnect() -> None:
    config = sync_config_from_args(
        parse("--controller=http://a:1,http://b:1", "--controller", "http://c:1", "--token=t")
    )
    assert config is not None and config.controller == "http://a:1"
    assert config.controllers == ("http://a:1", "http://b:1", "http://c:1")
    seen = []
    for _ in range(4):
        config = config.next_controller()
        seen.append(config.controller)
    assert seen == ["http://b:1", "http://c:1", "http://a:1", "http://b:1"]
    single = sync_config_from_args(parse("--controller=http://a:1", "--token=t"))
    assert single is not None and single.next_controller().controller == "http://a:1"
    with pytest.raises(ConfigError, match="not an http"):
        sync_config_from_args(parse("--controller=http://a:1,ftp://b", "--token=t"))
    with pytest.raises(ConfigError, match="no URL"):
        sync_config_from_args(parse("--controller= , ", "--token=t"))
