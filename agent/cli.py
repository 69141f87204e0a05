"""The agent's subcommands: ``dnsmesh agent``."""

from __future__ import annotations

import argparse
from typing import Any


def add_agent_commands(
    subcommands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    agent = subcommands.add_parser(
        "agent", parents=[common], help="run the node agent (a DNS resolver that applies policies)"
    )
    agent.add_argument("--policies", metavar="PATH", help="a policy YAML file or a folder of them")
    agent.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        help="address to serve DNS on, UDP and TCP (repeatable; default 127.0.0.1:53)",
    )
    agent.add_argument(
        "--upstream",
        metavar="HOST[:PORT]",
        action="append",
        help="upstream resolver (repeatable; default: the nameservers of resolv.conf)",
    )
    agent.add_argument("--resolv-conf", metavar="PATH", default="/etc/resolv.conf")
    agent.set_defaults(run=_run_agent)


def _run_agent(args: argparse.Namespace) -> int:
    from agent.app import run_agent  # type: ignore[import-not-found]  # arrives with the agent

    status: int = run_agent(args)
    return status
