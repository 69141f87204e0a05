"""The controller's subcommands: controller, db upgrade, token create (apply, get, delete: client).

Each handler imports its heavy modules only when it runs. To add a subcommand, add a
parser in ``add_controller_commands`` with ``parents=[common]`` and ``set_defaults(run=fn)``.
"""

from __future__ import annotations

import argparse
from typing import Any

_DATABASE_HELP = (
    "database URL: postgresql://USER@HOST:PORT/DB or sqlite:///PATH "
    "(default: $DNSMESH_DATABASE_URL, else sqlite:///dnsmesh.db in the working folder)"
)


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", metavar="URL", help=_DATABASE_HELP)


def add_controller_commands(
    subcommands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    controller = subcommands.add_parser(
        "controller", parents=[common], help="run the controller (REST API over the policy store)"
    )
    controller.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:8053",
        help="address for the HTTP API (default 127.0.0.1:8053; port 0 picks a free one)",
    )
    add_database_argument(controller)
    controller.add_argument(
        "--migrate",
        action="store_true",
        help="migrate the database to the current schema before starting",
    )
    controller.add_argument(
        "--max-body",
        metavar="BYTES",
        type=int,
        help="refuse request bodies larger than this with 413, before reading them "
        "(default 1048576, 1 MiB; a policy with 1,024 endpoints is under 200 KiB)",
    )
    push = controller.add_argument_group("push to agents")
    push.add_argument(
        "--ping-interval",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="WebSocket ping period; an agent silent for about two is dropped (default 5)",
    )
    push.add_argument(
        "--change-retention",
        metavar="REVISIONS",
        type=int,
        default=10_000,
        help="keep the change log for this many revisions (agents further behind get a "
        "snapshot); 0 keeps it all (default 10000)",
    )
    push.add_argument(
        "--catch-up-interval",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="read the revision this often even without a notification (default 1)",
    )
    push.add_argument(
        "--ws-deflate",
        action="store_true",
        help="offer permessage-deflate to agents (smaller snapshots, ~40 KiB more per agent)",
    )
    push.add_argument(
        "--replica-id",
        metavar="ID",
        help="this replica's name in the agents table (default: host-pid-random)",
    )
    health = controller.add_argument_group("endpoint health (agents' probe reports)")
    health.add_argument(
        "--quorum-min-agents",
        metavar="N",
        type=int,
        default=2,
        help="mark an endpoint down for every agent only when at least N agents report on "
        "it and a majority of them see it failing (default 2)",
    )
    health.add_argument(
        "--quorum-fail-loss",
        metavar="RATIO",
        type=float,
        default=0.5,
        help="a report with at least this loss counts as failing (default 0.5)",
    )
    health.add_argument(
        "--quorum-recover-loss",
        metavar="RATIO",
        type=float,
        default=0.2,
        help="a down endpoint counts as failing while loss stays above this (default 0.2)",
    )
    health.add_argument(
        "--report-stale-after",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="reports older than this do not count (default 30)",
    )
    health.add_argument(
        "--report-retention",
        metavar="SECONDS",
        type=float,
        default=3600.0,
        help="keep the history of reports this long; 0 keeps only the latest (default 3600)",
    )
    controller.set_defaults(run=_run_controller)

    db = subcommands.add_parser("db", parents=[common], help="manage the controller database")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    upgrade = db_commands.add_parser(
        "upgrade", parents=[common], help="migrate the database to the current schema"
    )
    add_database_argument(upgrade)
    upgrade.set_defaults(run=_run_db_upgrade)

    token = subcommands.add_parser("token", parents=[common], help="manage API tokens")
    token_commands = token.add_subparsers(
        dest="token_command", required=True, metavar="TOKEN_COMMAND"
    )
    create = token_commands.add_parser(
        "create",
        parents=[common],
        help="mint a token straight in the database (for bootstrapping); prints it once",
    )
    add_database_argument(create)
    create.add_argument("--role", required=True, choices=["admin", "editor", "viewer", "agent"])
    create.add_argument("--name", required=True, help="the token's name (shown in the audit log)")
    create.set_defaults(run=_run_token_create)


def _run_controller(args: argparse.Namespace) -> int:
    from controller.server import run_controller

    return run_controller(args)


def _run_db_upgrade(args: argparse.Namespace) -> int:
    from controller.server import run_db_upgrade

    return run_db_upgrade(args)


def _run_token_create(args: argparse.Namespace) -> int:
    from controller.server import run_token_create

    return run_token_create(args)
