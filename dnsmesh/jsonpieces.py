"""A JSON object read a piece at a time: each element of its top-level arrays is one call.

``json.loads`` of a controller's snapshot of 100,000 policies (30 MiB) is one C call that
holds the GIL for a third of a second, and pydantic's ``validate_json`` as long: run in a
worker thread, it still stalls the agent's event loop for all that time. Decoding the
top-level object's members one by one, and an array member's elements one by one, with
the standard decoder's ``raw_decode``, makes the same values out of calls of microseconds,
between which the loop takes the GIL back.

Pure: text in, values out; ``ValueError`` (``json.JSONDecodeError``) for text that is not
one JSON object, where ``json.loads`` would raise it too.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def load_object(text: str) -> dict[str, Any]:
    """``json.loads(text)`` for a JSON object, decoded a member (or an element) at a time.

    The object's members, and the members and elements of the containers in it, are each
    decoded apart, and so are the elements of arrays one level further down (a snapshot's
    ``probers.endpoints``); anything deeper (one policy document) is one call.
    """
    at = _skip(text, 0)
    _expect(text, at, "{")
    out, at = _object(text, at + 1, 0)
    if _skip(text, at) != len(text):
        raise json.JSONDecodeError("Extra data", text, _skip(text, at))
    return out


def _value(text: str, at: int, depth: int) -> tuple[Any, int]:
    """The value at ``at`` (``depth`` containers deep) and the index after it."""
    if depth <= 1 and text.startswith("{", at):
        return _object(text, at + 1, depth)
    if depth <= 2 and text.startswith("[", at):
        return _array(text, at + 1, depth)
    return _DECODER.raw_decode(text, at)


def _object(text: str, at: int, depth: int) -> tuple[dict[str, Any], int]:
    """The object whose ``{`` is just before ``at``, and the index after its ``}``."""
    out: dict[str, Any] = {}
    at = _skip(text, at)
    if text.startswith("}", at):
        return out, at + 1
    while True:
        _expect(text, at, '"')
        key, at = scanstring(text, at + 1)
        at = _skip(text, at)
        _expect(text, at, ":")
        out[key], at = _value(text, _skip(text, at + 1), depth + 1)
        at = _skip(text, at)
        if text.startswith("}", at):
            return out, at + 1
        _expect(text, at, ",")
        at = _skip(text, at + 1)


def _array(text: str, at: int, depth: int) -> tuple[list[Any], int]:
    """The array whose ``[`` is just before ``at``, and the index after its ``]``."""
    items: list[Any] = []
    at = _skip(text, at)
    if text.startswith("]", at):
        return items, at + 1
    while True:
        item, at = _value(text, at, depth + 1)
        items.append(item)
        at = _skip(text, at)
        if text.startswith("]", at):
            return items, at + 1
        _expect(text, at, ",")
        at = _skip(text, at + 1)


def _skip(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _expect(text: str, at: int, char: str) -> None:
    if not text.startswith(char, at):
        raise json.JSONDecodeError(f"Expecting {char!r}", text, at)
