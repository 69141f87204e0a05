"""``dnsmesh logs``: the agent's query log on this node, filtered, as a table or raw lines.

Reads the JSON lines ``dnsmesh agent --query-log`` writes (agent/querylog.py), as Pi-hole's
and AdGuard Home's query logs let one filter by domain, client, status and where the answer
came from. ``--follow`` keeps reading what is appended, and after logrotate moved the file
away (the agent reopens its path on SIGHUP) it goes on with the new file at that path.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from agent.querylog_config import DEFAULT_QUERY_LOG
from dnsmesh.errors import ConfigError

SOURCES = ("local", "policy", "cache", "upstream", "stale", "refused", "ratelimited", "error")
FOLLOW_POLL = 0.2  # seconds between looks at a followed file
_HEADER = f"{'TIME':23}  {'CLIENT':15}  {'SOURCE':11}  {'RCODE':8}  {'TYPE':5}  {'MS':>8}  NAME"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def add_logs_command(
    subcommands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    logs = subcommands.add_parser(
        "logs",
        parents=[common],
        help="show the agent's query log on this node, filtered",
        description="Show the query log that `dnsmesh agent --query-log` writes: every query "
        "with its client, answer and source, and for policy answers what was picked. "
        "Filters combine (all must match).",
    )
    logs.add_argument(
        "--file",
        default=DEFAULT_QUERY_LOG,
        metavar="PATH",
        help="the query log to read ('-': standard input)",
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing lines as they are appended"
    )
    logs.add_argument("--name", metavar="DOMAIN", help="queries for this name or a name below it")
    logs.add_argument(
        "--client", metavar="ADDRESS|CIDR", help="queries from this address or network"
    )
    logs.add_argument(
        "--rcode",
        action="append",
        metavar="RCODE",
        help="answers with this RCODE (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...; repeatable)",
    )
    logs.add_argument(
        "--source",
        action="append",
        choices=SOURCES,
        help="where the answer came from (repeatable)",
    )
    logs.add_argument(
        "--json", action="store_true", help="print the matching lines as written (JSON lines)"
    )
    logs.set_defaults(run=run_logs)


@dataclass(frozen=True, slots=True)
class LineFilter:
    """What a line must match; None or empty: anything."""

    name: str | None = None  # lower case, no trailing dot
    client: Network | None = None
    rcodes: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LineFilter:
        client = None
        if args.client:
            try:
                client = ipaddress.ip_network(args.client, strict=False)
            except ValueError:
                raise ConfigError(f"--client {args.client!r} is not an address or CIDR") from None
        name = args.name.strip().rstrip(".").lower() if args.name else None
        return cls(
            name=name or None,
            client=client,
            rcodes=frozenset(r.upper() for r in args.rcode or ()),
            sources=frozenset(args.source or ()),
        )

    def matches(self, line: dict[str, Any]) -> bool:
        """Whether a query line matches. A summary line (lines left out) always does: the
        lines it counts may have matched."""
        if line.get("summary"):
            return True
        if self.sources and line.get("source") not in self.sources:
            return False
        if self.rcodes and line.get("rcode") not in self.rcodes:
            return False
        if self.name is not None:
            name = str(line.get("name") or "").lower()
            if name != self.name and not name.endswith("." + self.name):
                return False
        return self.client is None or _in_network(line.get("client"), self.client)


def _in_network(client: object, network: Network) -> bool:
    try:
        return ipaddress.ip_address(str(client).partition("%")[0]) in network
    except ValueError:
        return False


def run_logs(args: argparse.Namespace, out: TextIO | None = None) -> int:
    wanted = LineFilter.from_args(args)
    if args.file != "-" and not os.path.isfile(args.file):
        raise ConfigError(f"--file {args.file}: no such file (is the agent run with --query-log?)")
    try:
        skipped = _print(args, wanted, out or sys.stdout)
    except BrokenPipeError:
        # The reader left (| head): stop quietly, and keep the interpreter's last flush of
        # stdout from failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if skipped:
        print(f"dnsmesh logs: {skipped} lines were not query log lines", file=sys.stderr)
    return 0


def _print(args: argparse.Namespace, wanted: LineFilter, out: TextIO) -> int:
    """Print the matching lines; how many lines were not JSON objects."""
    if not args.json:
        out.write(_HEADER + "\n")
    skipped = 0
    for raw in _lines(args.file, args.follow):
        try:
            line = json.loads(raw)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(line, dict) or not wanted.matches(line):
            continue
        if args.json:
            out.write(raw if raw.endswith("\n") else raw + "\n")
        else:
            out.write(row(line))
        if args.follow:
            out.flush()
    return skipped


def _lines(path: str, follow: bool) -> Iterable[str]:
    if path == "-":
        return sys.stdin
    return _follow(path) if follow else _read(path)


def _read(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as file:
        yield from file


def _follow(path: str) -> Iterator[str]:
    """Every line of ``path`` and then those appended, until interrupted; when the path is
    a new file (rotated: another inode, or the file shrank), the new one from its start."""
    file = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - reopened below
    try:
        partial = ""
        while True:
            chunk = file.readline()
            if chunk:
                partial += chunk
                if partial.endswith("\n"):  # a line the agent is still writing waits
                    yield partial
                    partial = ""
                continue
            if _replaced(path, file):
                file.close()
                file = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                partial = ""
                continue
            time.sleep(FOLLOW_POLL)
    finally:
        file.close()


def _replaced(path: str, file: TextIO) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False  # moved away and not yet recreated: keep the old one
    held = os.fstat(file.fileno())
    return now.st_ino != held.st_ino or now.st_size < file.tell()


def row(line: dict[str, Any]) -> str:
    """One line of the table (with its newline)."""
    stamp = str(line.get("time", "")).replace("T", " ").rstrip("Z")
    if line.get("summary"):
        parts = []
        if line.get("limited"):
            parts.append(f"{line['limited']} lines left out by --query-log-max-rate")
        if line.get("overflow"):
            parts.append(f"{line['overflow']} dropped (the writer's queue was full)")
        return f"{stamp:23}  -- {'; '.join(parts) or 'no lines left out'}\n"
    latency = line.get("latency_ms")
    cells = (
        f"{stamp:23}  {_cell(line.get('client')):15}  {_cell(line.get('source')):11}  "
        f"{_cell(line.get('rcode')):8}  {_cell(line.get('type')):5}  "
        f"{'-' if latency is None else f'{latency:.3f}':>8}  {_cell(line.get('name'))}"
    )
    return cells + _detail(line) + "\n"


def _detail(line: dict[str, Any]) -> str:
    """After the name: the policy pick, the reason, and counts of lines left out before."""
    extra = []
    decision = line.get("decision")
    if isinstance(decision, dict):
        picked = ",".join(decision.get("picked") or ()) or "no address"
        where = f" slice {decision['slice']}" if decision.get("slice") else ""
        extra.append(f"-> {picked} (policy {decision.get('policy')}{where})")
    if line.get("reason"):
        extra.append(f"[{line['reason']}]")
    left_out = [f"{line[k]} {k}" for k in ("limited", "overflow") if line.get(k)]
    if left_out:
        extra.append(f"({', '.join(left_out)} before this line)")
    return "  " + " ".join(extra) if extra else ""


def _cell(value: object) -> str:
    return "-" if value is None else str(value)
