"""The agent's forwarding flags: budgets, --stale-answer-after and --cache-max-ttl."""

from __future__ import annotations

import argparse

import pytest

from agent.cli import add_agent_commands
from agent.config import AgentConfig, config_from_args
from dnsmesh.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_agent_commands(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    return parser.parse_args(["agent", *argv])


def test_defaults_fit_inside_a_stub_timeout() -> None:
    config = config_from_args(parse())
    assert config == AgentConfig()  # the flags' defaults are the config's
    assert config.attempt_timeout < config.query_timeout <= 1.5
    assert config.stale_answer_after == 1.8
    assert config.max_ttl == 86_400


def test_stale_timer_and_ttl_cap_are_read() -> None:
    config = config_from_args(parse("--stale-answer-after", "0.7", "--cache-max-ttl", "600"))
    assert config.stale_answer_after == 0.7 and config.max_ttl == 600


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (("--stale-answer-after", "0"), "--stale-answer-after"),
        (("--cache-max-ttl", "0"), "--cache-max-ttl"),
    ],
)
def test_bad_values_name_their_flag(argv: tuple[str, ...], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        config_from_args(parse(*argv))
