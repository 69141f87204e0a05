"""``dnsmesh endpoint drain|undrain``: an operator's override of an endpoint, over the API."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO


def add_endpoint_command(
    subcommands: argparse._SubParsersAction[Any], client: argparse.ArgumentParser
) -> None:
    endpoint = subcommands.add_parser(
        "endpoint",
        help="drain an endpoint (take it out of service) or undrain it",
        description="Drain or undrain an endpoint address: every agent stops (or starts "
        "again) handing it out, whatever its health. A drain that would leave a policy with "
        "less in service than its spec.safety asks is refused (exit 1) unless --force.",
    )
    actions = endpoint.add_subparsers(dest="action", required=True, metavar="ACTION")
    drain = actions.add_parser("drain", parents=[client], help="take ADDRESS out of service")
    drain.add_argument("address", metavar="ADDRESS")
    drain.add_argument("--policy", metavar="NAME", help="only in this policy (default: in all)")
    drain.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="undrain by itself after this long (30s, 10m, 2h; default: until undrained)",
    )
    drain.add_argument(
        "--force", action="store_true", help="drain even past a policy's safety rules"
    )
    drain.set_defaults(run=run_drain)
    undrain = actions.add_parser("undrain", parents=[client], help="put ADDRESS back")
    undrain.add_argument("address", metavar="ADDRESS")
    undrain.add_argument("--policy", metavar="NAME", help="the drain of this policy only")
    undrain.set_defaults(run=run_undrain)


def run_drain(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        body = client.drain(args.address, args.policy, args.duration, force=args.force)
    drain = body["drain"]
    where = f"in policy {drain['policy']}" if drain["policy"] else "in every policy"
    until = f" until {drain['until']}" if drain["until"] else ""
    if body["revision"] is None:
        print(f"endpoint/{drain['address']} already drained {where}{until}", file=out)
        return 0
    print(
        f"endpoint/{drain['address']} drained {where}{until} (revision {body['revision']})",
        file=out,
    )
    for message in body["forced_past"]:
        print(f"warning: forced past a safety rule: {message}", file=sys.stderr)
    return 0


def run_undrain(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        revision = client.undrain(args.address, args.policy)
    where = f"in policy {args.policy}" if args.policy else "in every policy"
    print(f"endpoint/{args.address} undrained {where} (revision {revision})", file=out)
    return 0
