"""DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): a two-byte length before each message.

Sans-I/O: bytes go in as they arrive, whole messages come out, so the agent's TCP listener and
its upstream client share one implementation and it is tested without sockets.
"""

from __future__ import annotations

import struct

_LENGTH = struct.Struct("!H")
MAX_MESSAGE = 0xFFFF  # what a two-byte length can say


def frame(message: bytes) -> bytes:
    """``message`` with its length prefix, ready to write to a stream."""
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a DNS message over TCP is at most {MAX_MESSAGE} bytes")
    return _LENGTH.pack(len(message)) + message


class FrameDecoder:
    """Collects stream bytes and hands out whole messages, one ``next_message`` at a time, so a
    reader can stop between messages (back-pressure) and leave the rest buffered."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> bytes | None:
        """The next whole message, or None until more bytes arrive."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        (size,) = _LENGTH.unpack_from(buffer)
        end = 2 + size
        if len(buffer) < end:
            return None
        message = bytes(buffer[2:end])
        del buffer[:end]
        return message

    def __len__(self) -> int:
        """Bytes buffered and not yet handed out."""
        return len(self._buffer)
