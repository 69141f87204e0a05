"""``dnsmesh node install`` and ``uninstall``: the agent becomes the node's resolver, and back.

Install reads how the node resolves now, one of three shapes:

1. a plain ``/etc/resolv.conf``: its nameservers become the agent's upstreams, copied to
   ``/etc/dnsmesh/upstream-resolv.conf``;
2. a symlink to a file another service rewrites (resolvconf's ``/run/resolvconf/...``,
   netconfig): the same, from the file it points at; the symlink is replaced by our file
   (the service's later rewrites then reach only its own file);
3. systemd-resolved (a symlink into ``/run/systemd/resolve/``): a drop-in points resolved
   at the agent with its stub listener off, and the agent reads its upstreams from
   ``/run/systemd/resolve/resolv.conf``, which resolved keeps current (DHCP), at each start.

Then it writes ``/etc/resolv.conf`` naming the agent (the node's search and options kept,
dnsmesh/noderesolv.py), the agent's environment file, the join token (0600, handed to the
unprivileged service by systemd's LoadCredential) and CA bundle, and the systemd unit from
deploy/ (enabled by its ``multi-user.target.wants`` link). On the running node it then
starts the agent and only after that switches the resolver, so names resolve throughout.

Every path it will touch is recorded first, as it was (bytes, mode, owner, or symlink
target, or absent), in one state file, ``/var/lib/dnsmesh/node-install.json`` (0600: it
may hold an earlier token file's bytes). Uninstall puts each back exactly and removes the
folders install made (when empty), then the state file. A second install while that file
exists is refused: install is not idempotent on purpose, since a second run would record
the first run's files as "what was there" and uninstall could then not get back to the
original node.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from agent.config import DNS_PORT, AgentConfig, parse_host_port
from cli.node.files import PathState, Root, read_state, write_state
from dnsmesh.errors import ConfigError
from dnsmesh.nftcapture import DEFAULT_MARK
from dnsmesh.noderesolv import (
    RESOLV_CONF,
    RESOLVED_UPSTREAMS,
    ResolvKind,
    agent_resolv_conf,
    classify,
    link_target_path,
    resolved_dropin,
    upstream_file,
)
from dnsmesh.stubbudget import stub_options

STATE_FILE = "/var/lib/dnsmesh/node-install.json"
UPSTREAM_FILE = "/etc/dnsmesh/upstream-resolv.conf"
AGENT_ENV = "/etc/dnsmesh/agent.env"
JOIN_TOKEN = "/etc/dnsmesh/join-token"
CA_FILE = "/etc/dnsmesh/ca.pem"
UNIT_NAME = "dnsmesh-agent.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
JOIN_DROPIN = f"/etc/systemd/system/{UNIT_NAME}.d/join.conf"
WANTS = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
RESOLVED_DROPIN = "/etc/systemd/resolved.conf.d/dnsmesh.conf"
DEFAULT_LISTEN = ("127.0.0.1", "::1")
STATE_VERSION = 1
_HEADER = "# Written by `dnsmesh node install`; `dnsmesh node uninstall` puts back what was here.\n"

Run = Callable[[list[str]], None]  # runs one systemctl command on the node


@dataclass(frozen=True, slots=True)
class InstallRequest:
    root: Root
    listen: tuple[str, ...] = DEFAULT_LISTEN
    controller: str | None = None
    join_token: str | None = None
    ca_pem: bytes | None = None
    socket_mark: int = DEFAULT_MARK


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    after: PathState
    why: str
    # Part of switching the node's resolver: written once the agent runs, undone first.
    switch: bool = False


@dataclass(slots=True)
class Plan:
    kind: ResolvKind
    changes: list[Change] = field(default_factory=list)


def listen_hosts(texts: list[str] | None) -> tuple[str, ...]:
    """``--listen`` values as the agent's port-53 addresses (glibc asks port 53 only)."""
    hosts = []
    for text in texts or DEFAULT_LISTEN:
        address = parse_host_port(text, default_port=DNS_PORT)
        if address.port != DNS_PORT:
            raise ConfigError(f"--listen {text}: resolv.conf can only name port 53")
        hosts.append(address.host)
    return tuple(dict.fromkeys(hosts))


def _unit_text(name: str) -> bytes:
    return (resources.files("cli.node") / "units" / name).read_bytes()


def _file(text: str | bytes, mode: int = 0o644) -> PathState:
    data = text.encode() if isinstance(text, str) else text
    return PathState("file", data=data, mode=mode, uid=0, gid=0)


def _listen_flags(hosts: tuple[str, ...]) -> str:
    return " ".join(f"--listen {f'[{h}]' if ':' in h else h}:{DNS_PORT}" for h in hosts)


def agent_env(request: InstallRequest, upstream_source: str) -> str:
    """The unit's EnvironmentFile: the agent's flags (deploy/systemd/dnsmesh-agent.service)."""
    args = [f"--socket-mark {request.socket_mark:#x}"]
    if request.controller:
        args.append(f"--controller {request.controller}")
    if request.ca_pem is not None:
        args.append(f"--ca-file {CA_FILE}")
    return (
        _HEADER + f"DNSMESH_AGENT_ARGS={' '.join(args)}\n"
        f"DNSMESH_AGENT_LISTEN={_listen_flags(request.listen)}\n"
        f"DNSMESH_AGENT_UPSTREAMS=--resolv-conf {upstream_source}\n"
    )


def _current_resolver(root: Root) -> tuple[ResolvKind, str, str]:
    """The kind of the node's resolv.conf, its text, and the absolute target of its link."""
    state = read_state(root.host(RESOLV_CONF))
    if state.kind == "absent":
        raise ConfigError(f"{root.host(RESOLV_CONF)} does not exist: no resolvers to keep")
    if state.kind == "file":
        return ResolvKind.PLAIN, state.data.decode(errors="replace"), ""
    target = link_target_path(os.path.dirname(RESOLV_CONF), state.target)
    try:
        text = root.host(target).read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(
            f"{RESOLV_CONF} links to {target}, which cannot be read: {exc.strerror}"
        ) from None
    return classify(target), text, target


def plan_install(request: InstallRequest) -> Plan:
    """Every change install makes, computed from the node's files; nothing is written."""
    root = request.root
    kind, text, target = _current_resolver(root)
    hosts = list(request.listen)
    plan = Plan(kind)
    add = plan.changes.append
    if kind is ResolvKind.RESOLVED:
        upstream_source = RESOLVED_UPSTREAMS
        try:
            upstreams = root.host(RESOLVED_UPSTREAMS).read_text(errors="replace")
        except OSError as exc:
            raise ConfigError(
                f"systemd-resolved's {RESOLVED_UPSTREAMS} cannot be read ({exc.strerror}): "
                "is resolved running?"
            ) from None
        upstream_file(upstreams, RESOLVED_UPSTREAMS, hosts)  # checks one is left
    else:
        upstream_source = UPSTREAM_FILE
        source = RESOLV_CONF if kind is ResolvKind.PLAIN else f"{RESOLV_CONF} (-> {target})"
        add(Change(UPSTREAM_FILE, _file(upstream_file(text, source, hosts)), "agent upstreams"))
    if request.ca_pem is not None:
        add(Change(CA_FILE, _file(request.ca_pem), "controller CA bundle"))
    if request.join_token:
        add(Change(JOIN_TOKEN, _file(request.join_token + "\n", 0o600), "one-time join token"))
    add(Change(AGENT_ENV, _file(agent_env(request, upstream_source)), "agent flags"))
    add(Change(UNIT, _file(_unit_text(UNIT_NAME)), "systemd unit"))
    if request.join_token:
        dropin = _unit_text(f"{UNIT_NAME}.d/join.conf")
        add(Change(JOIN_DROPIN, _file(dropin), "unit reads the join token"))
    add(Change(WANTS, PathState("symlink", target=UNIT, uid=0, gid=0), "unit enabled"))
    if kind is ResolvKind.RESOLVED:
        dropin_text = resolved_dropin(hosts)
        add(Change(RESOLVED_DROPIN, _file(dropin_text), "resolved asks the agent", switch=True))
    options = stub_options(AgentConfig().query_timeout, AgentConfig().stale_answer_after)
    new_resolv = agent_resolv_conf(text, hosts, options)
    add(Change(RESOLV_CONF, _file(new_resolv), "the agent is the resolver", switch=True))
    return plan


def _digest(state: PathState) -> str:
    return hashlib.sha256(state.kind.encode() + state.data + state.target.encode()).hexdigest()


def _missing_dirs(root: Root, paths: list[str]) -> list[str]:
    """The folders (node paths) that writing ``paths`` needs and that do not exist, outermost
    first."""
    missing: list[str] = []
    for path in paths:
        parent = os.path.dirname(path)
        chain = []
        while parent != "/" and not root.host(parent).exists():
            chain.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(chain):
            if folder not in missing:
                missing.append(folder)
    return missing


def _services(run: Run | None, out: TextIO, commands: list[list[str]]) -> None:
    for command in commands:
        if run is None:
            out.write(f"on the node, run: systemctl {' '.join(command)}\n")
        else:
            run(command)


def install(
    request: InstallRequest, out: TextIO, *, dry_run: bool = False, run: Run | None = None
) -> None:
    """Install (or with ``dry_run`` only print) the plan; ``run`` drives systemd on the node
    (None: not on a running node, the commands are printed)."""
    root = request.root
    state_path = root.host(STATE_FILE)
    if state_path.exists():
        raise ConfigError(
            f"already installed ({state_path} records it): run `dnsmesh node uninstall` first"
        )
    plan = plan_install(request)
    befores = [read_state(root.host(change.path)) for change in plan.changes]
    folders = _missing_dirs(root, [STATE_FILE, *(c.path for c in plan.changes)])
    verb = "would " if dry_run else ""
    out.write(f"{RESOLV_CONF} is {plan.kind.value}\n")
    for folder in folders:
        out.write(f"{verb}create folder {folder}\n")
    out.write(f"{verb}write {STATE_FILE} (0600: every path below as it is now)\n")
    for change, before in zip(plan.changes, befores, strict=True):
        out.write(f"{verb}write {change.path} ({change.why}): {before.describe()} -> ")
        out.write(f"{change.after.describe()}\n")
    agent_up = [["daemon-reload"], ["restart", UNIT_NAME]]
    switched = (
        [["try-restart", "systemd-resolved.service"]] if plan.kind is ResolvKind.RESOLVED else []
    )
    if dry_run:
        for command in agent_up + switched:
            out.write(f"would run: systemctl {' '.join(command)}\n")
        return
    for folder in folders:
        root.host(folder).mkdir(mode=0o755)
    record = {
        "version": STATE_VERSION,
        "kind": plan.kind.value,
        "created_folders": folders,
        "paths": [
            {
                "path": change.path,
                "switch": change.switch,
                "before": before.to_json(),
                "written": _digest(change.after),
            }
            for change, before in zip(plan.changes, befores, strict=True)
        ],
    }
    write_state(state_path, _file(json.dumps(record, indent=1) + "\n", 0o600))
    for change in plan.changes:
        if not change.switch:
            write_state(root.host(change.path), change.after)
    _services(run, out, agent_up)
    for change in plan.changes:
        if change.switch:
            write_state(root.host(change.path), change.after)
    _services(run, out, switched)


def _load_record(state_path: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"not installed: {state_path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{state_path} cannot be read: {exc}") from None
    if record.get("version") != STATE_VERSION:
        raise ConfigError(f"{state_path}: unknown version {record.get('version')!r}")
    return record


def uninstall(root: Root, out: TextIO, *, dry_run: bool = False, run: Run | None = None) -> None:
    """Put back every path install recorded, in reverse, the resolver first."""
    state_path = root.host(STATE_FILE)
    record = _load_record(state_path)
    entries = list(reversed(record["paths"]))
    verb = "would " if dry_run else ""
    ordered = [e for e in entries if e["switch"]] + [e for e in entries if not e["switch"]]
    for entry in ordered:
        before = PathState.from_json(entry["before"])
        now = read_state(root.host(entry["path"]))
        changed = " (changed since install; put back anyway)"
        note = changed if _digest(now) != entry["written"] else ""
        out.write(f"{verb}restore {entry['path']}: {before.describe()}{note}\n")
    folders = list(reversed(record["created_folders"]))
    for folder in folders:
        out.write(f"{verb}remove folder {folder} (if empty)\n")
    out.write(f"{verb}remove {STATE_FILE}\n")
    resolver_back = (
        [["try-restart", "systemd-resolved.service"]]
        if record["kind"] == ResolvKind.RESOLVED.value
        else []
    )
    agent_gone = [["stop", UNIT_NAME]]
    if dry_run:
        for command in [*resolver_back, *agent_gone, ["daemon-reload"]]:
            out.write(f"would run: systemctl {' '.join(command)}\n")
        return
    for entry in ordered:
        if entry["switch"]:
            write_state(root.host(entry["path"]), PathState.from_json(entry["before"]))
    _services(run, out, resolver_back + agent_gone)
    for entry in ordered:
        if not entry["switch"]:
            write_state(root.host(entry["path"]), PathState.from_json(entry["before"]))
    _services(run, out, [["daemon-reload"]])
    state_path.unlink()
    for folder in folders:
        try:
            root.host(folder).rmdir()
        except OSError:
            out.write(f"left {folder}: not empty (e.g. the agent's own state)\n")
