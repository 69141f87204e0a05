"""What every JSON body must be before any route looks at it: shallow, and text storable.

``json.loads`` recurses once per nesting level, so a body of 100,000 ``[`` raises
RecursionError (a 500) before any validation could run; the depth is checked here without
recursion, and far below the interpreter's limit so the pydantic validation and the JSON
encoding of a stored document that follow cannot recurse too deep either. No document of
ours nests deeper than about 8 levels (a policy's slice match lists).

An integer must fit in 64 bits, signed. A string may not hold NUL (PostgreSQL text and
JSONB refuse U+0000, and SQLite would store it where every reader truncates at it) or a
lone surrogate (not encodable as UTF-8), in a value or in an object key.
"""

from __future__ import annotations

from dnsmesh.errors import FieldError
from dnsmesh.policy import field_path

MAX_DEPTH = 32
# The default of ``dnsmesh controller --max-body``. The largest document we take, a policy
# with its 1,024 endpoints (each with a group of 63 characters) is under 200 KiB of JSON;
# a POST /v1/apply of 1,000 two-endpoint policies is about 400 KiB.
DEFAULT_MAX_BODY = 1024 * 1024
# Revisions and ids are BIGINT columns: a larger number would be a 500 (out of range) there.
MAX_INT = 2**63 - 1


class BodyRefused(ValueError):
    """The parsed body is unusable: too deep (``too_deep``) or a string we cannot store."""

    def __init__(self, message: str, field: FieldError, *, too_deep: bool) -> None:
        super().__init__(message)
        self.field = field
        self.too_deep = too_deep


def check_body(value: object) -> None:
    """Raises BodyRefused for the first offending place in a parsed JSON value."""
    pending: list[tuple[object, tuple[int | str, ...]]] = [(value, ())]
    while pending:
        item, path = pending.pop()
        if len(path) > MAX_DEPTH:
            raise BodyRefused(
                f"the body nests deeper than {MAX_DEPTH} levels",
                FieldError(field_path(path), f"nested deeper than {MAX_DEPTH} levels"),
                too_deep=True,
            )
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, int) and not -MAX_INT - 1 <= item <= MAX_INT:
            where = field_path(path) or "(the body)"
            problem = "must fit in a signed 64-bit integer"
            raise BodyRefused(f"{where} {problem}", FieldError(where, problem), too_deep=False)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, (*path, key))
                pending.append((child, (*path, key)))
        elif isinstance(item, list):
            pending.extend((child, (*path, index)) for index, child in enumerate(item))


def _check_text(text: str, path: tuple[int | str, ...]) -> None:
    if "\x00" in text:
        problem = "must not contain the NUL character (U+0000)"
    elif not _encodable(text):
        problem = "must be valid Unicode text (a lone surrogate such as \\ud800 is not)"
    else:
        return
    where = field_path(path) or "(the body)"
    raise BodyRefused(f"{where} {problem}", FieldError(where, problem), too_deep=False)


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
