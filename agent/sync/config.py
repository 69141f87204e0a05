"""The sync client's settings: ``dnsmesh agent --controller ...`` flags, checked once."""

from __future__ import annotations

import argparse
import os
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from dnsmesh.errors import ConfigError

SyncMode = Literal["auto", "ws", "http"]
STREAM_PATH = "/v1/agents/stream"
DEFAULT_STATE_DIR = "/var/lib/dnsmesh/agent"
# The joined agent's key and certificate in the state folder (agent/sync/identity.py). Named
# here, not there: that module imports cryptography, which the cold start does without.
IDENTITY_FILE = "identity.pem"


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Where the controller is, who this agent is, and how it reconnects."""

    controller: str  # http(s):// base URL of the controller (ws(s):// accepted too)
    token: str  # "" for an agent that joins (join_token) or has joined (its certificate)
    state_dir: Path
    node_name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    mode: SyncMode = "auto"  # auto: WebSocket, polling when the upgrade is refused
    # Reconnects: equal-jitter exponential backoff, sleep ~ U(w/2, w), w = min(cap, base*2**n);
    # while connects are refused (a controller restarting) w stops at refused_cap.
    backoff_base: float = 0.4
    backoff_cap: float = 10.0
    refused_cap: float = 1.0
    fatal_retry: float = 30.0  # 401/403: the token is wrong; retrying fast cannot help
    # Keepalive: a controller silent for ping_interval + ping_timeout is taken for dead.
    ping_interval: float = 10.0
    ping_timeout: float = 10.0
    open_timeout: float = 5.0
    ws_retry: float = 60.0  # while polling, try the WebSocket again this often
    poll_wait: float = 25.0  # long-poll: the controller holds a poll this long (max 30)
    report_interval: float = 20.0  # polling: report (stay shown connected) at least this often
    ca_file: Path | None = None  # the CA bundle for an https/wss controller (else the system's)
    join_token: str | None = None  # one-time: traded for a certificate (agent/sync/credentials.py)
    # Every --controller URL (replicas on one database), ``controller`` the one in use: a
    # reconnect moves to the next (agent/sync/client.py). Empty: ``controller`` alone.
    controllers: tuple[str, ...] = ()

    def next_controller(self) -> SyncConfig:
        """The settings with the URL after the current one (in rotation) in use."""
        urls = self.controllers or (self.controller,)
        at = urls.index(self.controller) if self.controller in urls else -1
        return replace(self, controller=urls[(at + 1) % len(urls)])

    def tls_context(self) -> ssl.SSLContext:
        """A verifying client context: the --ca-file bundle, else the system's CAs."""
        return tls_context(self.ca_file)

    @property
    def stream_url(self) -> str:
        return stream_url(self.controller)

    @property
    def http_url(self) -> str:
        return http_url(self.controller)


def _split(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ConfigError(f"--controller {url!r} is not an http(s):// or ws(s):// URL")
    return parts.scheme, parts.netloc, parts.path.rstrip("/")


def stream_url(url: str) -> str:
    """``http://h:8053/base`` -> ``ws://h:8053/base/v1/agents/stream`` (https -> wss)."""
    scheme, netloc, path = _split(url)
    ws = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    if not path.endswith(STREAM_PATH):
        path += STREAM_PATH
    return urlunsplit((ws, netloc, path, "", ""))


def http_url(url: str) -> str:
    """The REST base URL (for polling) of a controller given as http(s) or ws(s)."""
    scheme, netloc, path = _split(url)
    http = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return urlunsplit((http, netloc, path.removesuffix(STREAM_PATH), "", ""))


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ca-file {ca_file}: not a readable PEM CA bundle ({exc})") from exc


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``--label`` pairs, held to the limits the controller checks (dnsmesh.policy.Labels):
    a label it would refuse must stop the agent here, not make every hello fail."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--label {pair!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    if not labels:
        return labels
    # Imported here: pydantic is not needed to start answering (the cold start).
    from pydantic import TypeAdapter, ValidationError

    from dnsmesh.policy import Labels, field_errors

    checker: TypeAdapter[dict[str, str]] = TypeAdapter(Labels)
    try:
        return checker.validate_python(labels)
    except ValidationError as error:
        problems = "; ".join(f"{e.path}: {e.message}" for e in field_errors(error))
        raise ConfigError(f"--label: {problems}") from None


def add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dnsmesh agent`` flags that connect it to a controller."""
    group = parser.add_argument_group(
        "controller (push)",
        "with --controller, the controller pushes its policies to the agent. --policies files "
        "still apply; where one defines a name or domain that a controller policy also "
        "defines, the local file wins on this node and the agent reports the controller "
        "policy as shadowed (every revision still applies).",
    )
    group.add_argument(
        "--controller",
        metavar="URL",
        action="append",
        help="the controller, e.g. http://ctl:8053; repeatable or comma-separated for "
        "replicas on one database: the first is used, each reconnect tries the next",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("DNSMESH_AGENT_TOKEN"),
        help="an API token of role agent (default: $DNSMESH_AGENT_TOKEN)",
    )
    group.add_argument("--token-file", metavar="PATH", help="read the token from this file")
    group.add_argument(
        "--join-token",
        default=os.environ.get("DNSMESH_JOIN_TOKEN"),
        help="a one-time join token (dnsmesh token create --role agent --join): traded for "
        "this node's certificate, which the agent then connects with (mTLS, no token); "
        "unused once the state folder holds a valid certificate "
        "(default: $DNSMESH_JOIN_TOKEN)",
    )
    group.add_argument(
        "--join-token-file", metavar="PATH", help="read the join token from this file"
    )
    group.add_argument(
        "--ca-file",
        metavar="FILE",
        type=Path,
        help="the CA bundle that vouches for an https:// controller (dnsmesh ca export; "
        "default: the system's CAs); a certificate it does not vouch for is refused",
    )
    group.add_argument("--node-name", help="this node's name (default: the hostname)")
    group.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="this node's label (repeatable): sent to the controller, and what policy "
        "slices with match.node_labels are decided by (also without --controller)",
    )
    group.add_argument(
        "--state-dir",
        metavar="DIR",
        help="agent id, last applied policies and the hand-off control socket (default: "
        f"{DEFAULT_STATE_DIR} with --controller; none without)",
    )
    group.add_argument(
        "--sync",
        choices=["auto", "ws", "http"],
        default="auto",
        help="auto: WebSocket, HTTP long-polling where it is refused",
    )
    seconds: dict[str, Any] = {"type": float, "metavar": "SECONDS"}
    group.add_argument(
        "--sync-backoff-base",
        default=0.4,
        help="first reconnect window; doubles per failure, wait drawn in [window/2, window]",
        **seconds,
    )
    group.add_argument("--sync-backoff-cap", default=10.0, help="largest window", **seconds)
    group.add_argument(
        "--sync-refused-cap",
        default=1.0,
        help="largest window while connects are refused (a controller restarting)",
        **seconds,
    )
    group.add_argument(
        "--sync-fatal-retry", default=30.0, help="retry period after 401/403", **seconds
    )
    group.add_argument("--sync-ping-interval", default=10.0, help="keepalive pings", **seconds)
    group.add_argument(
        "--sync-ping-timeout",
        default=10.0,
        help="a ping unanswered this long drops the connection",
        **seconds,
    )
    group.add_argument(
        "--sync-ws-retry", default=60.0, help="while polling, retry the WebSocket", **seconds
    )
    group.add_argument(
        "--sync-poll-wait", default=25.0, help="long-poll hold time (at most 30)", **seconds
    )


def _secret(value: str | None, file: str | None, flag: str) -> str | None:
    if not file:
        return value
    try:
        return Path(file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{flag} {file}: {exc}") from exc


def controller_urls(given: list[str]) -> tuple[str, ...]:
    """Each ``--controller`` (repeatable, each a comma list), checked, duplicates dropped."""
    urls = [url.strip() for text in given for url in text.split(",") if url.strip()]
    for url in urls:
        _split(url)
    if not urls:
        raise ConfigError("--controller: no URL given")
    return tuple(dict.fromkeys(urls))


def state_dir_from_args(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "state_dir", None) or DEFAULT_STATE_DIR)


def sync_config_from_args(args: argparse.Namespace) -> SyncConfig | None:
    """The SyncConfig for ``--controller``, or None for a stand-alone agent."""
    if not args.controller:
        return None
    token = _secret(args.token, args.token_file, "--token-file")
    join_token = _secret(args.join_token, args.join_token_file, "--join-token-file")
    state_dir = state_dir_from_args(args)
    joined = (state_dir / IDENTITY_FILE).exists()
    if not token and not join_token and not joined:
        raise ConfigError(
            "--controller needs --join-token (or a certificate from an earlier join in "
            "--state-dir), or --token, --token-file or $DNSMESH_AGENT_TOKEN"
        )
    controllers = controller_urls(args.controller)
    if args.ca_file is not None:
        tls_context(args.ca_file)  # an unreadable bundle fails now, not at every connect
    timings = {
        "backoff_base": args.sync_backoff_base,
        "backoff_cap": args.sync_backoff_cap,
        "refused_cap": args.sync_refused_cap,
        "fatal_retry": args.sync_fatal_retry,
        "ping_interval": args.sync_ping_interval,
        "ping_timeout": args.sync_ping_timeout,
        "ws_retry": args.sync_ws_retry,
    }
    for name, value in timings.items():
        if value <= 0:
            raise ConfigError(f"--sync-{name.replace('_', '-')} must be positive")
    if not 0 <= args.sync_poll_wait <= 30:
        raise ConfigError("--sync-poll-wait must be between 0 and 30 seconds")
    return SyncConfig(
        controller=controllers[0],
        controllers=controllers,
        token=token or "",
        join_token=join_token or None,
        state_dir=state_dir,
        node_name=args.node_name or socket.gethostname(),
        labels=parse_labels(args.label),
        mode=args.sync,
        poll_wait=args.sync_poll_wait,
        ca_file=args.ca_file,
        **timings,
    )
