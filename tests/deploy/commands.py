"""What the deploy files run, checked by the real ``dnsmesh`` parser.

Containers run dnsmesh either as their command (``[controller, --tls, ...]`` after the
``dnsmesh`` or ``dnsmesh-netcaps`` entry point) or inside a shell script; both end here as
an argv that ``cli.main.build_parser()`` must accept, exactly as the program would.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Iterator, Sequence

from cli.main import build_parser

DNSMESH_ENTRY_POINTS = {"dnsmesh", "dnsmesh-netcaps"}

_SHELL_SEPARATORS = {"&&", "||", ";", "|"}
_REDIRECTIONS = re.compile(r"^\d*[<>]")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (after ``dnsmesh``) with the real parser; AssertionError naming the
    argv and argparse's message when it is refused."""
    parser = build_parser()
    argv = list(argv)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv)
    except SystemExit:
        raise AssertionError(f"dnsmesh {shlex.join(argv)}: {stderr.getvalue().strip()}") from None


def shell_invocations(script: str) -> Iterator[list[str]]:
    """Every ``dnsmesh`` command line in a POSIX shell script, as its argv after
    ``dnsmesh`` (leading ``VAR=value`` assignments and ``exec`` dropped, redirections cut)."""
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, ";"]:
            if word in _SHELL_SEPARATORS:
                argv = _dnsmesh_argv(command)
                if argv is not None:
                    yield argv
                command = []
            else:
                command.append(word)


def _dnsmesh_argv(words: list[str]) -> list[str] | None:
    while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] == "exec"):
        words = words[1:]
    if not words or words[0] not in DNSMESH_ENTRY_POINTS:
        return None
    argv = []
    for word in words[1:]:
        if _REDIRECTIONS.match(word):
            break
        argv.append(word)
    return argv
