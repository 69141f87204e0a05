"""The ``dnsmesh`` parser: ``--version``, and every option's default shown in ``--help``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from cli.main import build_parser, main

_FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)


def _parsers(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("dnsmesh ") and out.split()[1][0].isdigit()


def test_every_option_with_a_default_shows_it_in_help() -> None:
    missing = []
    for path, parser in _parsers(build_parser(), "dnsmesh"):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, _FLAGS):
                continue
            if action.required or action.default in (None, [], argparse.SUPPRESS):
                continue  # nothing to show: the help says what happens without it
            shown = formatter._expand_help(action) if action.help else ""
            if "default" not in shown:
                missing.append(f"{path} {action.option_strings[0]}")
    assert missing == []


def test_the_rendered_help_carries_the_defaults() -> None:
    parsers = dict(_parsers(build_parser(), "dnsmesh"))
    rendered = parsers["dnsmesh get"].format_help()
    assert "(default: table)" in rendered and "(default: info)" in rendered
    assert "(default: None)" not in "".join(p.format_help() for p in parsers.values())
