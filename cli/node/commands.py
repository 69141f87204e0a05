"""``dnsmesh node install|uninstall|capture``: make the agent this node's resolver, and undo it."""

from __future__ import annotations

import argparse
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.cli import mark
from cli.node.files import Root
from dnsmesh.errors import ConfigError
from dnsmesh.nftcapture import DEFAULT_MARK

if TYPE_CHECKING:
    from cli.node.install import Run


def add_node_commands(
    subcommands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    node = subcommands.add_parser(
        "node", parents=[common], help="make the agent this node's resolver, or undo it"
    )
    actions = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    tree = argparse.ArgumentParser(add_help=False)
    tree.add_argument(
        "--root", default="/", metavar="DIR", help="work on the tree rooted at DIR (an image)"
    )
    tree.add_argument(
        "--dry-run", action="store_true", help="print every file it would change; change nothing"
    )

    install = actions.add_parser(
        "install", parents=[common, tree], help="the agent becomes the resolver (resolv.conf)"
    )
    install.add_argument("--controller", metavar="URL", help="the controller the agent follows")
    secret = install.add_mutually_exclusive_group()
    secret.add_argument("--join-token", metavar="T", help="a one-time join token (dnsmj_...)")
    secret.add_argument("--join-token-file", metavar="F", help="read the join token from F")
    install.add_argument(
        "--ca-file", metavar="F", help="the CA bundle that vouches for the controller"
    )
    install.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="an address the agent serves on port 53 and resolv.conf names (repeatable; "
        "default 127.0.0.1 and ::1)",
    )
    install.set_defaults(run=_install)

    uninstall = actions.add_parser(
        "uninstall", parents=[common, tree], help="put back the node's resolver as it was"
    )
    uninstall.set_defaults(run=_uninstall)

    capture = actions.add_parser(
        "capture", parents=[common], help="redirect the node's port-53 traffic to the agent"
    )
    capture.add_argument("state", choices=["on", "off"])
    capture.add_argument(
        "--agent",
        action="append",
        metavar="ADDR:PORT",
        help="where captured queries go: one IPv4 and/or one IPv6 address (default "
        "127.0.0.1:53 and [::1]:53)",
    )
    capture.add_argument(
        "--exempt-mark",
        type=mark,
        default=DEFAULT_MARK,
        metavar="MARK",
        help=f"packets with this mark pass uncaptured: the agent's --socket-mark "
        f"(default {DEFAULT_MARK:#x})",
    )
    capture.add_argument("--dry-run", action="store_true", help="print the ruleset; change nothing")
    capture.set_defaults(run=_capture)


def _join_token(args: argparse.Namespace) -> str | None:
    token: str | None = args.join_token
    if args.join_token_file:
        try:
            token = Path(args.join_token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--join-token-file {args.join_token_file}: {exc.strerror}") from None
    if token is None:
        return None
    if not token or any(c.isspace() for c in token):
        raise ConfigError("the join token must be one word (dnsmj_...)")
    if not args.controller:
        raise ConfigError("a join token needs --controller URL")
    return token


def _controller(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() or c in "\"'\\$" for c in url)
    ):
        raise ConfigError(f"--controller {url!r} is not an http:// or https:// URL")
    return url


def _ca_pem(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
        ssl.create_default_context(cadata=data.decode("ascii"))
    except (ssl.SSLError, ValueError):  # before OSError: SSLError is one
        raise ConfigError(f"--ca-file {path}: no PEM CA certificate in it") from None
    except OSError as exc:
        raise ConfigError(f"--ca-file {path}: {exc.strerror}") from None
    return data


def _systemctl(root: Root) -> Run | None:
    """Runs systemctl when ``root`` is this running systemd node; None otherwise."""
    if not root.is_node or not Path("/run/systemd/system").is_dir():
        return None
    systemctl = shutil.which("systemctl") or "systemctl"

    def run(command: list[str]) -> None:
        done = subprocess.run([systemctl, *command], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"systemctl {' '.join(command)}: {done.stderr.strip()}")

    return run


def _install(args: argparse.Namespace) -> int:
    from cli.node.install import InstallRequest, install, listen_hosts

    request = InstallRequest(
        root=Root(Path(args.root)),
        listen=listen_hosts(args.listen),
        controller=_controller(args.controller),
        join_token=_join_token(args),
        ca_pem=_ca_pem(args.ca_file),
    )
    run = None if args.dry_run else _systemctl(request.root)
    install(request, sys.stdout, dry_run=args.dry_run, run=run)
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from cli.node.install import uninstall

    root = Root(Path(args.root))
    run = None if args.dry_run else _systemctl(root)
    uninstall(root, sys.stdout, dry_run=args.dry_run, run=run)
    return 0


def _capture(args: argparse.Namespace) -> int:
    from cli.node.capture import capture_off, capture_on, capture_targets

    if args.state == "on":
        capture_on(capture_targets(args.agent), args.exempt_mark, sys.stdout, dry_run=args.dry_run)
    else:
        capture_off(sys.stdout, dry_run=args.dry_run)
    return 0
