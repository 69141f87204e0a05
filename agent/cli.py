"""The agent's subcommands: ``dnsmesh agent``."""

from __future__ import annotations

import argparse
from typing import Any

from agent.querylog_config import add_query_log_arguments
from agent.sync.config import add_sync_arguments


def add_agent_commands(
    subcommands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    agent = subcommands.add_parser(
        "agent", parents=[common], help="run the node agent (a DNS resolver that applies policies)"
    )
    agent.add_argument("--policies", metavar="PATH", help="a policy YAML file or a folder of them")
    agent.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        help="address to serve DNS on, UDP and TCP (repeatable; default 127.0.0.1:53); one "
        "this host cannot have (no IPv6) is skipped with a warning",
    )
    agent.add_argument(
        "--upstream",
        metavar="UPSTREAM",
        action="append",
        help="upstream resolver (repeatable; default: the nameservers of resolv.conf): "
        "IP[:PORT] plain DNS (port 53); tls://IP[:PORT]#NAME DNS over TLS (port 853, the "
        "certificate must be valid for NAME); https://HOST[:PORT]/PATH[#NAME] DNS over HTTPS "
        "(#NAME: connect to the numeric HOST, verify NAME). Encrypted ones never fall back "
        "to plain DNS",
    )
    agent.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="PEM CA certificates that DoT/DoH upstream certificates must chain to, instead "
        "of the system trust store",
    )
    agent.add_argument(
        "--resolv-conf",
        metavar="PATH",
        default="/etc/resolv.conf",
        help="where to find upstreams when no --upstream is given",
    )
    door = agent.add_argument_group("who may ask, and how fast (not an open resolver)")
    door.add_argument(
        "--allow",
        metavar="CIDR",
        action="append",
        help="clients answered (repeatable); others are refused. Default: loopback and the "
        "--listen addresses, plus this node's own addresses when listening on 0.0.0.0 or ::. "
        "--allow 0.0.0.0/0 --allow ::/0 answers everyone",
    )
    door.add_argument(
        "--refuse-mode",
        choices=("refuse", "drop"),
        default="refuse",
        help="what a client not allowed gets: REFUSED with EDE 18 Prohibited, or nothing",
    )
    door.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        metavar="QPS",
        help="UDP queries per second per source prefix (token bucket); over it, every "
        "--rate-limit-slip-th gets TC=1 (retry over TCP, not limited) and the rest are "
        "dropped; default 0: off",
    )
    door.add_argument(
        "--rate-limit-burst",
        type=int,
        default=0,
        metavar="N",
        help="queries a source may send at once above the rate (default: one second's worth)",
    )
    door.add_argument(
        "--rate-limit-exempt",
        metavar="CIDR",
        action="append",
        help="sources never rate limited (repeatable; none by default)",
    )
    door.add_argument(
        "--rate-limit-prefix-v4",
        type=int,
        default=32,
        metavar="BITS",
        help="IPv4 sources sharing this prefix share a bucket",
    )
    door.add_argument(
        "--rate-limit-prefix-v6",
        type=int,
        default=64,
        metavar="BITS",
        help="IPv6 sources sharing this prefix share a bucket",
    )
    door.add_argument(
        "--rate-limit-slip",
        type=int,
        default=2,
        metavar="N",
        help="of the queries over the limit, every N-th gets TC=1; 0 drops them all",
    )
    door.add_argument(
        "--trust-ecs-from",
        metavar="CIDR",
        action="append",
        help="forwarders whose EDNS Client Subnet option names the client (repeatable): "
        "policy slices match the network it names, and the answer carries its scope. "
        "Default none: ECS is ignored",
    )
    door.add_argument(
        "--amplification-factor",
        type=int,
        default=10,
        metavar="X",
        help="a UDP answer over 512 bytes is at most X times its query, else TC=1 (retry "
        "over TCP); 0: off",
    )
    door.add_argument(
        "--cookie-secret-file",
        metavar="PATH",
        help="DNS Cookies' server secret, 32 hex digits: the same file on every agent behind "
        "one anycast address lets a client keep its cookie across them (RFC 9018). A new "
        "secret written there is used at once and the one before still taken (rollover). "
        "Default: a random secret at start",
    )
    door.add_argument(
        "--upstream-cookies",
        action="store_true",
        help="send DNS cookies to plain upstreams and drop a UDP reply whose client cookie "
        "is not ours as forged (on top of the ID, port and 0x20 checks)",
    )
    tuning = agent.add_argument_group("tuning (defaults suit a node resolver)")
    seconds = {"type": float, "metavar": "SECONDS"}
    tuning.add_argument(
        "--query-timeout",
        default=1.5,
        help="bound on a forwarded query; then SERVFAIL",
        **seconds,
    )
    tuning.add_argument(
        "--attempt-timeout",
        default=0.5,
        help="bound on one upstream attempt before the next is sent (the earlier one keeps "
        "listening); a probe gets 0.8 times this",
        **seconds,
    )
    tuning.add_argument(
        "--down-backoff",
        default=1.0,
        help="first time an upstream marked down (its probe failed) is avoided; doubles per mark",
        **seconds,
    )
    tuning.add_argument(
        "--socket-mark",
        type=mark,
        default=0,
        metavar="MARK",
        help="a firewall mark (SO_MARK) on every plain-DNS upstream socket, so that `dnsmesh "
        "node capture` exempts the agent's own queries (0x646d there); needs CAP_NET_RAW "
        "(Linux 5.17+) or CAP_NET_ADMIN; default 0: none",
    )
    tuning.add_argument(
        "--no-loop-check",
        action="store_true",
        help="do not probe upstreams for a forwarding loop at start",
    )
    tuning.add_argument(
        "--cache-size",
        type=int,
        default=10_000,
        metavar="ENTRIES",
        help="forwarded answers kept in the cache",
    )
    tuning.add_argument(
        "--cache-max-ttl",
        type=int,
        default=86_400,
        metavar="SECONDS",
        help="cap on the TTL of forwarded answers, cached and served",
    )
    tuning.add_argument(
        "--stale-ttl",
        type=int,
        default=30,
        metavar="SECONDS",
        help="TTL of stale answers served while upstreams are down (RFC 8767)",
    )
    tuning.add_argument(
        "--stale-answer-after",
        default=1.8,
        help="answer stale if the upstreams have not answered by then; the query goes on "
        "to refresh the cache (RFC 8767 client response timer)",
        **seconds,
    )
    tuning.add_argument(
        "--max-stale",
        default=86_400.0,
        help="how long past expiry an answer may be served stale",
        **seconds,
    )
    tuning.add_argument(
        "--max-inflight",
        type=int,
        default=4096,
        metavar="N",
        help="forwarded queries in flight at once; beyond, new ones are dropped",
    )
    tuning.add_argument(
        "--udp-rcvbuf",
        default="4MiB",
        metavar="SIZE",
        help="receive buffer of each UDP listener, so bursts queue rather than drop; Linux "
        "caps it at net.core.rmem_max without CAP_NET_ADMIN; 0: the OS default",
    )
    tuning.add_argument(
        "--tcp-idle-timeout",
        default=10.0,
        help="a DNS-over-TCP client silent this long is disconnected",
        **seconds,
    )
    tuning.add_argument(
        "--upstream-idle-timeout",
        default=10.0,
        help="a DoT/DoH upstream connection with no query in flight this long is closed",
        **seconds,
    )
    tuning.add_argument(
        "--tcp-max-connections",
        type=int,
        default=256,
        metavar="N",
        help="DNS-over-TCP clients served at once",
    )
    tuning.add_argument(
        "--drain-timeout",
        default=2.0,
        help="on SIGTERM, how long in-flight queries may finish; the whole stop ends within it",
        **seconds,
    )
    tuning.add_argument(
        "--reload-interval",
        default=0.5,
        help="how often policy files are checked for changes",
        **seconds,
    )
    health = agent.add_argument_group("health probes")
    health.add_argument(
        "--no-probes",
        action="store_true",
        help="do not probe endpoints (the controller's mesh-wide down set still applies)",
    )
    health.add_argument(
        "--probe-report-interval",
        default=5.0,
        help="how often probe results and answer counts are reported to the controller",
        **seconds,
    )
    add_query_log_arguments(agent)
    admin = agent.add_argument_group("admin listener (/metrics, /healthz, /readyz over HTTP)")
    admin.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        default="127.0.0.1:9153",
        help="where to serve Prometheus /metrics, /healthz and /readyz (default "
        "127.0.0.1:9153; port 0 picks a free one; off: none)",
    )
    admin.add_argument(
        "--admin-listen-public",
        action="store_true",
        help="allow an --admin-listen address other than loopback (metrics name policies, "
        "endpoints and the query mix: expose them on purpose)",
    )
    agent.add_argument(
        "--replace",
        action="store_true",
        help="take over from the agent running with this --state-dir: take its listening "
        "sockets, serve, then make it drain and exit (no query lost); with none running, "
        "start as usual",
    )
    add_sync_arguments(agent)
    agent.set_defaults(run=_run_agent)


def mark(text: str) -> int:
    """A socket mark in decimal or 0x hex (its name is what argparse's error shows)."""
    return int(text, 0)


def _run_agent(args: argparse.Namespace) -> int:
    from agent.app import run_agent

    status: int = run_agent(args)
    return status
