"""The controller's subcommands: controller, db upgrade, token create|list|revoke, ca export.

Each handler imports its heavy modules only when it runs. To add a subcommand, add a
parser in ``add_controller_commands`` with ``parents=[common]`` and ``set_defaults(run=fn)``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_TRUST_DOMAIN = "dnsmesh.internal"  # controller/ca.py holds the same; kept light here

_DATABASE_HELP = (
    "database URL: postgresql://USER@HOST:PORT/DB or sqlite:///PATH "
    "(default: $DNSMESH_DATABASE_URL, else sqlite:///dnsmesh.db in the working folder)"
)


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", metavar="URL", help=_DATABASE_HELP)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group(
        "TLS",
        "with --tls the API and the agents' stream are HTTPS and WSS. The CA and the serving "
        "certificate live in DATA_DIR/tls/ (made on the first start, reused later; the serving "
        "certificate is renewed 30 days before it expires or when its names change). Clients "
        "trust DATA_DIR/tls/ca-bundle.pem (dnsmesh ca export).",
    )
    tls.add_argument("--tls", action="store_true", help="serve HTTPS and WSS")
    tls.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        default=Path(".dnsmesh"),
        help="where the TLS files are kept (DIR/tls/, mode 0700)",
    )
    tls.add_argument(
        "--tls-san",
        metavar="NAME",
        action="append",
        default=[],
        help="another DNS name or IP address for the serving certificate (repeatable; "
        "localhost, 127.0.0.1, ::1 and the host name are always in it)",
    )
    tls.add_argument(
        "--ca-cert",
        metavar="FILE",
        type=Path,
        help="sign with your CA instead of one made here: its PEM certificate, followed by "
        "the chain up to your root when it is an intermediate (all of it is served)",
    )
    tls.add_argument("--ca-key", metavar="FILE", type=Path, help="the --ca-cert's private key")
    tls.add_argument(
        "--require-agent-mtls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse agents that show no client certificate on the agent routes (the "
        "stream, polling, reports); operators' tokens are not affected (default: on with "
        "--tls)",
    )
    tls.add_argument(
        "--agent-cert-ttl",
        metavar="DURATION",
        default="24h",
        help="lifetime of the certificates issued to agents (they renew at half of it): "
        "90s, 30m, 24h, 7d; at most 30d",
    )
    tls.add_argument(
        "--trust-domain",
        metavar="NAME",
        default=DEFAULT_TRUST_DOMAIN,
        help="the SPIFFE trust domain of the CA made here (agent identities will be "
        "spiffe://NAME/...)",
    )


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
    controller.add_argument(
        "--metrics-token",
        metavar="TOKEN",
        default=os.environ.get("DNSMESH_METRICS_TOKEN") or None,
        help="GET /metrics then needs Authorization: Bearer TOKEN (default: "
        "$DNSMESH_METRICS_TOKEN; without either, /metrics is readable without a token)",
    )
    add_tls_arguments(controller)
    push = controller.add_argument_group("push to agents")
    push.add_argument(
        "--ping-interval",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="WebSocket ping period, longer past 1,000 agents (about 200 pings/s at most); "
        "an agent silent for about two is dropped (default 5)",
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
    health.add_argument(
        "--report-history-window",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="history keeps one report per agent and endpoint per window (its probes summed), "
        "and every change of state (default 30; 0: every report)",
    )
    health.add_argument(
        "--probes-per-endpoint",
        metavar="N",
        type=int,
        default=3,
        help="coordinated probing: N connected agents probe each endpoint, spread across "
        "zones (a policy may set spec.health.probes_per_endpoint); 0: every agent (default 3)",
    )
    health.add_argument(
        "--probe-spread-label",
        metavar="LABEL",
        default="zone",
        help="the agent label whose value is its zone, to spread probers across "
        "(default zone; agents without it are one zone)",
    )
    health.add_argument(
        "--probe-reassign-delay",
        metavar="SECONDS",
        type=float,
        default=2.0,
        help="a change of who probes what waits this long, so a storm of connects is one "
        "revision (default 2)",
    )
    share = controller.add_argument_group("served share (agents' answer counts)")
    share.add_argument(
        "--share-drift-threshold",
        metavar="RATIO",
        type=float,
        default=0.1,
        help="flag a policy whose served share is farther than this from its weights "
        "(total variation distance, 0-1; default 0.1)",
    )
    share.add_argument(
        "--share-min-answers",
        metavar="N",
        type=int,
        default=200,
        help="flag only over at least N answers in the window (default 200)",
    )
    scale = controller.add_argument_group("demand-driven slices (spec.slices[].scale)")
    scale.add_argument(
        "--scale-window",
        metavar="SECONDS",
        type=float,
        default=60.0,
        help="a slice's query rate is measured over this long (default 60)",
    )
    scale.add_argument(
        "--scale-hold",
        metavar="SECONDS",
        type=float,
        default=300.0,
        help="a slice scales down only after its rate was this long below the bar, and "
        "this long after its last change (default 300)",
    )
    scale.add_argument(
        "--scale-step-up",
        metavar="N",
        type=int,
        default=2,
        help="endpoints a slice gains at most per decision (default 2)",
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
    create.add_argument(
        "--name",
        help="the token's name (shown in the audit log); required but for --join, which "
        "makes one up",
    )
    create.add_argument(
        "--ttl",
        metavar="DURATION",
        help="the token expires this long after now: 90s, 30m, 1h, 7d, 2w "
        "(default: valid until revoked; 1h for --join)",
    )
    create.add_argument(
        "--join",
        action="store_true",
        help="a one-time join token (role agent): a new agent started with --join-token "
        "trades it for its certificate, once",
    )
    create.add_argument(
        "--node",
        metavar="NAME",
        help="with --join: the only node name the token may join as",
    )
    create.set_defaults(run=_run_token_create)
    listing = token_commands.add_parser(
        "list",
        parents=[common],
        help="show the tokens (name, role, prefix, created, expires); never their secrets",
    )
    add_database_argument(listing)
    listing.set_defaults(run=_run_token_list)
    revoke = token_commands.add_parser(
        "revoke", parents=[common], help="delete a token: it is refused from now on"
    )
    add_database_argument(revoke)
    revoke.add_argument("name", metavar="NAME", help="the token's name (dnsmesh token list)")
    revoke.set_defaults(run=_run_token_revoke)

    ca = subcommands.add_parser("ca", parents=[common], help="the controller's TLS CA")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True, metavar="CA_COMMAND")
    export = ca_commands.add_parser(
        "export",
        parents=[common],
        help="print the CA bundle that clients trust (for --ca-file / $DNSMESH_CA_FILE)",
        description="Print the CA bundle of a controller started with --tls: from its data "
        "folder (--data-dir), or from GET /v1/ca (--server). Over https without --ca-file "
        "there is nothing to check the answer against yet: the bundle is taken only if the "
        "server's own certificate verifies with it, and its SHA-256 fingerprint is printed "
        "on stderr to compare with `dnsmesh ca export --data-dir` on the controller's host.",
    )
    source = export.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        help="the controller's data folder (default .dnsmesh when --server is not given)",
    )
    source.add_argument("--server", metavar="URL", help="a running controller's URL")
    export.add_argument(
        "--ca-file",
        metavar="FILE",
        help="with --server: a bundle to verify it with (default: $DNSMESH_CA_FILE)",
    )
    export.set_defaults(run=_run_ca_export)
    revoke_node = ca_commands.add_parser(
        "revoke",
        parents=[common],
        help="revoke every certificate of a node: its stream is closed, it is refused",
        description="Revoke every certificate issued to NODE, straight in the database (shared "
        "by every replica): its open stream is closed within a catch-up interval (at once on "
        "PostgreSQL) and its certificate is refused from then on. It can join again only "
        "with a new join token.",
    )
    add_database_argument(revoke_node)
    revoke_node.add_argument("node", metavar="NODE", help="the node name (dnsmesh ca list)")
    revoke_node.set_defaults(run=_run_ca_revoke)
    listing_certs = ca_commands.add_parser(
        "list", parents=[common], help="show the certificates issued to agents"
    )
    add_database_argument(listing_certs)
    listing_certs.add_argument("--node", metavar="NAME", help="only this node's")
    listing_certs.set_defaults(run=_run_ca_list)


def _run_controller(args: argparse.Namespace) -> int:
    from controller.server import run_controller

    return run_controller(args)


def _run_db_upgrade(args: argparse.Namespace) -> int:
    from controller.server import run_db_upgrade

    return run_db_upgrade(args)


def _run_token_create(args: argparse.Namespace) -> int:
    from controller.server import run_token_create

    return run_token_create(args)


def _run_token_list(args: argparse.Namespace) -> int:
    from controller.server import run_token_list

    return run_token_list(args)


def _run_token_revoke(args: argparse.Namespace) -> int:
    from controller.server import run_token_revoke

    return run_token_revoke(args)


def _run_ca_revoke(args: argparse.Namespace) -> int:
    from controller.server import run_ca_revoke

    return run_ca_revoke(args)


def _run_ca_list(args: argparse.Namespace) -> int:
    from controller.server import run_ca_list

    return run_ca_list(args)


def _run_ca_export(args: argparse.Namespace) -> int:
    from controller.ca_export import run_ca_export

    return run_ca_export(args)
