"""The controller's messages decoded without stalling the event loop, however big.

A snapshot of 100,000 policies is a 30 MiB message: ``decode_message`` of it on the loop
was a 0.6 s stall of every query, and in a worker thread no better, since its one C call
holds the GIL throughout. A message from ``PIECEWISE_FROM`` bytes on is decoded in a
worker thread in short calls instead (``decode_message_in_pieces``), with the cyclic
collector off meanwhile (agent/gcwindow.py): the 100,000 documents it makes would otherwise
be scanned by a collection that holds the GIL for 0.2 s. They hold no cycles and die by
reference count once applied; ``release_documents`` has them freed off the loop too
(measured: the loop's longest gap 580 ms -> 3-5 ms).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from agent.gcwindow import build_without_collection
from agent.release import release
from dnsmesh.protocol import (
    PIECEWISE_FROM,
    Delta,
    Message,
    SnapshotMessage,
    decode_message,
    decode_message_in_pieces,
)


async def decode_incoming(data: str | bytes) -> Message:
    """One message from the controller; ProtocolError names what is wrong."""
    if len(data) < PIECEWISE_FROM:
        return decode_message(data)
    return await asyncio.to_thread(build_without_collection, decode_message_in_pieces, data)


def release_documents(updates: Iterable[SnapshotMessage | Delta]) -> None:
    """Have the applied snapshots' documents freed by the release thread (agent/release.py),
    not by whoever drops the message last: freeing 100,000 at once is one call of 0.2 s."""
    release(*(u.policies for u in updates if isinstance(u, SnapshotMessage)))
