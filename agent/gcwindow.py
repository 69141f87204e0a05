"""Building a snapshot in a worker thread without a garbage collection pausing the loop.

A reload or a controller revision parses and compiles in a worker thread, and everything it
builds survives: the cyclic collector sees a wave of young objects that will not die, moves
them up a generation at a time, and every few waves runs a full collection over the whole
heap. A full collection holds the GIL throughout, so the event loop answers nothing while it
runs: measured 150-210 ms per full collection in the test process (260,000 objects), and it
grows with the policies held (an agent with 100,000 policies holds millions of objects).

So the build runs with automatic collection off, and what a big build made is frozen
afterwards (``gc.freeze``, an O(1) list splice): the collector never scans the snapshot again,
and a replaced snapshot is still freed by its reference count (agent/release.py), since parsed
policies and compiled snapshots hold no reference cycles (tests/unit/test_gcwindow.py checks).
The agent's own per-query objects die by reference count, so a few seconds without the cyclic
collector cost nothing; agent/app.py already freezes what start-up built, for the same reason.

A freeze also keeps, for good, whatever cyclic garbage the loop had not collected yet (a
timed-out forward's exception, say): a few objects per freeze. Freezing on every controller
revision would make that a slow leak, so a small build (fewer than ``FREEZE_AFTER`` objects
still alive, the collector's own young-generation count) is left to the collector: scanning
that many young objects once is a pause of a few milliseconds, the price of a small change.

The one thing that may hold cycles is a refused build's exception: its traceback's frames
hold their locals, which may hold the exception. Those frames are cleared before the freeze,
so the exception is freed when the caller lets go of it.
"""

from __future__ import annotations

import gc
import threading
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# Young objects above which a build is frozen rather than scanned: a young collection of
# 50,000 objects is about 2 ms here; the build of one policy leaves a few hundred.
FREEZE_AFTER = 50_000

_lock = threading.Lock()
_builds = 0  # builds running now: the collector comes back on when the last one ends
_was_enabled = True


def build_without_collection(build: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``build(*args, **kwargs)`` with automatic collection off, and what a big one built frozen."""
    global _builds, _was_enabled
    with _lock:
        if _builds == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _builds += 1
    try:
        return build(*args, **kwargs)
    except BaseException as exc:
        _clear_frames(exc)
        raise
    finally:
        with _lock:
            _builds -= 1
            if _builds == 0:
                if gc.get_count()[0] >= FREEZE_AFTER:
                    gc.freeze()
                if _was_enabled:
                    gc.enable()


def _clear_frames(exc: BaseException | None) -> None:
    """Drops the locals of the finished frames along ``exc``'s chain (causes and contexts)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
