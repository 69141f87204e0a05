"""The agent's health flags: --no-probes and --probe-report-interval."""

from __future__ import annotations

import argparse

import pytest

from agent.cli import add_agent_commands
from agent.config import config_from_args
from dnsmesh.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_commands(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    return parser.parse_args(["agent", *argv])


def test_probing_is_on_by_default_and_reports_every_five_seconds() -> None:
    config = config_from_args(parse())
    assert config.probes is True
    assert config.probe_report_interval == 5.0


def test_no_probes_and_the_report_interval() -> None:
    config = config_from_args(parse("--no-probes", "--probe-report-interval", "0.5"))
    assert config.probes is False
    assert config.probe_report_interval == 0.5


def test_report_interval_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="--probe-report-interval"):
        config_from_args(parse("--probe-report-interval", "0"))
