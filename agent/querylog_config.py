"""The query log's settings: ``dnsmesh agent --query-log PATH|- ...`` flags, checked once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dnsmesh.errors import ConfigError

# Where `dnsmesh logs` looks by default, and where the docs suggest writing it.
DEFAULT_QUERY_LOG = "/var/log/dnsmesh/queries.log"


@dataclass(frozen=True, slots=True)
class QueryLogConfig:
    path: str  # a file (appended to, reopened on SIGHUP) or "-" for standard output
    sample: float = 1.0  # the fraction of queries logged
    max_rate: float = 1000.0  # lines a second at most; 0: no bound
    client_prefix_v4: int = 32  # client addresses are cut to these prefixes
    client_prefix_v6: int = 128


def add_query_log_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("query log (off unless --query-log is given)")
    group.add_argument(
        "--query-log",
        metavar="PATH",
        help="write a JSON line per query to PATH (appended; reopened on SIGHUP, for "
        f"logrotate) or to standard output with '-'; `dnsmesh logs` reads {DEFAULT_QUERY_LOG} "
        "by default",
    )
    group.add_argument(
        "--query-log-sample",
        type=float,
        default=1.0,
        metavar="FRACTION",
        help="the fraction of queries logged, e.g. 0.01",
    )
    group.add_argument(
        "--query-log-max-rate",
        type=float,
        default=1000.0,
        metavar="LINES",
        help="lines written a second at most, so a flood cannot fill the disk; the lines left "
        "out are counted in the next line (limited) or a summary line; 0: no bound",
    )
    group.add_argument(
        "--query-log-client-prefix-v4",
        type=int,
        default=32,
        metavar="BITS",
        help="IPv4 clients are logged cut to this prefix (24: 192.0.2.0), for privacy",
    )
    group.add_argument(
        "--query-log-client-prefix-v6",
        type=int,
        default=128,
        metavar="BITS",
        help="IPv6 clients are logged cut to this prefix (56: 2001:db8:aa:bb00::)",
    )


def query_log_config_from_args(args: argparse.Namespace) -> QueryLogConfig | None:
    """The QueryLogConfig for the flags, None when --query-log is not given; ConfigError
    names the bad flag."""
    path = getattr(args, "query_log", None)
    if path is None:
        return None
    if not path:
        raise ConfigError("--query-log needs a path, or '-' for standard output")
    sample = args.query_log_sample
    if not 0.0 <= sample <= 1.0:
        raise ConfigError("--query-log-sample is a fraction from 0 to 1")
    if args.query_log_max_rate < 0:
        raise ConfigError("--query-log-max-rate cannot be negative (0: no bound)")
    if not 0 <= args.query_log_client_prefix_v4 <= 32:
        raise ConfigError("--query-log-client-prefix-v4 is 0-32")
    if not 0 <= args.query_log_client_prefix_v6 <= 128:
        raise ConfigError("--query-log-client-prefix-v6 is 0-128")
    return QueryLogConfig(
        path=path,
        sample=sample,
        max_rate=args.query_log_max_rate,
        client_prefix_v4=args.query_log_client_prefix_v4,
        client_prefix_v6=args.query_log_client_prefix_v6,
    )
