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
from typing import Any

from dnsmesh.errors import DnsmeshError
from dnsmesh.logs import configure_logging

Command = Callable[[argparse.Namespace], int]


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help line, as " (default: X)".

    Left out where there is nothing to show (no default, a flag that is off, an empty
    list) or where the help already says it (it mentions "default").
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that shows defaults; subcommands' parsers (any depth) are too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsShown)
        super().__init__(*args, **kwargs)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("dnsmesh")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class ShowVersion(argparse.Action):
    """``--version``, looked up when asked: importlib.metadata and the installed
    distribution's files cost 30 ms or more, which every command (the agent's cold start
    among them) would pay at each start for a flag it seldom gets."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        print(f"dnsmesh {version()}")  # to stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top, so that importing this module stays cheap.
    from agent.cli import add_agent_commands
    from cli.commands import add_client_commands
    from cli.logs import add_logs_command
    from cli.node.commands import add_node_commands
    from cli.up import add_up_command
    from controller.cli import add_controller_commands

    common = Parser(add_help=False)
    common.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the least severe log lines written (to stderr)",
    )
    common.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="the log lines' format"
    )

    parser = Parser(
        prog="dnsmesh", description="A DNS-based service mesh: controller, agent and client."
    )
    parser.add_argument("--version", action=ShowVersion)
    subcommands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    add_agent_commands(subcommands, common)
    add_controller_commands(subcommands, common)
    add_client_commands(subcommands, common)
    add_up_command(subcommands, common)
    add_node_commands(subcommands, common)
    add_logs_command(subcommands, common)
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
