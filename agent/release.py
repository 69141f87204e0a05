"""Freeing the structures a swap replaced, off the event loop and in small pieces.

A snapshot of 100,000 policies holds dicts of 100,000 entries; the one a swap replaces is
freed when its last reference goes, and freeing such a dict is one C call of milliseconds
that no thread switch can interrupt. Dropped on the loop, that is a stall of every query in
flight at each change. So the swap hands what it replaced to ``release``: a daemon thread
drops it there, and a dict or list that only it still references is emptied a slice at a time
(the loop can take the GIL between two slices, 1 ms apart at most: agent/app.py sets the
switch interval).
"""

from __future__ import annotations

import queue
import sys
import threading
from dataclasses import fields, is_dataclass

SLICE = 2048  # entries dropped per step: well under a millisecond
Big = dict[object, object] | list[object]

_pending: queue.SimpleQueue[object] = queue.SimpleQueue()
_started = threading.Lock()
_thread: threading.Thread | None = None


def release(*objects: object) -> None:
    """Let go of ``objects`` in the release thread (started on first use)."""
    global _thread
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_run, name="dnsmesh-release", daemon=True)
            _thread.start()
    for item in objects:
        _pending.put(item)


def _run() -> None:
    held: list[Big] = []
    while True:
        try:
            # While something else still holds a dict, look again every 50 ms.
            item = _pending.get(timeout=0.05 if held else None)
        except queue.Empty:
            pass
        else:
            held += _dicts_of(item)
            del item
        held = _free_unshared(held)


def _dicts_of(item: object) -> list[Big]:
    """The dicts and lists ``item`` is or holds: a frozen dataclass (a Snapshot, an
    AppliedState) would be freed whole in one call, so they are taken out to be freed apart."""
    if isinstance(item, dict | list):
        return [item]
    if is_dataclass(item):
        return [v for f in fields(item) if isinstance(v := getattr(item, f.name), dict | list)]
    return []


def _free_unshared(held: list[Big]) -> list[Big]:
    """Empties, a slice at a time, each dict that nobody else references; the others are
    kept until their other holders let go (a reference the loop drops then costs it a
    decrement, not the free)."""
    kept = []
    while held:
        part = held.pop()
        # This frame alone holds it (and getrefcount's argument): nobody else can see it
        # being emptied, so emptying it is the same as freeing it, in pieces.
        if sys.getrefcount(part) == 2:
            while part:
                if isinstance(part, list):
                    del part[-SLICE:]
                else:
                    for _ in range(min(SLICE, len(part))):
                        part.popitem()
        else:
            kept.append(part)
        del part
    return kept
