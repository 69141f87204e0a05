"""The text ``dnsmesh node install`` writes: resolv.conf, the upstream file, resolved's drop-in.

Pure: it takes the node's files as text and returns new text; cli/node/ reads and writes.

- The node's resolv.conf names the agent, keeps the node's ``search``/``domain`` lines and
  its ``options`` (our ``timeout``/``attempts`` unless the node's were longer), so names
  still complete and the stub waits long enough (dnsmesh/stubbudget.py).
- The resolvers the node used go to the agent's own upstream file, never read back from the
  resolv.conf that now names the agent.
- With systemd-resolved, a drop-in points resolved at the agent and turns its stub
  listener off; resolved keeps writing the link resolvers (DHCP) to
  /run/systemd/resolve/resolv.conf, the agent's upstream source there.
"""

from __future__ import annotations

import ipaddress
import posixpath
from enum import Enum

from dnsmesh.errors import ConfigError
from dnsmesh.stubbudget import StubOptions

RESOLV_CONF = "/etc/resolv.conf"
# Where systemd-resolved's resolv.conf symlinks point (the stub, or the upstream list).
RESOLVED_STUB = "/run/systemd/resolve/stub-resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"
RESOLVED_TARGETS = frozenset(
    {
        RESOLVED_STUB,
        RESOLVED_UPSTREAMS,
        "/usr/lib/systemd/resolv.conf",
        "/lib/systemd/resolv.conf",
    }
)
# glibc reads at most this many nameserver lines (MAXNS).
MAXNS = 3


class ResolvKind(Enum):
    PLAIN = "plain"  # a file of its own
    SYMLINK = "symlink"  # a link to a file another service rewrites (resolvconf, netconfig)
    RESOLVED = "systemd-resolved"


def link_target_path(link_dir: str, target: str) -> str:
    """The absolute node path a symlink in ``link_dir`` points at (``..`` resolved)."""
    return posixpath.normpath(posixpath.join(link_dir, target))


def classify(link_target: str | None) -> ResolvKind:
    """The kind of /etc/resolv.conf: ``link_target`` is its absolute target, None if a file."""
    if link_target is None:
        return ResolvKind.PLAIN
    if link_target in RESOLVED_TARGETS:
        return ResolvKind.RESOLVED
    return ResolvKind.SYMLINK


def _words(line: str) -> list[str]:
    return line.split("#", 1)[0].split(";", 1)[0].split()


def nameservers(text: str) -> list[str]:
    """The numeric ``nameserver`` addresses of a resolv.conf, in order (scope ids kept)."""
    out: list[str] = []
    for line in text.splitlines():
        words = _words(line)
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            ipaddress.ip_address(words[1].split("%", 1)[0])
        except ValueError:
            continue  # glibc ignores what it cannot parse, and so do we
        if words[1] not in out:
            out.append(words[1])
    return out


def upstream_file(text: str, source: str, agent_hosts: list[str]) -> str:
    """The agent's upstream file: ``text``'s nameservers but the agent's own addresses.

    ConfigError when none is left: the agent would have nobody to forward to.
    """
    own = {ipaddress.ip_address(h) for h in agent_hosts}
    kept = [ns for ns in nameservers(text) if ipaddress.ip_address(ns.split("%", 1)[0]) not in own]
    if not kept:
        raise ConfigError(
            f"{source} names no resolver other than the agent's own addresses: the agent "
            "would have no upstream (write one into it, or give the agent --upstream)"
        )
    lines = [
        f"# The resolvers {source} named before `dnsmesh node install`: the agent's upstreams.",
        *(f"nameserver {ns}" for ns in kept),
    ]
    return "\n".join(lines) + "\n"


def _merged_options(text: str, ours: StubOptions) -> list[str]:
    """Our timeout/attempts (or the node's, where longer), then the node's other options."""
    timeout, attempts = ours.timeout, ours.attempts
    others: list[str] = []
    for line in text.splitlines():
        words = _words(line)
        if not words or words[0] != "options":
            continue
        for word in words[1:]:
            name, _, value = word.partition(":")
            if name in ("timeout", "attempts") and value.isdigit():
                if name == "timeout":
                    timeout = max(timeout, int(value))
                else:
                    attempts = max(attempts, int(value))
            elif word not in others:
                others.append(word)
    return [*StubOptions(timeout, attempts).words(), *others]


def agent_resolv_conf(text: str, agent_hosts: list[str], options: StubOptions) -> str:
    """The node's new resolv.conf: the agent as nameserver, the node's search and options."""
    if not agent_hosts:
        raise ConfigError("no address for the agent to be named at")
    if len(agent_hosts) > MAXNS:
        raise ConfigError(f"glibc reads at most {MAXNS} nameservers; give at most {MAXNS}")
    lines = [
        "# Written by `dnsmesh node install`: the dnsmesh agent is this node's resolver.",
        "# `dnsmesh node uninstall` puts back what was here.",
        *(f"nameserver {host}" for host in agent_hosts),
    ]
    for line in text.splitlines():
        words = _words(line)
        if words and words[0] in ("search", "domain"):
            lines.append(" ".join(words))  # the last of them wins, as glibc reads them
    lines.append("options " + " ".join(_merged_options(text, options)))
    return "\n".join(lines) + "\n"


def resolved_dropin(agent_hosts: list[str]) -> str:
    """/etc/systemd/resolved.conf.d/dnsmesh.conf: resolved asks the agent, its stub is off."""
    return (
        "# Written by `dnsmesh node install`: systemd-resolved asks the dnsmesh agent for\n"
        "# every domain, and its stub listener is off (/etc/resolv.conf names the agent).\n"
        "# The agent forwards to the link resolvers resolved lists in\n"
        f"# {RESOLVED_UPSTREAMS} (it skips its own addresses there).\n"
        "[Resolve]\n"
        f"DNS={' '.join(agent_hosts)}\n"
        "Domains=~.\n"
        "DNSStubListener=no\n"
    )
