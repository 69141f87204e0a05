"""The agent's path to its first answer imports none of the heavy packages (issue 14).

What ``dnsmesh agent --controller ...`` imports before it answers from its state file: the
command's parsers (every subcommand's), the agent, the controlled agent and the state
file. httpx (DoH, HTTP probes, the sync client), cryptography (the agent's certificate),
websockets (the sync channel), prometheus_client (the admin listener) and yaml (policy
files) come later, when the part that needs them starts. Each test runs a fresh
interpreter, since this one has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("httpx", "cryptography", "websockets", "prometheus_client", "yaml", "h2", "h11")

_PROBE = """
import json, sys
from cli.main import build_parser
parser = build_parser()
args = parser.parse_args(sys.argv[1:])
import agent.app, agent.sync.controlled_agent, agent.sync.state_file
from agent.config import config_from_args
from agent.sync.config import sync_config_from_args
config_from_args(args)
sync_config_from_args(args)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def imported_by_start(*argv: str) -> set[str]:
    """The top-level packages imported once the agent's command line is parsed and its
    start path imported."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout))


@pytest.fixture(scope="module")
def controlled_start(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """One fresh interpreter for every package checked: each start costs seconds here."""
    return imported_by_start(
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:53",
        "--controller",
        "https://127.0.0.1:1",
        "--token",
        "t",
        "--state-dir",
        str(tmp_path_factory.mktemp("state")),
    )


@pytest.mark.parametrize("heavy", HEAVY)
def test_a_controlled_agent_starts_without_the_heavy_packages(
    heavy: str, controlled_start: set[str]
) -> None:
    assert "agent" in controlled_start  # the probe did import the agent
    assert heavy not in controlled_start
