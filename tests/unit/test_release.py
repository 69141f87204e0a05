"""agent/release.py: what a swap replaced is freed in the release thread, never while shared."""

from __future__ import annotations

import threading
import time
import weakref
from typing import ClassVar

from agent.release import release
from dnsmesh.snapshot import Snapshot


class Marker:
    """An object whose end (and the thread it ends in) the test can see."""

    ended_in: ClassVar[list[str]] = []

    def __del__(self) -> None:
        Marker.ended_in.append(threading.current_thread().name)


def _wait(condition: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.01)
    return False


def test_a_released_snapshot_is_freed_in_the_release_thread() -> None:
    Marker.ended_in.clear()
    entries: dict[str, object] = {f"p{i}": object() for i in range(10_000)}
    entries["marker"] = Marker()
    snapshot = Snapshot(1, {}, {}, (), entries)  # type: ignore[arg-type]
    del entries
    release(snapshot)
    del snapshot
    assert _wait(lambda: Marker.ended_in == ["dnsmesh-release"]), Marker.ended_in


def test_a_dict_still_held_elsewhere_is_left_whole_until_it_is_let_go() -> None:
    Marker.ended_in.clear()
    kept: dict[str, object] = {"a": Marker(), "b": Marker()}
    probe = weakref.ref(kept["a"])
    release(Snapshot(2, {}, {}, (), kept))  # type: ignore[arg-type]
    time.sleep(0.2)  # the release thread looked at it several times meanwhile
    assert set(kept) == {"a", "b"} and probe() is not None
    del kept  # the release thread was the other holder: it frees them
    assert _wait(lambda: probe() is None)
    assert _wait(lambda: Marker.ended_in == ["dnsmesh-release"] * 2), Marker.ended_in


def test_a_released_list_is_emptied_in_the_release_thread() -> None:
    Marker.ended_in.clear()
    items: list[object] = [object() for _ in range(5_000)]
    items.append(Marker())
    release(items)
    del items
    assert _wait(lambda: Marker.ended_in == ["dnsmesh-release"]), Marker.ended_in
