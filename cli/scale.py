"""``dnsmesh get scale NAME``: where a policy's demand-driven slices stand."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from cli.commands import write_output
from dnsmesh.errors import ConfigError


def run_get_scale(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from cli.client import ControllerClient

    if not args.name:
        raise ConfigError("dnsmesh get scale needs the policy's name")
    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        body = client.scale(args.name)
    write_output(args.output, body, lambda: scale_table(body), out)
    return 0


def scale_table(body: dict[str, Any]) -> str:
    """One row per scaled slice (count within its bounds, the rates), then each reason."""
    from cli.commands import _render_table  # the one table layout of every `get`

    slices = body["slices"]
    if not slices:
        return f"policy {body['policy']} has no slice with scale\n"
    rows = [("SLICE", "COUNT", "MIN-MAX", "TARGET/EP", "QPS", "PEAK", "REVISION")]
    rows += [
        (
            s["slice"],
            str(s["count"]),
            f"{s['min']}-{s['max']}",
            f"{s['target_qps_per_endpoint']:g}",
            f"{s['qps']:.1f}",
            f"{s['peak_qps']:.1f}",
            "-" if s["revision"] is None else str(s["revision"]),
        )
        for s in slices
    ]
    rule = body["rule"]
    lines = [
        _render_table(rows).rstrip("\n"),
        f"qps over {rule['window_s']:g} s, peak over the {rule['hold_s']:g} s hold",
    ]
    lines += [f"  {s['slice']}: {s['reason']} ({', '.join(s['endpoints'])})" for s in slices]
    return "\n".join(lines) + "\n"
