"""Running the controller: open the database, check (or migrate) its schema, serve the API."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import secrets
import signal
import socket
import sys
from collections.abc import Callable
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine

from controller.db.engine import build_engine, is_unavailable, redact, resolve_database_url
from controller.db.migrate import require_current_schema, upgrade
from controller.db.session import Database
from controller.errors import DatabaseUnavailable
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields

if TYPE_CHECKING:
    from controller.push_settings import PushSettings
    from controller.quorum_monitor import HealthSettings
    from controller.services.probe_assignment import ProbingSettings
    from controller.services.served_share import ShareSettings
    from controller.tls_store import TlsFiles
    from dnsmesh.quorum import QuorumRule

log = logging.getLogger("dnsmesh.controller")

# agents.replica is VARCHAR(128): a longer id would fail every agent write on PostgreSQL.
MAX_REPLICA_ID = 128
CLI_ACTOR = "cli"  # the audit log's "who" for changes made with a local command


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8053', '[::1]:8053' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {value!r} is not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    return host, int(port)


def open_database(url: str, *, migrate: bool) -> Engine:
    """An engine on a database at the current schema (migrated first if asked)."""
    engine = build_engine(url)
    try:
        if migrate:
            upgrade(engine)
        require_current_schema(engine, url)
    except Exception as error:
        engine.dispose()
        if is_unavailable(error):
            raise DatabaseUnavailable(
                f"cannot reach the database {redact(url)}: {error}"
            ) from error
        raise
    return engine


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error}") from error
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def run_controller(args: argparse.Namespace) -> int:
    import uvicorn

    from controller.agent_trust import TrustSettings
    from controller.api import create_app
    from controller.api.body import DEFAULT_MAX_BODY
    from controller.identity_refusals import IdentityRefusals
    from controller.keepalive import paced_websockets
    from controller.tls_peer import server_context_factory, uvicorn_protocols

    url = resolve_database_url(args.database)
    host, port = parse_listen(args.listen)
    push = push_settings(args)  # flags first: a bad one fails before any socket or database
    require_mtls = agent_mtls_required(args)
    cert_ttl = agent_cert_ttl(args)
    tls = tls_files(args)
    max_body = DEFAULT_MAX_BODY if args.max_body is None else args.max_body
    if max_body < 1:
        raise ConfigError("--max-body must be at least 1 byte")
    if args.metrics_token == "":
        raise ConfigError("--metrics-token cannot be empty (leave it out for an open /metrics)")
    engine = open_database(url, migrate=args.migrate)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
    refusals = IdentityRefusals()
    trust = None
    ssl: dict[str, Any] = {"ws": paced_websockets()}  # the TLS protocols below pace too
    if tls is not None:
        trust = TrustSettings(tls.signer, tls.bundle(), args.trust_domain, cert_ttl, require_mtls)
        ssl = {
            "ssl_certfile": str(tls.cert_file),
            "ssl_keyfile": str(tls.key_file),
            # Client certificates of the mesh CA, asked for but optional (controller/tls_peer.py).
            "ssl_context_factory": server_context_factory(tls.bundle_file, refusals),
            **uvicorn_protocols(),
        }
    app = create_app(
        Database(engine),
        push,
        ca_bundle=tls.bundle() if tls else None,
        max_body=max_body,
        trust=trust,
        refusals=refusals,
        metrics_token=args.metrics_token,
    )
    config = uvicorn.Config(
        app,
        log_config=None,  # our handlers (dnsmesh.logs) format uvicorn's records too
        access_log=False,
        lifespan="on",  # the push hub says goodbye to its agents at shutdown
        server_header=False,
        # A pong must come back within one more interval, so a dead agent is dropped
        # (and shown disconnected) about two intervals after it last answered; the interval
        # grows with the fleet past MAX_PING_RATE pings a second (controller.keepalive).
        ws_ping_interval=push.ping_interval_s,
        ws_ping_timeout=push.ping_interval_s,
        ws_per_message_deflate=push.ws_deflate,
        **ssl,
    )
    server = uvicorn.Server(config)
    # Tests and scripts read this line to learn the port when --listen asked for port 0.
    log.info(
        "controller.listening",
        extra=fields(
            address=shown,
            url=f"{'https' if tls else 'http'}://{shown}",
            database=redact(url),
            agent_mtls="required"
            if trust and trust.require_mtls
            else "optional"
            if trust
            else "off",
        ),
    )

    # uvicorn drains connections on SIGTERM and then re-raises the signal to the handler
    # that was in place before it; a handler (rather than SIG_DFL) lets a stop requested by
    # systemd or a test end with status 0 instead of being killed by the re-raised signal.
    # Until uvicorn installs its own handlers (during startup) this one is the only one, so
    # it must stop the server itself: a SIGTERM in that window was once swallowed and the
    # controller ran on until SIGKILL.
    def stop_server(_signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, stop_server)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        engine.dispose()
    log.info("controller.stopped")
    return 0


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """With --tls: the CA and serving certificate, made or renewed; None without."""
    if not args.tls:
        given = [flag for flag, value in _TLS_ONLY.items() if getattr(args, value)]
        if given:
            raise ConfigError(f"{', '.join(given)} need --tls")
        return None
    from controller.tls_store import ensure_tls

    return ensure_tls(
        args.data_dir,
        sans=args.tls_san,
        trust_domain=args.trust_domain,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
    )


_TLS_ONLY = {"--tls-san": "tls_san", "--ca-cert": "ca_cert", "--ca-key": "ca_key"}


def agent_mtls_required(args: argparse.Namespace) -> bool:
    """--require-agent-mtls: on by default with --tls; impossible without it."""
    if args.require_agent_mtls and not args.tls:
        raise ConfigError(
            "--require-agent-mtls needs --tls (agents' certificates come from its CA)"
        )
    return bool(args.tls if args.require_agent_mtls is None else args.require_agent_mtls)


def agent_cert_ttl(args: argparse.Namespace) -> timedelta:
    from controller.auth import parse_ttl
    from controller.ca import MAX_SVID_TTL

    ttl = _cli_refusal(parse_ttl, args.agent_cert_ttl, field="--agent-cert-ttl")
    if ttl > MAX_SVID_TTL:
        raise ConfigError(f"--agent-cert-ttl must be at most {MAX_SVID_TTL.days}d")
    return ttl


def push_settings(args: argparse.Namespace) -> PushSettings:
    from controller.push_settings import PushSettings

    settings = PushSettings(
        ping_interval_s=args.ping_interval,
        catch_up_s=args.catch_up_interval,
        change_retention=args.change_retention,
        ws_deflate=args.ws_deflate,
    )
    if args.ping_interval <= 0 or args.catch_up_interval <= 0 or args.change_retention < 0:
        raise ConfigError(
            "--ping-interval and --catch-up-interval must be > 0, --change-retention >= 0"
        )
    if args.replica_id:
        if len(args.replica_id) > MAX_REPLICA_ID:
            raise ConfigError(f"--replica-id must be at most {MAX_REPLICA_ID} characters")
        settings = dataclasses.replace(settings, replica_id=args.replica_id)
    return dataclasses.replace(settings, health=health_settings(args), share=share_settings(args))


def share_settings(args: argparse.Namespace) -> ShareSettings:
    from controller.services.served_share import ShareSettings
    from dnsmesh.scaling import ScaleRule
    from dnsmesh.share import ShareRule

    try:
        rule = ShareRule(args.share_drift_threshold, args.share_min_answers)
    except ValueError as error:
        raise ConfigError(f"--share-drift-threshold/--share-min-answers: {error}") from None
    try:
        scale = ScaleRule(
            window_s=args.scale_window, hold_s=args.scale_hold, step_up=args.scale_step_up
        )
    except ValueError as error:
        raise ConfigError(f"--scale-window/--scale-hold/--scale-step-up: {error}") from None
    return ShareSettings(rule=rule, scale=scale)


def health_settings(args: argparse.Namespace) -> HealthSettings:
    from controller.quorum_monitor import HealthSettings
    from dnsmesh.quorum import QuorumRule

    try:
        rule = QuorumRule(
            min_agents=args.quorum_min_agents,
            fail_loss=args.quorum_fail_loss,
            recover_loss=args.quorum_recover_loss,
            stale_s=args.report_stale_after,
        )
    except ValueError as error:
        raise ConfigError(f"--quorum-*/--report-stale-after: {error}") from None
    if args.report_retention < 0:
        raise ConfigError("--report-retention must be >= 0")
    if args.report_history_window < 0:
        raise ConfigError("--report-history-window must be >= 0")
    return HealthSettings(
        rule=rule,
        history_s=args.report_retention,
        history_window_s=args.report_history_window,
        probing=probing_settings(args, rule),
    )


def probing_settings(args: argparse.Namespace, rule: QuorumRule) -> ProbingSettings:
    from controller.services.probe_assignment import ProbingSettings
    from dnsmesh.probing import budget_error

    if args.probes_per_endpoint < 0:
        raise ConfigError("--probes-per-endpoint must be >= 0")
    if args.probe_reassign_delay < 0:
        raise ConfigError("--probe-reassign-delay must be >= 0")
    if not 1 <= len(args.probe_spread_label) <= 63:
        raise ConfigError("--probe-spread-label must be 1-63 characters (a label key)")
    problem = budget_error(rule.min_agents, args.probes_per_endpoint)
    if problem is not None:
        raise ConfigError(problem)
    return ProbingSettings(
        per_endpoint=args.probes_per_endpoint,
        spread_label=args.probe_spread_label,
        delay_s=args.probe_reassign_delay,
        report_stale_s=rule.stale_s,
        min_agents=rule.min_agents,
    )


def run_db_upgrade(args: argparse.Namespace) -> int:
    from controller.db.migrate import head_revisions

    url = resolve_database_url(args.database)
    engine = open_database(url, migrate=True)
    engine.dispose()
    print(f"database {redact(url)} is at revision {', '.join(head_revisions())} (head)")
    return 0


def run_token_create(args: argparse.Namespace) -> int:
    from controller.auth import TokenStore, parse_ttl
    from controller.join_tokens import JoinTokens

    ttl = _cli_refusal(parse_ttl, args.ttl, field="--ttl") if args.ttl is not None else None
    if args.join and args.role != "agent":
        raise ConfigError("--join makes a token of role agent only (--role agent --join)")
    if args.node is not None and not args.join:
        raise ConfigError("--node binds a join token: it needs --join")
    name = args.name
    if name is None and args.join:
        name = f"join-{(args.node or 'node').lower()[:40]}-{secrets.token_hex(3)}"
    if name is None:
        raise ConfigError("--name is required (it is shown in the audit log)")
    url = resolve_database_url(args.database)
    engine = open_database(url, migrate=False)
    try:
        db = Database(engine)
        if args.join:
            info, secret = _cli_refusal(
                JoinTokens(db).create, name, actor=CLI_ACTOR, node=args.node, ttl=ttl
            )
        else:
            tokens = TokenStore(db)
            info, secret = _cli_refusal(tokens.create, name, args.role, actor=CLI_ACTOR, ttl=ttl)
    finally:
        engine.dispose()
    print(secret)  # alone on stdout so `TOKEN=$(dnsmesh token create ...)` works
    kind = "join token" if info.join else "token"
    bound = f", for node {info.join_node}" if info.join_node else ""
    print(
        f"created {kind} {info.name!r} (role {info.role.value}{bound}"
        f"{', expires ' + info.expires_at if info.expires_at else ''}); "
        f"it is shown only this once{'; it works once' if info.join else ''}",
        file=sys.stderr,
    )
    return 0


def run_token_list(args: argparse.Namespace) -> int:
    from controller.auth import TokenStore

    url = resolve_database_url(args.database)
    engine = open_database(url, migrate=False)
    try:
        tokens = TokenStore(Database(engine)).list()
    finally:
        engine.dispose()
    rows = [("NAME", "ROLE", "PREFIX", "CREATED", "EXPIRES", "BY")]
    rows += [
        (
            t.name,
            _kind(t.role.value, t.join, t.join_node, t.spent_at),
            t.prefix,
            t.created_at,
            t.expires_at or "never",
            t.created_by,
        )
        for t in tokens
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _kind(role: str, join: bool, node: str | None, spent_at: str | None) -> str:
    """The ROLE column: a join token says so, for which node, and whether it was used."""
    if not join:
        return role
    return f"{role} (join{' ' + node if node else ''}{', spent' if spent_at else ''})"


def run_ca_revoke(args: argparse.Namespace) -> int:
    from controller.agent_certs import CertificateRegistry

    url = resolve_database_url(args.database)
    engine = open_database(url, migrate=False)
    try:
        count = _cli_refusal(
            CertificateRegistry(Database(engine)).revoke, args.node, actor=CLI_ACTOR
        )
    finally:
        engine.dispose()
    print(
        f"revoked {count} certificate{'' if count == 1 else 's'} of node {args.node!r}: its "
        "stream is closed and it is refused from now on; it may join again with a new join "
        "token",
        file=sys.stderr,
    )
    return 0


def run_ca_list(args: argparse.Namespace) -> int:
    from controller.agent_certs import CertificateRegistry

    url = resolve_database_url(args.database)
    engine = open_database(url, migrate=False)
    try:
        issued = CertificateRegistry(Database(engine)).list(args.node)
    finally:
        engine.dispose()
    rows = [("NODE", "SERIAL", "ISSUED", "EXPIRES", "BY", "REVOKED")]
    rows += [
        (c.node_name, c.serial, c.issued_at, c.not_after, c.issued_by, c.revoked_at or "-")
        for c in issued
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def run_token_revoke(args: argparse.Namespace) -> int:
    from controller.auth import TokenStore

    url = resolve_database_url(args.database)
    engine = open_database(url, migrate=False)
    try:
        _cli_refusal(TokenStore(Database(engine)).revoke, args.name, actor=CLI_ACTOR)
    finally:
        engine.dispose()
    print(f"revoked token {args.name!r}", file=sys.stderr)
    return 0


T = TypeVar("T")


def _cli_refusal(func: Callable[..., T], *args: Any, field: str = "", **kwargs: Any) -> T:
    """The store's refusals (a bad name, no such token) as the command's error message."""
    from controller.errors import AlreadyExists, InvalidRequest, NotFound

    try:
        return func(*args, **kwargs)
    except InvalidRequest as error:
        detail = "; ".join(f.message for f in error.fields)
        raise ConfigError(f"{field + ' ' if field else ''}{error}: {detail}") from None
    except (NotFound, AlreadyExists) as error:
        raise ConfigError(str(error)) from None
