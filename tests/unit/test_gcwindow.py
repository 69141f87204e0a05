"""A snapshot build runs without the cyclic collector and leaves what it built frozen."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.gcwindow import FREEZE_AFTER, build_without_collection
from dnsmesh.policyfile import ParsedFiles, load_policy_path
from dnsmesh.protocol import AppliedState, Delta, PolicyChange, SnapshotMessage, apply_update
from dnsmesh.snapshot import compile_snapshot

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # what the tests froze goes back to the collector
    (gc.enable if enabled else gc.disable)()


def test_a_big_build_runs_with_collection_off_and_its_objects_end_frozen() -> None:
    gc.enable()

    def build() -> list[dict[str, int]]:
        assert not gc.isenabled()
        return [{"i": i} for i in range(FREEZE_AFTER)]

    built = build_without_collection(build)
    assert gc.isenabled()
    # Frozen: in no generation the collector scans (counting frozen objects would not do:
    # other threads free frozen objects meanwhile).
    scanned = {id(item) for g in range(3) for item in gc.get_objects(generation=g)}
    assert id(built) not in scanned
    assert not any(id(item) in scanned for item in built)


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_a_small_build_is_left_to_the_collector_so_nothing_is_kept_for_good() -> None:
    # A freeze keeps the cyclic garbage of the moment for good: not for a small build.
    gc.enable()
    gc.collect()
    probe: list[weakref.ref[Cycle]] = []

    def build() -> list[int]:
        probe.append(weakref.ref(Cycle()))  # cyclic garbage, as a timed-out forward leaves
        return [1, 2, 3]

    build_without_collection(build)
    assert probe[0]() is not None  # only the collector can free it...
    gc.collect()
    assert probe[0]() is None  # ...and it still can


def test_collection_comes_back_only_when_the_last_of_two_concurrent_builds_ends() -> None:
    gc.enable()
    first_running, second_done = threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        first_running.set()
        assert second_done.wait(10)
        seen.append(gc.isenabled())  # the second build ended: still off, this one runs

    worker = threading.Thread(target=build_without_collection, args=(first,))
    worker.start()
    assert first_running.wait(10)
    build_without_collection(lambda: None)
    second_done.set()
    worker.join(10)
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    build_without_collection(lambda: None)
    assert not gc.isenabled()


class Held:
    """Something a failing build holds in a local."""


def test_a_refused_build_is_raised_with_its_frames_cleared_so_it_can_be_freed() -> None:
    gc.enable()
    probe: list[weakref.ref[Held]] = []

    def failing() -> None:
        held = Held()
        probe.append(weakref.ref(held))
        try:
            raise ValueError("bad policy")
        except ValueError as exc:
            kept = exc  # a cycle: the frame holds the exception that holds the frame
            raise RuntimeError("refused") from kept

    with pytest.raises(RuntimeError) as caught:
        build_without_collection(failing)
    assert gc.isenabled()
    assert probe[0]() is None  # the failing frame's locals are gone already
    del caught


def _cyclic_garbage_of(build: object) -> int:
    """How many objects only the cyclic collector could free once ``build()``'s result goes."""
    gc.collect()
    gc.disable()
    result = build()  # type: ignore[operator]
    del result
    return gc.collect()


def test_parsed_and_compiled_policies_hold_no_cycles() -> None:
    # The freeze is only free of leaks if a replaced snapshot dies by reference count.
    def files() -> object:
        loaded = load_policy_path(EXAMPLES, ParsedFiles())
        first = compile_snapshot([s.policy for s in loaded], 1)
        return compile_snapshot([s.policy for s in loaded], 2, previous=first)

    assert _cyclic_garbage_of(files) == 0


def test_controller_updates_hold_no_cycles() -> None:
    def doc(name: str, address: str) -> dict[str, object]:
        return {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": name},
            "spec": {"domain": f"{name}.mesh.test", "endpoints": [{"address": address}]},
        }

    def updates() -> object:
        state = apply_update(
            AppliedState.empty(),
            SnapshotMessage(revision=1, policies=[doc(f"p{i}", f"10.0.0.{i}") for i in range(50)]),
        )
        changes = [
            PolicyChange(name="p1", policy=doc("p1", "10.0.1.1")),
            PolicyChange(name="p2", policy=None),
        ]
        state = apply_update(state, Delta(revision=2, since=1, changes=changes))
        return compile_snapshot(list(state.policies.values()), state.revision)

    assert _cyclic_garbage_of(updates) == 0
