"""The agent's settings: command-line text turned into typed, checked values once."""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from agent.querylog_config import QueryLogConfig, query_log_config_from_args
from agent.sync.config import parse_labels
from dnsmesh.admission import LOOPBACK, Network, parse_network
from dnsmesh.cookies import parse_secret
from dnsmesh.errors import ConfigError

DNS_PORT = 53
DOT_PORT = 853  # RFC 7858 §3.1
HTTPS_PORT = 443
ADMIN_PORT = 9153  # CoreDNS's metrics port: where a node resolver's metrics are looked for
KIB = 1024
MIB = 1024 * KIB
MAX_UDP_RCVBUF = 1024 * MIB
_SIZE_UNITS = {"": 1, "k": KIB, "kib": KIB, "m": MIB, "mib": MIB}


@dataclass(frozen=True, slots=True, order=True)
class HostPort:
    """A numeric address and port; ``host`` is normalised text (``::1``, not ``[::1]``)."""

    host: str
    port: int

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family_v6 else f"{self.host}:{self.port}"


def parse_host_port(text: str, default_port: int | None = None) -> HostPort:
    """``1.2.3.4:53``, ``[::1]:53``, and, when ``default_port`` is given, ``1.2.3.4`` or ``::1``.

    Only numeric addresses: a resolver that must resolve its own upstream's name has nobody
    to ask.
    """
    text = text.strip()
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{text!r}: missing ']' after an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None  # IPv4 without port, or a bare IPv6 address
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{text!r}: {host!r} is not a numeric IPv4 or IPv6 address") from None
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{text!r}: a port is required (HOST:PORT, [V6]:PORT)")
        port = default_port
    else:
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"{text!r}: {port_text!r} is not a port number") from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"{text!r}: port {port} is out of range")
    return HostPort(address.compressed, port)


@dataclass(frozen=True, slots=True, order=True)
class TlsUpstream:
    """DNS over TLS (RFC 7858) to a numeric address; the certificate must be valid for
    ``name`` (never the address: a resolver has nobody to ask for the name's address)."""

    host: str
    port: int
    name: str

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"tls://{HostPort(self.host, self.port)}#{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class HttpsUpstream:
    """DNS over HTTPS (RFC 8484): POSTs to ``url``. ``host`` is the URL's host, numeric or a
    name; ``name``, when given, is what the certificate and the Host header must say while
    the connection goes to the numeric ``host`` (no lookup of the name)."""

    url: str
    host: str
    port: int
    name: str | None = None

    def __str__(self) -> str:
        return self.url if self.name is None else f"{self.url}#{self.name}"


# Where the agent forwards: plain DNS (UDP, TCP on truncation), DoT or DoH.
UpstreamAddress = HostPort | TlsUpstream | HttpsUpstream

_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)


def _check_name(text: str, name: str) -> str:
    if not _DNS_NAME.fullmatch(name):
        raise ConfigError(f"{text!r}: {name!r} is not a host name to verify the certificate with")
    return name.rstrip(".").lower()


def parse_upstream(text: str) -> UpstreamAddress:
    """One ``--upstream``: ``IP[:PORT]`` (plain DNS, port 53), ``tls://IP[:PORT]#NAME`` (DoT,
    port 853, the certificate verified against NAME) or ``https://HOST[:PORT]/PATH[#NAME]``
    (DoH; with #NAME, HOST must be numeric and NAME is verified instead)."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return parse_host_port(text, DNS_PORT)
    scheme = scheme.lower()
    if scheme == "tls":
        address, hashmark, name = rest.partition("#")
        if not hashmark or not name:
            raise ConfigError(
                f"{text!r}: DNS over TLS needs the name to verify the certificate with: "
                "tls://IP[:PORT]#NAME"
            )
        hostport = parse_host_port(address, DOT_PORT)
        return TlsUpstream(hostport.host, hostport.port, _check_name(text, name))
    if scheme == "https":
        return _parse_https(text)
    raise ConfigError(f"{text!r}: unknown scheme {scheme!r} (plain IP[:PORT], tls:// or https://)")


def _parse_https(text: str) -> HttpsUpstream:
    url, _, name = text.partition("#")
    try:
        parts = urlsplit(url)
        port = parts.port or HTTPS_PORT
    except ValueError as exc:
        raise ConfigError(f"{text!r}: not a URL: {exc}") from None
    host = parts.hostname
    if not host:
        raise ConfigError(f"{text!r}: the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{text!r}: credentials in a DoH URL are not supported")
    if parts.query:
        raise ConfigError(f"{text!r}: a DoH URL takes no query string (queries are POSTed)")
    if not parts.path or parts.path == "/":
        raise ConfigError(f"{text!r}: the URL needs the DoH path, e.g. /dns-query")
    try:
        numeric: str | None = ipaddress.ip_address(host).compressed
    except ValueError:
        numeric = None
    if numeric is None:
        host = _check_name(text, host)
        if name:
            raise ConfigError(f"{text!r}: #NAME is for a numeric URL host; the host is a name")
        return HttpsUpstream(url, host, port)
    return HttpsUpstream(url, numeric, port, _check_name(text, name) if name else None)


def parse_size(text: str) -> int:
    """A byte count: ``4194304``, ``512KiB``, ``4MiB`` (also ``K``/``M``); powers of 1024."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ConfigError(f"{text!r} is not a size (e.g. 4194304, 512KiB, 4MiB)")
    return int(match.group(1)) * _SIZE_UNITS[unit]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs to run, with defaults that suit a node resolver."""

    listen: tuple[HostPort, ...] = (HostPort("127.0.0.1", DNS_PORT),)
    # None: take the nameservers of resolv_conf (minus our own addresses).
    upstreams: tuple[UpstreamAddress, ...] | None = None
    # CA certificates (PEM) that DoT/DoH upstream certificates must chain to; None: the
    # system trust store.
    upstream_ca: Path | None = None
    # A DoT/DoH connection nobody used for this long is closed (RFC 7858 §3.4 asks clients
    # to close idle connections; servers drop them after ~10-30 s anyway).
    upstream_idle_timeout: float = 10.0
    resolv_conf: Path = Path("/etc/resolv.conf")
    policies: Path | None = None
    reload_interval: float = 0.5  # policy files are polled this often (effect within 2 s)
    # Forwarding: one attempt per upstream is bounded by attempt_timeout, the whole query by
    # query_timeout, after which the client gets SERVFAIL (never silence). Both fit inside a
    # glibc stub's timeout:2 (docs/design.md, "Forwarding and its time budget").
    attempt_timeout: float = 0.5
    query_timeout: float = 1.5
    down_base: float = 1.0  # first backoff of a down upstream; doubles up to down_max
    down_max: float = 30.0  # RFC 8767 §5 suggests re-trying a failed resolution after 30 s
    loop_check: bool = True
    # SO_MARK on plain-DNS upstream sockets (0: none), which `dnsmesh node capture` exempts.
    socket_mark: int = 0
    # Cache (RFC 8767 serve-stale: stale answers carry stale_ttl, at most max_stale old).
    cache_size: int = 10_000
    max_ttl: int = 86_400  # --cache-max-ttl: caps what is cached and what clients are told
    stale_ttl: int = 30
    stale_answer_after: float = 1.8  # RFC 8767 §5 client response timer
    max_stale: float = 86_400.0
    # TCP (RFC 7766 §6.2.3: idle timeouts of seconds; bound what one client can hold).
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 256
    tcp_max_pipelined: int = 64
    drain_timeout: float = 2.0
    max_inflight: int = 4096  # forwards in flight at once; beyond, new ones are dropped
    # Each UDP listener's receive buffer (0: the OS default), so bursts are queued rather
    # than dropped while the loop is busy (agent/listeners.py set_receive_buffer).
    udp_rcvbuf: int = 4 * MIB
    # Health (agent/probes/): probing can be turned off; the mesh-wide down set still applies.
    probes: bool = True
    probe_report_interval: float = 5.0  # probe reports to the controller, batched this often
    # Front door (dnsmesh/admission.py). allow None: loopback plus the listen addresses
    # (and the node's own addresses when listening on a wildcard), see agent/frontdoor.py.
    allow: tuple[Network, ...] | None = None
    refuse_drop: bool = False  # --refuse-mode drop: send nothing to a client not allowed
    rate_limit: float = 0.0  # queries per second per source prefix over UDP; 0: off
    rate_limit_burst: int = 0  # 0: as many as one second's rate
    rate_limit_exempt: tuple[Network, ...] = ()
    rate_limit_v4_prefix: int = 32
    rate_limit_v6_prefix: int = 64
    rate_limit_slip: int = 2  # every 2nd query over the limit gets TC=1, the rest dropped
    amplification_factor: int = 10  # UDP answers over 512 octets: at most this x the query
    # Forwarders whose ECS option (RFC 7871) stands for the client (--trust-ecs-from).
    trust_ecs_from: tuple[Network, ...] = ()
    # The admin listener (/metrics, /healthz, /readyz, agent/metrics/admin.py); None: none.
    admin_listen: HostPort | None = HostPort("127.0.0.1", ADMIN_PORT)
    # Clients the guard trusts: loopback cannot be forged from the wire, and the node's own
    # clients keep getting whole EDNS answers over UDP.
    amplification_exempt: tuple[Network, ...] = LOOPBACK
    # DNS Cookies' server secret (--cookie-secret-file); None: a random one at start.
    cookie_secret: bytes | None = None
    cookie_secret_file: Path | None = None
    upstream_cookies: bool = False  # --upstream-cookies: send DNS cookies to plain upstreams
    # Hand-off (agent/handoff.py): the control socket a successor takes our sockets from
    # (STATE_DIR/agent.sock; None without a state folder), and whether to take over from
    # the agent listening there (--replace).
    control_socket: Path | None = None
    replace: bool = False
    query_log: QueryLogConfig | None = None  # --query-log (agent/querylog.py); None: off
    # --label KEY=VALUE: this node's labels, which slices' match.node_labels are decided by
    # (with or without a controller; the controller also gets them in the hello).
    labels: dict[str, str] = field(default_factory=dict)


def _check_ca_file(path: str) -> None:
    """Load ``--upstream-ca`` once at start, so a bad file stops the agent before it serves
    rather than failing every encrypted query later."""
    if not Path(path).is_file():
        raise ConfigError(f"--upstream-ca {path}: no such file")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"--upstream-ca {path}: no PEM CA certificate in it ({exc})") from None


def check_socket_mark(mark: int) -> None:
    """Set ``--socket-mark`` on a throwaway socket once at start, so a mark out of range or
    a missing capability stops the agent before it serves rather than failing every
    forwarded query later."""
    if not 0 < mark <= 0xFFFFFFFF:
        raise ConfigError("--socket-mark must be 1-0xffffffff (or 0: none)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        except PermissionError:
            raise ConfigError(
                "--socket-mark needs CAP_NET_RAW (Linux 5.17 and later) or CAP_NET_ADMIN"
            ) from None


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The AgentConfig for ``dnsmesh agent`` flags; ConfigError names the bad flag."""
    listen = tuple(parse_host_port(t) for t in (args.listen or ["127.0.0.1:53"]))
    upstreams = tuple(parse_upstream(t) for t in args.upstream) if args.upstream else None
    upstream_ca = getattr(args, "upstream_ca", None)
    if upstream_ca is not None:
        _check_ca_file(upstream_ca)
    for name in (
        "query_timeout",
        "attempt_timeout",
        "drain_timeout",
        "tcp_idle_timeout",
        "stale_answer_after",
        "upstream_idle_timeout",
    ):
        if getattr(args, name, 1.0) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if getattr(args, "probe_report_interval", 5.0) <= 0:
        raise ConfigError("--probe-report-interval must be positive")
    if args.cache_size < 0:
        raise ConfigError("--cache-size cannot be negative")
    udp_rcvbuf = parse_size(getattr(args, "udp_rcvbuf", "4MiB"))
    if udp_rcvbuf > MAX_UDP_RCVBUF:  # the kernel takes an int, and caps far below anyway
        raise ConfigError("--udp-rcvbuf must be at most 1GiB")
    if args.cache_max_ttl < 1:
        raise ConfigError("--cache-max-ttl must be at least 1")
    if args.max_inflight < 1 or args.tcp_max_connections < 1:
        raise ConfigError("--max-inflight and --tcp-max-connections must be at least 1")
    socket_mark = getattr(args, "socket_mark", 0)
    if socket_mark:
        check_socket_mark(socket_mark)
    allow = _networks("--allow", args.allow) if args.allow else None
    exempt = _networks("--rate-limit-exempt", args.rate_limit_exempt or [])
    trust_ecs_from = _networks("--trust-ecs-from", getattr(args, "trust_ecs_from", None) or [])
    if args.rate_limit < 0 or args.rate_limit_burst < 0 or args.rate_limit_slip < 0:
        raise ConfigError(
            "--rate-limit, --rate-limit-burst and --rate-limit-slip cannot be negative"
        )
    if not 0 <= args.rate_limit_prefix_v4 <= 32 or not 0 <= args.rate_limit_prefix_v6 <= 128:
        raise ConfigError("--rate-limit-prefix-v4 is 0-32 and --rate-limit-prefix-v6 is 0-128")
    if args.amplification_factor < 0:
        raise ConfigError("--amplification-factor cannot be negative")
    secret_file = getattr(args, "cookie_secret_file", None)
    secret = read_cookie_secret(Path(secret_file)) if secret_file is not None else None
    admin = getattr(args, "admin_listen", f"127.0.0.1:{ADMIN_PORT}")
    return AgentConfig(
        admin_listen=parse_admin_listen(admin, public=getattr(args, "admin_listen_public", False)),
        listen=listen,
        upstreams=upstreams,
        upstream_ca=Path(upstream_ca) if upstream_ca is not None else None,
        upstream_idle_timeout=getattr(args, "upstream_idle_timeout", 10.0),
        resolv_conf=Path(args.resolv_conf),
        policies=Path(args.policies) if args.policies else None,
        reload_interval=args.reload_interval,
        attempt_timeout=min(args.attempt_timeout, args.query_timeout),
        query_timeout=args.query_timeout,
        down_base=args.down_backoff,
        loop_check=not args.no_loop_check,
        socket_mark=socket_mark,
        cache_size=args.cache_size,
        max_ttl=args.cache_max_ttl,
        stale_ttl=args.stale_ttl,
        stale_answer_after=args.stale_answer_after,
        max_stale=args.max_stale,
        tcp_idle_timeout=args.tcp_idle_timeout,
        tcp_max_connections=args.tcp_max_connections,
        drain_timeout=args.drain_timeout,
        max_inflight=args.max_inflight,
        probes=not getattr(args, "no_probes", False),
        probe_report_interval=getattr(args, "probe_report_interval", 5.0),
        udp_rcvbuf=udp_rcvbuf,
        allow=allow,
        refuse_drop=args.refuse_mode == "drop",
        rate_limit=args.rate_limit,
        rate_limit_burst=args.rate_limit_burst,
        rate_limit_exempt=exempt,
        rate_limit_v4_prefix=args.rate_limit_prefix_v4,
        rate_limit_v6_prefix=args.rate_limit_prefix_v6,
        rate_limit_slip=args.rate_limit_slip,
        amplification_factor=args.amplification_factor,
        trust_ecs_from=trust_ecs_from,
        cookie_secret=secret,
        cookie_secret_file=Path(secret_file) if secret_file is not None else None,
        upstream_cookies=getattr(args, "upstream_cookies", False),
        control_socket=_control_socket(args),
        replace=getattr(args, "replace", False),
        query_log=query_log_config_from_args(args),
        labels=parse_labels(getattr(args, "label", [])),
    )


def read_cookie_secret(path: Path) -> bytes:
    """The secret in ``--cookie-secret-file`` (32 hex digits); ConfigError says what is wrong,
    so a bad file stops the agent at start rather than leave agents with different secrets."""
    try:
        return parse_secret(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--cookie-secret-file {path}: cannot read it ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--cookie-secret-file {path}: {exc}") from None


def parse_admin_listen(text: str, *, public: bool) -> HostPort | None:
    """``--admin-listen``: HOST:PORT, or ``off``. Metrics tell a lot about a node (its
    policies, endpoints, clients' query mix), so an address other than loopback needs
    ``--admin-listen-public`` said explicitly."""
    if text.strip().lower() == "off":
        return None
    try:
        address = parse_host_port(text)
    except ConfigError as exc:
        raise ConfigError(f"--admin-listen: {exc}") from None
    if not public and not ipaddress.ip_address(address.host).is_loopback:
        raise ConfigError(
            f"--admin-listen {address} is not a loopback address: metrics and readiness would "
            "be open to the network; add --admin-listen-public if that is meant"
        )
    return address


def _control_socket(args: argparse.Namespace) -> Path | None:
    """STATE_DIR/agent.sock: with --state-dir, or --controller (whose state folder has a
    default); a stand-alone agent without a state folder cannot hand off."""
    from agent.handoff import control_path
    from agent.sync.config import state_dir_from_args

    if getattr(args, "state_dir", None) is None and not getattr(args, "controller", None):
        return None
    return control_path(state_dir_from_args(args))


def _networks(flag: str, texts: list[str]) -> tuple[Network, ...]:
    try:
        return tuple(parse_network(text) for text in texts)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
