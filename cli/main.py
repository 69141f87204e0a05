"""The ``dnsmesh`` command: one entry point whose subcommands live with the part they drive.

Each part registers its own subcommands (``agent.cli``, ``controller.cli``, and this
package's client and ``up``); a subcommand imports its heavy modules only when it runs, so
``dnsmesh --help`` stays quick. The entry point lives here, outside the core ``dnsmesh``
package, so that the core imports neither the agent nor the controller.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dnsmesh.errors import DnsmeshError
from dnsmesh.logs import configure_logging

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top, so that importing this module stays cheap.
    from agent.cli import add_agent_commands
    from cli.commands import add_client_commands
    from cli.up import add_up_command
    from controller.cli import add_controller_commands

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    common.add_argument("--log-format", default="text", choices=["text", "json"])

    parser = argparse.ArgumentParser(
        prog="dnsmesh", description="A DNS-based service mesh: controller, agent and client."
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_agent_commands(subcommands, common)
    add_controller_commands(subcommands, common)
    add_client_commands(subcommands, common)
    add_up_command(subcommands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    run: Command = args.run
    try:
        return run(args)
    except DnsmeshError as exc:
        print(f"dnsmesh {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
