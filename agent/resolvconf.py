"""Upstreams from resolv.conf, minus the agent itself so it never forwards to itself."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.config import DNS_PORT, HostPort
from dnsmesh.errors import ConfigError
from dnsmesh.logs import fields

log = logging.getLogger(__name__)


def parse_resolv_conf(text: str) -> list[HostPort]:
    """The ``nameserver`` lines of resolv.conf(5), in order, as port-53 addresses.

    Comments start with '#' or ';'. A link-local IPv6 scope (``fe80::1%eth0``) is dropped
    with its zone, which asyncio cannot route by name here; glibc ignores lines it cannot
    parse, and so do we.
    """
    out: list[HostPort] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].split()
        if len(line) < 2 or line[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(line[1].split("%", 1)[0])
        except ValueError:
            continue
        hostport = HostPort(address.compressed, DNS_PORT)
        if hostport not in out:
            out.append(hostport)
    return out


def is_local_address(host: str) -> bool:
    """Whether ``host`` belongs to this machine: binding a socket to it succeeds.

    The kernel knows the local addresses; asking it by bind() needs no interface listing
    and sees exactly what a datagram sent there would reach.
    """
    address = ipaddress.ip_address(host)
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return False
            raise
    return True


def is_self(
    upstream: HostPort,
    listening: Iterable[HostPort],
    is_local: Callable[[str], bool] = is_local_address,
) -> bool:
    """Whether a query sent to ``upstream`` would arrive at one of our own listeners.

    A listener on a specific address catches only that address; one on 0.0.0.0 or ::
    catches every local address of its family (only its family: the agent's IPv6 sockets
    are V6ONLY, see agent.listeners.bind_socket).
    """
    up = ipaddress.ip_address(upstream.host)
    for own in listening:
        if own.port != upstream.port:
            continue
        mine = ipaddress.ip_address(own.host)
        if mine == up:
            return True
        if mine.is_unspecified and mine.version == up.version and is_local(upstream.host):
            return True
    return False


def upstreams_from_resolv_conf(
    path: Path,
    listening: Iterable[HostPort],
    is_local: Callable[[str], bool] = is_local_address,
) -> list[HostPort]:
    """The usable upstreams named by ``path``; ConfigError when the file yields none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    listening = list(listening)
    out: list[HostPort] = []
    for server in parse_resolv_conf(text):
        if is_self(server, listening, is_local):
            log.info("upstream.skipped_self", extra=fields(upstream=str(server), file=str(path)))
            continue
        out.append(server)
    if not out:
        raise ConfigError(
            f"{path} names no nameserver other than this agent; give --upstream HOST[:PORT]"
        )
    return out
