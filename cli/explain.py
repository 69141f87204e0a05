"""``dnsmesh explain NAME --client IP [--node N] [--with-file policy.yaml]``.

What the controller says that client gets from the policy (NAME: a policy name or a DNS
name it answers) and why; with ``--with-file``, the proposed policy of the file beside the
stored one (POST /v1/explain: checked in full, nothing stored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from cli.commands import write_output
from dnsmesh.errors import ConfigError
from dnsmesh.policyfile import load_policy_path


def add_explain_command(
    subcommands: argparse._SubParsersAction[Any], client: argparse.ArgumentParser
) -> None:
    explain = subcommands.add_parser(
        "explain",
        parents=[client],
        help="what a client gets from a policy and why; --with-file: before and after a change",
        description="Ask the controller what CLIENT gets from policy NAME (a policy name or "
        "a DNS name it answers): the slice, the candidates with their configured and "
        "effective weights, who is drained, down or ejected, and the distribution of answers. "
        "With --with-file, the same for the proposed policy, side by side with the stored one.",
    )
    explain.add_argument("name", metavar="NAME", help="a policy name or a DNS name")
    explain.add_argument("--client", required=True, metavar="IP", help="the client's address")
    explain.add_argument("--node", metavar="NODE", help="as the agent of this node answers")
    explain.add_argument(
        "--with-file",
        type=Path,
        metavar="FILE",
        help="a policy file: explain its policy (one, or the one called NAME) before applying",
    )
    explain.add_argument(
        "-o", "--output", choices=("table", "yaml", "json"), default="table", help="print as"
    )
    explain.set_defaults(run=run_explain)


def run_explain(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    proposed = _proposed(args.with_file, args.name) if args.with_file else None
    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        if proposed is None:
            body = client.explain(args.name, args.client, args.node)
            write_output(args.output, body, lambda: explain_table(body), out)
        else:
            body = client.what_if(proposed, args.client, args.node)
            write_output(args.output, body, lambda: what_if_table(body), out)
    return 0


def _proposed(path: Path, name: str) -> dict[str, Any]:
    """The document to explain from the file (validated here first: a bad file names its
    field and sends nothing)."""
    loaded = load_policy_path(path)
    if len(loaded) == 1:
        return loaded[0].policy.to_document(with_revision=False)
    for sourced in loaded:
        if sourced.policy.name == name:
            return sourced.policy.to_document(with_revision=False)
    raise ConfigError(f"{path} holds {len(loaded)} policies and none is called {name!r}")


def explain_table(body: dict[str, Any]) -> str:
    from cli.commands import _render_table  # the one table layout of every command

    header = [
        f"policy {body['policy']} ({body['domain']}) revision {body['revision']}, "
        f"as {body['source']} sees it",
        f"client {body['client']}: slice {body['slice']}, {body['action']}, "
        f"strategy {body['strategy']}, {body['answers']} answer(s)"
        + (f", ttl {body['ttl']}" if "ttl" in body else ""),
    ]
    if body.get("debug_label"):
        header.append(f"asked as {body['debug_label']}.{body['domain']} (debug label)")
    if body.get("weights"):
        weights = " ".join(f"{a}={w}" for a, w in body["weights"].items())
        header.append(f"slice weights {weights}")
    if body.get("node"):
        node = body["node"]
        labels = ",".join(f"{k}={v}" for k, v in sorted(node["labels"].items())) or "-"
        header.append(f"node {node['name']} (agent {node['agent_id']}, labels {labels})")
    if body.get("rollout"):
        header.append(f"rollout {body['rollout']}")
    shares = {
        (qtype, a): p
        for qtype, odds in body["distribution"].items()
        for a, p in odds["shares"].items()
    }
    rows = [("ADDRESS", "GROUP", "WEIGHT", "EFFECTIVE", "STATE", "SHARE", "NOTE")]
    for c in body["candidates"]:
        qtype = "A" if c["family"] == 4 else "AAAA"
        share = shares.get((qtype, c["address"]))
        rows.append(
            (
                c["address"],
                c["group"] or "-",
                str(c["weight"]),
                str(c["effective_weight"]),
                c["state"],
                "-" if share is None else _percent(share),
                c.get("note") or "",
            )
        )
    lines = [*header, _render_table(rows).rstrip("\n")]
    for qtype, odds in body["distribution"].items():
        if "answer" in odds:
            lines.append(f"{qtype}: always {' '.join(odds['answer'])}")
        elif not odds["exact"]:
            lines.append(f"{qtype}: shares estimated by sampling")
    lines += body.get("notes", [])
    return "\n".join(lines) + "\n"


def what_if_table(body: dict[str, Any]) -> str:
    from cli.commands import _render_table

    rows = [("TYPE", "ADDRESS", "BEFORE", "AFTER")]
    for qtype, changes in body["changes"].items():
        rows += [
            (qtype, c["address"], _percent(c["before"]), _percent(c["after"])) for c in changes
        ]
    before = body["before"]
    after = body["after"]
    lines = [
        f"policy {after['policy']}: slice {before['slice'] if before else '(new policy)'}"
        f" -> {after['slice']}, {before['action'] if before else '-'} -> {after['action']}",
        _render_table(rows).rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"
