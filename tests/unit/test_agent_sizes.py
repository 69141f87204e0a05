"""--udp-rcvbuf sizes: bytes, KiB and MiB, and a clear error for anything else."""

from __future__ import annotations

import pytest

from agent.config import config_from_args, parse_size
from cli.main import build_parser
from dnsmesh.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("4194304", 4194304), ("512KiB", 524288), ("4MiB", 4194304), (" 2 m ", 2097152)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "4GB", "1.5MiB", "MiB", "4 MiB x"])
def test_bad_sizes_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a size"):
        parse_size(text)


def test_a_receive_buffer_beyond_1_gib_is_refused() -> None:
    args = build_parser().parse_args(["agent", "--udp-rcvbuf", "2048MiB"])
    with pytest.raises(ConfigError, match="--udp-rcvbuf must be at most 1GiB"):
        config_from_args(args)
    args = build_parser().parse_args(["agent", "--udp-rcvbuf", "1MiB"])
    assert config_from_args(args).udp_rcvbuf == 1024 * 1024
