"""The DNS-over-TCP length framing, without sockets."""

from __future__ import annotations

import pytest

from dnsmesh.tcpframing import MAX_MESSAGE, FrameDecoder, frame


def test_frame_prefixes_the_length() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"") == b"\x00\x00"


def test_a_message_over_the_two_byte_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="65535"):
        frame(b"x" * (MAX_MESSAGE + 1))


def test_bytes_arriving_one_at_a_time_make_whole_messages_only() -> None:
    stream = frame(b"first") + frame(b"") + frame(b"second")
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        while (message := decoder.next_message()) is not None:
            out.append(message)
    assert out == [b"first", b"", b"second"]
    assert len(decoder) == 0


def test_messages_stay_buffered_until_asked_for() -> None:
    decoder = FrameDecoder()
    decoder.feed(frame(b"a") + frame(b"bb") + b"\x00\x05par")
    assert decoder.next_message() == b"a"
    assert len(decoder) == 4 + 5  # "bb" framed, and the partial message so far
    assert decoder.next_message() == b"bb"
    assert decoder.next_message() is None  # "par" of 5 bytes: wait for more
    decoder.feed(b"ts")
    assert decoder.next_message() == b"parts"
