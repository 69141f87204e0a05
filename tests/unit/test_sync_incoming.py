"""Big controller messages are decoded in a worker thread, in pieces, to the same message."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import agent.sync.incoming as incoming
from dnsmesh import protocol
from dnsmesh.protocol import Ack, Delta, ProtocolError, SnapshotMessage, encode_message
from tests.support.policies import policy_doc


def snapshot(count: int) -> SnapshotMessage:
    docs = [policy_doc(f"p{i}", [{"address": f"10.0.{i // 256}.{i % 256}"}]) for i in range(count)]
    return SnapshotMessage(revision=7, policies=docs, mesh_id="m")


def test_a_big_message_is_decoded_off_the_loop_to_the_same_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(incoming, "PIECEWISE_FROM", 10_000)
    monkeypatch.setattr(protocol, "_UTF8_SLICE", 1000)  # several slices, split mid-character
    big, small = snapshot(300), Ack(revision=7)
    threads: list[str] = []
    decode = incoming.decode_message_in_pieces

    def spy(data: Any) -> Any:
        threads.append(threading.current_thread().name)
        return decode(data)

    monkeypatch.setattr(incoming, "decode_message_in_pieces", spy)
    text = encode_message(big).replace("p299", "p299-\u00e9\u00e9\u00e9")

    async def main() -> list[Any]:
        return [
            await incoming.decode_incoming(text.encode()),
            await incoming.decode_incoming(encode_message(small)),
        ]

    decoded = asyncio.run(main())
    assert decoded[0] == incoming.decode_message(text) and decoded[1] == small
    assert len(threads) == 1 and threads[0] != threading.main_thread().name


def test_a_big_message_that_is_not_utf8_is_a_protocol_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(incoming, "PIECEWISE_FROM", 100)
    data = encode_message(snapshot(5)).encode() + b"\xff"
    with pytest.raises(ProtocolError):
        asyncio.run(incoming.decode_incoming(data))


def test_applied_snapshots_have_their_documents_released(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[object] = []
    monkeypatch.setattr(incoming, "release", lambda *items: released.extend(items))
    big = snapshot(3)
    incoming.release_documents([big, Delta(since=7, revision=8, changes=[])])
    assert released == [big.policies]
