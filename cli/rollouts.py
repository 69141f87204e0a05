"""``dnsmesh rollout status|pause|resume|promote|abort|undo NAME`` and ``switch NAME --to
GROUP``: a policy's canary or blue/green split, over the API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

COMMANDS = ("pause", "resume", "promote", "abort")


def add_rollout_command(
    subcommands: argparse._SubParsersAction[Any], client: argparse.ArgumentParser
) -> None:
    rollout = subcommands.add_parser(
        "rollout",
        help="see or steer a policy's canary rollout, or switch its blue/green split",
        # A description is not %-formatted (help strings are): a single % here.
        description="status shows where a canary stands; pause, resume, promote (100 %), "
        "abort (0 %) steer it; undo writes back the policy's previous revision; switch "
        "sets spec.split to 100 on GROUP and 0 on the others, in one revision.",
    )
    actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", parents=[client], help="where NAME's rollout stands")
    status.add_argument("name", metavar="NAME")
    status.set_defaults(run=run_status)
    for command in (*COMMANDS, "undo"):
        act = actions.add_parser(command, parents=[client], help=f"{command} NAME's rollout")
        act.add_argument("name", metavar="NAME")
        act.set_defaults(run=run_command, command=command)
    switch = actions.add_parser("switch", parents=[client], help="send all answers to GROUP")
    switch.add_argument("name", metavar="NAME")
    switch.add_argument("--to", dest="group", required=True, metavar="GROUP")
    switch.set_defaults(run=run_switch)


def run_status(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        body = client.rollout_status(args.name)
    print(json.dumps(body, indent=2, sort_keys=True), file=out)
    return 0


def run_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        body = client.rollout_command(args.name, args.command)
    if args.command == "undo":
        print(f"policy/{args.name} put back (revision {body['revision']})", file=out)
    else:
        print(
            f"policy/{args.name} rollout {body['state']} at {body['share']}% "
            f"(revision {body['revision']})",
            file=out,
        )
    return 0


def run_switch(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        policy = client.get_policy(args.name)
        if policy is None:
            print(f"error: no policy {args.name}", file=sys.stderr)
            return 1
        document = policy.to_document(with_revision=False)
        document["spec"]["split"] = switched(document["spec"], args.group)
        from dnsmesh.policy import Policy

        written = client.replace_policy(
            Policy.model_validate(document), if_match=policy.metadata.revision
        )
    print(
        f"policy/{args.name} switched to {args.group} (revision {written.metadata.revision})",
        file=out,
    )
    return 0


def switched(spec: dict[str, Any], group: str) -> dict[str, Any]:
    """spec.split with every answer on GROUP: the split's groups, or else the endpoints'."""
    split: dict[str, Any] = dict(spec.get("split") or {})
    groups = set(split.get("shares") or ()) | {
        endpoint["group"] for endpoint in spec["endpoints"] if endpoint.get("group")
    }
    split["shares"] = {name: 100 if name == group else 0 for name in sorted(groups | {group})}
    return split
