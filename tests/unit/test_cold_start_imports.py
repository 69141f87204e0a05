"""The agent's path to its first answer imports none of the heavy packages (issue 14).

What ``dnsmesh agent --controller ...`` imports before it answers from its state file: the
command's parsers (every subcommand's), the agent, the controlled agent and the state
file. httpx (DoH, HTTP probes, the sync client), cryptography (the agent's certificate),
websockets (the sync channel), prometheus_client (the admin listener) and yaml (policy
files) come later, when the part that needs them starts; cryptography only for an agent
that speaks mTLS. Each test runs a fresh interpreter, since this one has imported everything
already. (A None in sys.modules is an import blocked on purpose, as cli/__init__.py does for
httpx's own CLI: not counted as imported.)
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
print(json.dumps(sorted({n.split(".")[0] for n, m in sys.modules.items() if m is not None})))
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


_SYNC_PROBE = """
import json, sys
import cli.main
from agent.sync.controlled_agent import _import_sync_stack
_import_sync_stack(mtls=sys.argv[1] == "mtls")
print(json.dumps(sorted({n.split(".")[0] for n, m in sys.modules.items() if m is not None})))
"""


def imported_with_sync_stack(mode: str) -> set[str]:
    """The top-level packages imported once the sync stack of a token or mTLS agent is."""
    out = subprocess.run(
        [sys.executable, "-c", _SYNC_PROBE, mode], capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout))


def test_a_token_agent_syncs_without_cryptography_or_httpx_s_own_cli() -> None:
    token = imported_with_sync_stack("token")
    assert {"httpx", "websockets"} <= token  # the probe did import the sync stack
    # cryptography is for mTLS agents; click, rich and pygments only for httpx's CLI,
    # which cli/__init__.py keeps out (click is installed here, with uvicorn).
    assert not token & {"cryptography", "click", "rich", "pygments"}


def test_an_mtls_agent_loads_cryptography_with_its_sync_stack() -> None:
    assert "cryptography" in imported_with_sync_stack("mtls")
