"""``dnsmesh up``: a whole mesh on one machine: a controller on SQLite, an agent, policies applied.

It is the quick start and the shape of production in miniature: two child processes
(``dnsmesh controller`` and ``dnsmesh agent --controller ...``), the agent fed by push,
the policies applied through the REST API like ``dnsmesh apply`` does. Everything it
keeps lives in one data folder (default ``./.dnsmesh``, mode 0700): the SQLite database
(migrated on every start), an admin token minted on first run (a file readable only by
the user), the TLS CA and serving certificate (``tls/``: the controller serves HTTPS and
WSS, and the agent and the apply step verify it with ``tls/ca-bundle.pem``), and the
agent's state folder. The agent joins as production agents do: while its state folder
holds no valid certificate, ``up`` makes a one-time join token (``agent-join-token``, 1 h)
and the agent trades it for its certificate, then connects with mTLS and no token.

A child that dies is started again after a backoff (logged: up.child_exited, then
up.child_restarted; cli.supervise); the other keeps running, so DNS goes on being answered
while the controller restarts. One that dies right after each start, five times in a row,
ends ``up`` with status 1.

Ctrl-C or SIGTERM stops the agent first (so it does not log a lost controller), then the
controller, and exits 0. The children run in their own process group, so a Ctrl-C at the
terminal reaches only ``up``, which stops them in that order; if ``up`` itself dies they
get SIGTERM from the kernel (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from cli.supervise import GaveUp, Process, Supervised
from dnsmesh.errors import ConfigError, DnsmeshError
from dnsmesh.logs import fields

log = logging.getLogger("dnsmesh.up")

ADMIN_TOKEN = "admin-token"
JOIN_TOKEN = "agent-join-token"
OLD_AGENT_TOKEN = "agent-token"  # what up kept before agents joined: revoked, removed
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def add_up_command(
    subcommands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    up = subcommands.add_parser(
        "up",
        parents=[common],
        help="run a local mesh: a controller on SQLite and an agent, with policies applied",
    )
    up.add_argument(
        "-f",
        "--filename",
        metavar="PATH",
        type=Path,
        help="policy file or folder to apply (default: ./policies if it exists)",
    )
    up.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        default=Path(".dnsmesh"),
        help="database, tokens and agent state",
    )
    up.add_argument(
        "--api",
        metavar="HOST:PORT",
        default="127.0.0.1:8053",
        help="the controller's HTTP API",
    )
    up.add_argument(
        "--dns",
        metavar="HOST:PORT",
        default="127.0.0.1:1053",
        help="the agent's DNS listener, UDP and TCP",
    )
    up.add_argument(
        "--upstream",
        metavar="HOST[:PORT]",
        action="append",
        default=[],
        help="upstream resolver for other names (repeatable; default: /etc/resolv.conf)",
    )
    up.set_defaults(run=run_up)


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {text!r} is not HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_free(host: str, port: int, kind: int, flag: str) -> None:
    """Refuse early when a port is taken, rather than talk to someone else's server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{flag} {host}:{port} is not free: {exc.strerror or exc}") from exc


def _write_secret(path: Path, secret: str) -> None:
    """A new file readable by the user only (O_EXCL: never through someone's symlink)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")


def _ensure_token(data_dir: Path, file_name: str, role: str, url: str) -> str:
    """The token stored in ``file_name`` if the database still accepts it, else a new one."""
    from controller.auth import TokenStore
    from controller.db.engine import build_engine
    from controller.db.session import Database

    path = data_dir / file_name
    engine = build_engine(url)
    try:
        tokens = TokenStore(Database(engine))
        with contextlib.suppress(OSError):
            secret = path.read_text().strip()
            if secret and tokens.authenticate(secret) is not None:
                return secret
        name = f"up-{role}"
        if any(info.name == name for info in tokens.list()):
            tokens.revoke(name, actor="up")  # its secret was lost with the file
        _info, secret = tokens.create(name, role, actor="up")
    finally:
        engine.dispose()
    _write_secret(path, secret)
    return secret


def node_name() -> str:
    """The agent's node name: this host's name when it can be one, else ``local``."""
    from controller.identity import check_node_name

    try:
        return check_node_name(socket.gethostname())
    except ValueError:
        return "local"


def _join_token(data_dir: Path, url: str, node: str) -> Path | None:
    """A fresh join token for the agent, unless its state folder holds a valid certificate."""
    from datetime import UTC, datetime

    from agent.sync.identity import IdentityFile
    from controller.auth import TokenStore
    from controller.db.engine import build_engine
    from controller.db.session import Database
    from controller.join_tokens import JoinTokens

    path = data_dir / JOIN_TOKEN
    with contextlib.suppress(DnsmeshError):
        identity = IdentityFile(data_dir / "agent").load()
        if identity is not None and not identity.expired(datetime.now(UTC)):
            path.unlink(missing_ok=True)
            return None
    engine = build_engine(url)
    try:
        db = Database(engine)
        tokens = TokenStore(db)
        if any(info.name == "up-agent" for info in tokens.list()):
            tokens.revoke("up-agent", actor="up")  # the agent's old bearer token
        (data_dir / OLD_AGENT_TOKEN).unlink(missing_ok=True)
        _info, secret = JoinTokens(db).create(
            f"up-join-{os.urandom(3).hex()}", actor="up", node=node
        )
    finally:
        engine.dispose()
    _write_secret(path, secret)
    return path


def _prepare(data_dir: Path) -> str:
    """Create the data folder and migrate its database; returns the database URL."""
    from controller.server import open_database

    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data folder {data_dir}: {exc}") from exc
    url = f"sqlite:///{(data_dir / 'dnsmesh.db').resolve()}"
    open_database(url, migrate=True).dispose()
    return url


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One ``dnsmesh`` subcommand as a child process (its logs go to our stderr)."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches `up` only; it stops us in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def returncode(self) -> int | None:
        return self.process.poll()

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("up.child_killed", extra=fields(child=self.name))
            self.process.kill()
            return self.process.wait()


def _wait_ready(what: str, child: Process, ready: Any, stop: threading.Event) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if stop.is_set():
            raise _Stopped
        if not child.alive():
            raise DnsmeshError(f"the {what} exited with status {child.returncode()}")
        if time.monotonic() > deadline:
            raise DnsmeshError(f"the {what} did not become ready within {START_TIMEOUT:.0f}s")
        stop.wait(0.05)


class _Stopped(Exception):
    """A signal arrived while starting."""


def _healthy(api: str, trust: ssl.SSLContext) -> bool:
    import httpx

    try:
        response = httpx.get(f"{api}/healthz", timeout=1.0, trust_env=False, verify=trust)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _agent_converged(
    api: str, token: str, agent_id: str, revision: int, trust: ssl.SSLContext
) -> bool:
    import httpx

    try:
        body = httpx.get(
            f"{api}/v1/agents",
            headers={"Authorization": f"Bearer {token}"},
            timeout=2.0,
            trust_env=False,
            verify=trust,
        ).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(
        item.get("agent_id") == agent_id
        and item.get("connected")
        and item.get("applied_revision", -1) >= revision
        for item in body.get("items", [])
    )


def _apply(api: str, token: str, ca_file: Path, path: Path, out: TextIO) -> int:
    """``dnsmesh apply -f path`` against the controller; returns the revision after it."""
    from cli.client import ControllerClient
    from cli.commands import run_apply

    args = argparse.Namespace(
        filename=path,
        dry_run=False,
        force=False,
        prune=False,
        selector=[],
        server=api,
        token=token,
        ca_file=ca_file,
    )
    if run_apply(args, out) != 0:
        raise DnsmeshError(f"the policies in {path} were refused (see above); nothing applied")
    with ControllerClient(api, token, ca_file=ca_file) as client:
        return client.list_policies().revision


def run_up(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    api_host, api_port = _host_port(args.api, "--api")
    dns_host, dns_port = _host_port(args.dns, "--dns")
    policies: Path | None = args.filename
    if policies is None and Path("policies").is_dir():
        policies = Path("policies")
    count = 0
    if policies is not None:
        from dnsmesh.policyfile import load_policy_path

        count = len(load_policy_path(policies))  # a bad file stops us before anything starts
        if count == 0 and args.filename is not None:
            raise ConfigError(f"{policies} holds no policy (no .yaml or .yml document)")
        if count == 0:
            policies = None  # an empty ./policies: nothing to apply, as when there is none
    _check_free(api_host, api_port, socket.SOCK_STREAM, "--api")
    _check_free(dns_host, dns_port, socket.SOCK_DGRAM, "--dns")
    _check_free(dns_host, dns_port, socket.SOCK_STREAM, "--dns")
    if args.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter
    data_dir: Path = args.data_dir
    url = _prepare(data_dir)
    admin = _ensure_token(data_dir, ADMIN_TOKEN, "admin", url)
    node = node_name()
    join_token = _join_token(data_dir, url, node)
    # TLS as in production: the controller's CA and serving certificate live in the data
    # folder (made here on the first run, so the bundle exists before the controller does).
    from cli.trust import client_context
    from controller.tls_store import ensure_tls

    # A wildcard listener is reached (and its certificate checked) on loopback.
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}
    client_host = wildcard.get(api_host, api_host)
    sans = [] if api_host in wildcard else [api_host]
    tls_flags = ["--tls", "--data-dir", str(data_dir), *(f for s in sans for f in ("--tls-san", s))]
    ca_file = ensure_tls(data_dir, sans=sans).bundle_file
    trust = client_context(ca_file)
    api = f"https://{_url_host(client_host)}:{api_port}"
    logging_flags = ["--log-level", args.log_level, "--log-format", args.log_format]

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[Supervised] = []
    status = 0
    try:
        controller_args = [
            "controller",
            "--database",
            url,
            "--listen",
            args.api,
            *tls_flags,
            *logging_flags,
        ]
        controller = Supervised(lambda: Child("controller", controller_args))
        children.append(controller)
        _wait_ready("controller", controller.child, lambda: _healthy(api, trust), stop)
        revision = _apply(api, admin, ca_file, policies, out) if policies is not None else 0
        agent_state = data_dir / "agent"
        upstreams = [flag for u in args.upstream for flag in ("--upstream", u)]
        # The join token is used once; a restarted agent connects with its certificate.
        joining = ["--join-token-file", str(join_token)] if join_token is not None else []
        agent_args = [
            "agent",
            "--controller",
            api,
            *joining,
            "--node-name",
            node,
            "--ca-file",
            str(ca_file),
            "--state-dir",
            str(agent_state),
            "--listen",
            args.dns,
            *upstreams,
            *logging_flags,
        ]
        agent = Supervised(lambda: Child("agent", agent_args))
        children.append(agent)
        _wait_ready(
            "agent",
            agent.child,
            lambda: _agent_converged(api, admin, node, revision, trust),
            stop,
        )
        applied = f"{count} from {policies} (revision {revision})" if policies else "none"
        _print_summary(out, api, args.dns, data_dir, applied, dns_host, dns_port, ca_file)
        # A dead child is started again (with a backoff), the other one keeps running: the
        # agent answers from its state while the controller is away, as when run alone.
        while not stop.wait(0.2):
            for supervised in children:
                supervised.check()
    except GaveUp as exc:
        log.error("up.gave_up", extra=fields(reason=str(exc)))
        print(f"dnsmesh up: {exc}", file=sys.stderr)
        status = 1
    except _Stopped:
        pass
    except DnsmeshError as exc:
        print(f"dnsmesh up: {exc}", file=sys.stderr)
        status = 1
    finally:
        for supervised in reversed(children):  # the agent first, then the controller
            supervised.child.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        log.info("up.stopped", extra=fields(signal=received[0]))
    return status


def _print_summary(
    out: TextIO,
    api: str,
    dns: str,
    data_dir: Path,
    applied: str,
    dns_host: str,
    dns_port: int,
    ca_file: Path,
) -> None:
    token_file = data_dir / ADMIN_TOKEN
    lines = [
        "",
        "dnsmesh is up",
        f"  API          {api}",
        f"  DNS          {dns} (UDP and TCP)",
        f"  web UI       {api}/ui/ (log in with the admin token; trust the CA bundle first)",
        f"  admin token  {token_file} (export DNSMESH_TOKEN=$(cat {token_file}))",
        f"  CA bundle    {ca_file} (export DNSMESH_CA_FILE={ca_file})",
        f"  policies     {applied}",
        f"  data         {data_dir}/ (database, tokens, TLS CA and keys, agent state and "
        "certificate)",
        "",
        "try:",
        f"  dig @{dns_host} -p {dns_port} checkout.mesh.internal",
        f"  export DNSMESH_TOKEN=$(cat {token_file}) DNSMESH_SERVER={api} "
        f"DNSMESH_CA_FILE={ca_file}",
        "  dnsmesh get policies; dnsmesh get agents",
        "Ctrl-C stops both.",
        "",
    ]
    out.write("\n".join(lines))
    out.flush()
