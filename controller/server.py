"""Running the controller: open the database, check (or migrate) its schema, serve the API."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import socket
import sys
from collections.abc import Callable
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
    from controller.tls_store import TlsFiles

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

    from controller.api import create_app
    from controller.api.body import DEFAULT_MAX_BODY

    url = resolve_database_url(args.database)
    host, port = parse_listen(args.listen)
    push = push_settings(args)  # flags first: a bad one fails before any socket or database
    tls = tls_files(args)
    max_body = DEFAULT_MAX_BODY if args.max_body is None else args.max_body
    if max_body < 1:
        raise ConfigError("--max-body must be at least 1 byte")
    engine = open_database(url, migrate=args.migrate)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
    app = create_app(
        Database(engine),
        push,
        ca_bundle=tls.bundle() if tls else None,
        max_body=max_body,
        metrics_token=args.metrics_token,
    )
    ssl: dict[str, Any] = {}
    if tls is not None:
        ssl = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
    config = uvicorn.Config(
        app,
        log_config=None,  # our handlers (dnsmesh.logs) format uvicorn's records too
        access_log=False,
        lifespan="on",  # the push hub says goodbye to its agents at shutdown
        server_header=False,
        # A pong must come back within one more interval, so a dead agent is dropped
        # (and shown disconnected) about two intervals after it last answered.
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
    return dataclasses.replace(settings, health=health_settings(args))


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
    return HealthSettings(rule=rule, history_s=args.report_retention)


def run_db_upgrade(args: argparse.Namespace) -> int:
    from controller.db.migrate import head_revisions

    url = resolve_database_url(args.database)
    engine = open_database(url, migrate=True)
    engine.dispose()
    print(f"database {redact(url)} is at revision {', '.join(head_revisions())} (head)")
    return 0


def run_token_create(args: argparse.Namespace) -> int:
    from controller.auth import TokenStore, parse_ttl

    ttl = _cli_refusal(parse_ttl, args.ttl, field="--ttl") if args.ttl is not None else None
    url = resolve_database_url(args.database)
    engine = open_database(url, migrate=False)
    try:
        tokens = TokenStore(Database(engine))
        info, secret = _cli_refusal(tokens.create, args.name, args.role, actor=CLI_ACTOR, ttl=ttl)
    finally:
        engine.dispose()
    print(secret)  # alone on stdout so `TOKEN=$(dnsmesh token create ...)` works
    print(
        f"created token {info.name!r} (role {info.role.value}"
        f"{', expires ' + info.expires_at if info.expires_at else ''}); "
        "it is shown only this once",
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
        (t.name, t.role.value, t.prefix, t.created_at, t.expires_at or "never", t.created_by)
        for t in tokens
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
