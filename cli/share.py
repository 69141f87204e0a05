"""``dnsmesh get share NAME [--window S]``: a policy's served share against its weights."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from cli.commands import write_output
from dnsmesh.errors import ConfigError


def run_get_share(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    if not args.name:
        raise ConfigError("dnsmesh get share needs the policy's name")
    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        body = client.share(args.name, args.window)
    write_output(args.output, body, lambda: share_table(body), out)
    return 0


def share_table(body: dict[str, Any]) -> str:
    """The endpoints' shares in columns, then the drift line (and each slice's, if any)."""
    from cli.commands import _render_table  # the one table layout of every `get`

    rows = [("ADDRESS", "INTENDED", "SERVED", "ANSWERS")]
    rows += [
        (e["address"], _percent(e["intended"]), _percent(e["served"]), str(e["answers"]))
        for e in body["endpoints"]
    ]
    rule = f"flagged above {body['threshold']} over {body['min_answers']} answers"
    lines = [
        _render_table(rows).rstrip("\n"),
        f"{_drift(body)} in the last {body['window_s']} s ({rule})",
    ]
    lines += [f"  slice {s['id']}: {_drift(s)}" for s in body.get("slices", [])]
    return "\n".join(lines) + "\n"


def _drift(share: dict[str, Any]) -> str:
    verdict = "FLAGGED" if share["flagged"] else "ok"
    return f"drift {share['drift']:.3f} {verdict} over {share['answers']} answers"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"
