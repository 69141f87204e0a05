"""The client subcommands, kubectl-like: ``apply``, ``get``, ``delete`` against a controller.

Their heavy modules (yaml, the policy models) are imported when a command runs: every
``dnsmesh`` command, ``dnsmesh agent`` too, builds this module's parsers first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cli.drains import add_endpoint_command
from cli.rollouts import add_rollout_command
from dnsmesh.errors import ConfigError

if TYPE_CHECKING:
    from dnsmesh.policy import Policy

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
    client.add_argument(
        "--ca-file",
        metavar="FILE",
        default=os.environ.get("DNSMESH_CA_FILE"),
        help="the CA bundle that vouches for an https:// controller (dnsmesh ca export; "
        "default: $DNSMESH_CA_FILE, else the system's CAs)",
    )

    apply = subcommands.add_parser(
        "apply",
        parents=[client],
        help="create or update the policies in files on the controller, all or none",
        description="Create or update the policies of a file or folder on the controller. "
        "Every document is checked by the controller first (a server-side dry run); if any "
        "is refused, none is applied and every document's outcome is listed.",
    )
    apply.add_argument(
        "-f", "--filename", required=True, metavar="PATH", type=Path, help="a file or folder"
    )
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="let the controller check every change, print the diffs, change nothing",
    )
    apply.add_argument(
        "--force",
        action="store_true",
        help="write even where a connected agent's local --policies files define the same "
        "name or domain (the controller refuses that with 409 otherwise; those agents keep "
        "serving their local file), or where a policy would break its spec.safety with the "
        "drains in force",
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
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="with --prune (only): prune only policies with these labels (repeat to AND)",
    )
    apply.set_defaults(run=run_apply)

    get = subcommands.add_parser(
        "get", parents=[client], help="show policies, agents, endpoint health or served share"
    )
    get.add_argument(
        "kind",
        choices=["policies", "policy", "agents", "agent", "endpoints", "share", "scale"],
    )
    get.add_argument(
        "name",
        nargs="?",
        help="a policy's name; agents: an agent id or node name; endpoints: of that policy",
    )
    get.add_argument(
        "--window",
        type=int,
        default=300,
        metavar="SECONDS",
        help="share: the answers of the last SECONDS (10-3600, default 300)",
    )
    get.add_argument("-o", "--output", choices=_OUTPUTS, default="table", help="print as")
    get.add_argument(
        "-l",
        "--selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only those with these labels (repeat to AND); endpoints: the policies' labels",
    )
    get.set_defaults(run=run_get)

    delete = subcommands.add_parser(
        "delete", parents=[client], help="delete a policy, or forget an agent that is gone"
    )
    delete.add_argument("kind", choices=["policy", "policies", "agent", "agents"])
    delete.add_argument(
        "names", nargs="+", metavar="NAME", help="policy names, or agent ids (agents)"
    )
    delete.set_defaults(run=run_delete)
    add_endpoint_command(subcommands, client)
    add_rollout_command(subcommands, client)
    from cli.explain import add_explain_command  # it imports write_output from here

    add_explain_command(subcommands, client)


def run_apply(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.apply import apply_set

    if args.selector and not args.prune:
        raise ConfigError("-l/--selector chooses what --prune deletes; give --prune or drop -l")
    # Every document of every file is validated before the first request: a file with one
    # bad document applies nothing (the error names file, document and field).
    from dnsmesh.policyfile import load_policy_path

    wanted = load_policy_path(args.filename)
    if not wanted:
        raise ConfigError(f"{args.filename} holds no policy (no .yaml or .yml document)")
    return apply_set(args, wanted, _prune_selector(args.selector), out)


def _prune_selector(selectors: list[str]) -> dict[str, str]:
    """``-l`` of apply: each a Kubernetes equality selector (``team=x,env=prod``), all ANDed;
    checked here as the controller checks its ``selector`` parameter."""
    from dnsmesh.labelselector import SelectorError, parse_equality_selector

    try:
        return parse_equality_selector(",".join(selectors))
    except SelectorError as error:
        raise ConfigError(f"-l/--selector: {error}") from None


def run_get(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient, ControllerRefused

    if args.kind in ("agents", "agent"):
        return run_get_agents(args, out)
    if args.kind == "endpoints":
        return run_get_endpoints(args, out)
    if args.kind == "share":
        from cli.share import run_get_share

        return run_get_share(args, out)
    if args.kind == "scale":
        from cli.scale import run_get_scale

        return run_get_scale(args, out)
    selector = _selector(args.selector)
    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        if args.name:
            found = client.get_policy(args.name)
            if found is None or not _matches(found, selector):
                labels = f" with labels {_pairs(selector)}" if selector else ""
                raise ControllerRefused(
                    404, "not_found", f"no policy named {args.name!r}{labels}", []
                )
            policies = [found]
        else:
            policies = client.list_policies(selector).policies
    if args.output == "json":
        documents = [p.to_document() for p in policies]
        json.dump(documents[0] if args.name else documents, out, indent=2)
        out.write("\n")
    elif args.output == "yaml":
        import yaml

        yaml.safe_dump_all((p.to_document() for p in policies), out, sort_keys=False)
    else:
        out.write(_table(policies))
    return 0


def run_get_agents(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``dnsmesh get agents [NAME] [-l K=V]``: the agents, what they run, whether connected."""
    from cli.client import ControllerClient, ControllerRefused

    selector = _selector(args.selector)
    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        agents = client.list_agents(args.name, selector)
    if args.name and not agents:
        labels = f" and labels {_pairs(selector)}" if selector else ""
        raise ControllerRefused(
            404, "not_found", f"no agent has the id or node name {args.name!r}{labels}", []
        )
    write_output(args.output, agents, lambda: _agents_table(agents), out)
    return 0


def run_get_endpoints(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``dnsmesh get endpoints [POLICY] [-l K=V]``: health per endpoint, as agents report it."""
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        body = client.endpoints(args.name, _selector(args.selector))
    write_output(args.output, body, lambda: _endpoints_table(body["items"]), out)
    return 0


def write_output(output: str, body: Any, table: Callable[[], str], out: TextIO) -> None:
    """``-o json``, ``-o yaml``, or the table (``table()``, built only when asked for)."""
    if output == "json":
        json.dump(body, out, indent=2)
        out.write("\n")
    elif output == "yaml":
        import yaml

        yaml.safe_dump(body, out, sort_keys=False)
    else:
        out.write(table())


def run_delete(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        for name in args.names:
            if args.kind in ("agent", "agents"):
                client.delete_agent(name)
                print(f"agent/{name} deleted", file=out)
            else:
                client.delete_policy(name)
                print(f"policy/{name} deleted", file=out)
    return 0


def _selector(pairs: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"selector {pair!r} is not KEY=VALUE")
        wanted[key] = value
    return wanted


def _pairs(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in selector.items())


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
    header = ("ADDRESS", "STATUS", "ADMIN", "FAILING", "LATENCY", "LOSS", "POLICIES")
    rows = [header]
    for item in items:
        latency = item["latency_ms"]
        loss = item["loss"]
        rows.append(
            (
                item["address"],
                item["status"].upper() if item["down"] else item["status"],
                _admin_cell(item),
                f"{item['failing']}/{item['voters']}",
                "-" if latency is None else f"{latency:.1f}ms",
                "-" if loss is None else f"{loss:.0%}",
                ",".join(item["policies"]) or "-",
            )
        )
    return _render_table(rows)


def _admin_cell(item: dict[str, Any]) -> str:
    """gdnsd's admin_state: up, or drained (where, and until when)."""
    state = str(item.get("admin_state", "up"))
    drains = item.get("drains") or []
    if not drains:
        return state
    where = ",".join(d["policy"] or "*" for d in drains)
    until = min((d["until"] for d in drains if d["until"]), default=None)
    return f"{state}({where}{' until ' + until[11:19] if until else ''})"


def _render_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the header first) in columns padded to their widest cell, kubectl-style."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )
