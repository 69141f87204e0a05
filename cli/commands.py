"""The client subcommands, kubectl-like: ``apply``, ``get``, ``delete`` against a controller."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from dnsmesh.errors import ConfigError
from dnsmesh.policy import Policy
from dnsmesh.policyfile import SourcedPolicy, load_policy_path

_OUTPUTS = ("table", "yaml", "json")


def add_client_commands(
    subcommands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    client = argparse.ArgumentParser(add_help=False, parents=[common])
    client.add_argument(
        "--server",
        metavar="URL",
        default=os.environ.get("DNSMESH_SERVER", "http://127.0.0.1:8053"),
        help="the controller's URL (default: $DNSMESH_SERVER, else http://127.0.0.1:8053)",
    )
    client.add_argument(
        "--token",
        default=os.environ.get("DNSMESH_TOKEN"),
        help="an API token (default: $DNSMESH_TOKEN)",
    )

    apply = subcommands.add_parser(
        "apply", parents=[client], help="create or update the policies in files on the controller"
    )
    apply.add_argument("-f", "--filename", required=True, metavar="PATH", type=Path)
    apply.add_argument(
        "--dry-run", action="store_true", help="print what would change and change nothing"
    )
    apply.add_argument(
        "--force",
        action="store_true",
        help="write even where a connected agent's local --policies files define the same "
        "name or domain (the controller refuses that with 409 otherwise; those agents keep "
        "serving their local file)",
    )
    apply.add_argument(
        "--prune",
        action="store_true",
        help="delete policies on the controller that the files do not hold",
    )
    apply.add_argument(
        "-l",
        "--selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --prune: only prune policies with these labels",
    )
    apply.set_defaults(run=run_apply)

    get = subcommands.add_parser(
        "get", parents=[client], help="show policies, agents or endpoint health"
    )
    get.add_argument("kind", choices=["policies", "policy", "agents", "endpoints"])
    get.add_argument("name", nargs="?", help="a policy's name (endpoints: of that policy)")
    get.add_argument("-o", "--output", choices=_OUTPUTS, default="table")
    get.add_argument("-l", "--selector", action="append", default=[], metavar="KEY=VALUE")
    get.set_defaults(run=run_get)

    delete = subcommands.add_parser("delete", parents=[client], help="delete a policy")
    delete.add_argument("kind", choices=["policy", "policies"])
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.set_defaults(run=run_delete)


def run_apply(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    # Every document of every file is validated before the first request: a file with one
    # bad document applies nothing (the error names file, document and field).
    wanted = load_policy_path(args.filename)
    selector = _selector(args.selector)
    with ControllerClient(args.server, args.token) as client:
        existing = {p.name: p for p in client.list_policies().policies}
        suffix = " (dry run)" if args.dry_run else ""
        for sourced in wanted:
            policy = sourced.policy
            current = existing.get(policy.name)
            if current is not None and _comparable(current) == _comparable(policy):
                print(f"policy/{policy.name} unchanged", file=out)
                continue
            if args.dry_run:
                out.writelines(_diff(current, sourced))
            elif current is None:
                client.create_policy(policy, force=args.force)
            else:
                # If-Match: a change made by someone else since our read is not overwritten.
                client.replace_policy(policy, if_match=current.metadata.revision, force=args.force)
            verb = "created" if current is None else "configured"
            print(f"policy/{policy.name} {verb}{suffix}", file=out)
        if args.prune:
            keep = {s.policy.name for s in wanted}
            for name, current in sorted(existing.items()):
                if name in keep or not _matches(current, selector):
                    continue
                if not args.dry_run:
                    client.delete_policy(name, if_match=current.metadata.revision)
                print(f"policy/{name} pruned{suffix}", file=out)
    return 0


def run_get(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient, ControllerRefused

    if args.kind == "agents":
        return run_get_agents(args, out)
    if args.kind == "endpoints":
        return run_get_endpoints(args, out)
    with ControllerClient(args.server, args.token) as client:
        if args.name:
            found = client.get_policy(args.name)
            if found is None:
                raise ControllerRefused(404, "not_found", f"no policy named {args.name!r}", [])
            policies = [found]
        else:
            policies = client.list_policies(_selector(args.selector)).policies
    if args.output == "json":
        documents = [p.to_document() for p in policies]
        json.dump(documents[0] if args.name else documents, out, indent=2)
        out.write("\n")
    elif args.output == "yaml":
        yaml.safe_dump_all((p.to_document() for p in policies), out, sort_keys=False)
    else:
        out.write(_table(policies))
    return 0


def run_get_agents(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``dnsmesh get agents``: every agent, what it runs and whether it is connected."""
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token) as client:
        agents = client.list_agents()
    if args.output == "json":
        json.dump(agents, out, indent=2)
        out.write("\n")
    elif args.output == "yaml":
        yaml.safe_dump(agents, out, sort_keys=False)
    else:
        out.write(_agents_table(agents))
    return 0


def run_get_endpoints(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``dnsmesh get endpoints [POLICY]``: health per endpoint address, as agents report it."""
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token) as client:
        body = client.endpoints(args.name)
    if args.output == "json":
        json.dump(body, out, indent=2)
        out.write("\n")
    elif args.output == "yaml":
        yaml.safe_dump(body, out, sort_keys=False)
    else:
        out.write(_endpoints_table(body["items"]))
    return 0


def run_delete(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token) as client:
        for name in args.names:
            client.delete_policy(name)
            print(f"policy/{name} deleted", file=out)
    return 0


def _comparable(policy: Policy) -> dict[str, Any]:
    return policy.to_document(with_revision=False)


def _diff(current: Policy | None, sourced: SourcedPolicy) -> Iterable[str]:
    before = yaml.safe_dump(_comparable(current), sort_keys=False) if current else ""
    after = yaml.safe_dump(_comparable(sourced.policy), sort_keys=False)
    return difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"controller/{sourced.policy.name}" if current else "/dev/null",
        tofile=f"{sourced.source} (document {sourced.document})",
    )


def _selector(pairs: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"selector {pair!r} is not KEY=VALUE")
        wanted[key] = value
    return wanted


def _matches(policy: Policy, selector: dict[str, str]) -> bool:
    return all(policy.metadata.labels.get(k) == v for k, v in selector.items())


def _table(policies: list[Policy]) -> str:
    header = ("NAME", "DOMAIN", "STRATEGY", "ENDPOINTS", "TTL", "REVISION")
    rows = [header] + [
        (
            p.name,
            p.spec.domain,
            p.spec.strategy.value,
            str(len(p.spec.endpoints)),
            str(p.spec.ttl),
            str(p.metadata.revision if p.metadata.revision is not None else "-"),
        )
        for p in policies
    ]
    return _render_table(rows)


def _agents_table(agents: list[dict[str, Any]]) -> str:
    header = ("ID", "NODE", "CONNECTED", "APPLIED", "SHADOWED", "LAST SEEN", "LAST NACK")
    rows = [header]
    for agent in agents:
        nack = agent.get("last_nack")
        reason = f"{nack['revision']}: {nack['reason']}" if nack else "-"
        rows.append(
            (
                agent["agent_id"],
                agent["node_name"],
                "yes" if agent["connected"] else "no",
                str(agent["applied_revision"]),
                _shadowed_cell(agent.get("shadowed")),
                agent["last_seen"][:19].replace("T", " "),  # to the second, UTC
                reason if len(reason) <= 60 else reason[:57] + "...",
            )
        )
    return _render_table(rows)


def _shadowed_cell(shadowed: list[dict[str, str]] | None) -> str:
    """How many controller policies the agent's local files shadow, and the first names."""
    if not shadowed:
        return "0" if shadowed is not None else "-"  # None: the agent never said
    names = ",".join(s["name"] for s in shadowed[:3])
    return f"{len(shadowed)} ({names}{',...' if len(shadowed) > 3 else ''})"


def _endpoints_table(items: list[dict[str, Any]]) -> str:
    header = ("ADDRESS", "STATUS", "FAILING", "LATENCY", "LOSS", "POLICIES")
    rows = [header]
    for item in items:
        latency = item["latency_ms"]
        loss = item["loss"]
        rows.append(
            (
                item["address"],
                item["status"].upper() if item["down"] else item["status"],
                f"{item['failing']}/{item['voters']}",
                "-" if latency is None else f"{latency:.1f}ms",
                "-" if loss is None else f"{loss:.0%}",
                ",".join(item["policies"]) or "-",
            )
        )
    return _render_table(rows)


def _render_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the header first) in columns padded to their widest cell, kubectl-style."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )
