"""``dnsmesh node capture on|off``: the node's port-53 traffic to the agent, by nftables.

The ruleset is dnsmesh/nftcapture.py's; this module only hands it to ``nft`` (one ``-f``
transaction, so the table is replaced whole or not at all) and deletes our table again.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TextIO

from agent.config import parse_host_port
from dnsmesh.errors import ConfigError
from dnsmesh.nftcapture import FAMILY, TABLE, CaptureTarget, capture_ruleset, removal

DEFAULT_AGENTS = ("127.0.0.1:53", "[::1]:53")


def capture_targets(texts: list[str] | None) -> list[CaptureTarget]:
    """``--agent`` values (``HOST:PORT``, ``[V6]:PORT``; port 53 when left out)."""
    targets = []
    for text in texts or DEFAULT_AGENTS:
        address = parse_host_port(text, default_port=53)
        if address.port == 0:
            raise ConfigError(f"--agent {text}: port 0 is no agent's port")
        targets.append(CaptureTarget(address.host, address.port))
    return targets


def _nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft")
    if nft is None:
        raise ConfigError("nft is not installed (apt-get install nftables)")
    return subprocess.run(
        [nft, *args], input=stdin, capture_output=True, text=True, check=False, timeout=30
    )


def _present() -> bool:
    return _nft(["list", "table", FAMILY, TABLE]).returncode == 0


def capture_on(targets: list[CaptureTarget], mark: int, out: TextIO, *, dry_run: bool) -> None:
    try:
        ruleset = capture_ruleset(targets, mark)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if dry_run:
        out.write(f"would load into nft (replacing table {FAMILY} {TABLE} if there):\n{ruleset}")
        return
    done = _nft(["-f", "-"], ruleset)
    if done.returncode != 0:
        raise ConfigError(f"nft refused the ruleset: {done.stderr.strip()}")
    agents = ", ".join(f"{t.host}:{t.port}" for t in targets)
    out.write(f"capture on: port 53 to {agents}; sockets marked {mark:#x} exempt\n")


def capture_off(out: TextIO, *, dry_run: bool) -> None:
    if not _present():
        out.write(f"capture is off (no table {FAMILY} {TABLE})\n")
        return
    if dry_run:
        out.write(f"would run: nft {' '.join(removal())}\n")
        return
    done = _nft(removal())
    if done.returncode != 0:
        raise ConfigError(f"nft could not delete table {FAMILY} {TABLE}: {done.stderr.strip()}")
    out.write(f"capture off: table {FAMILY} {TABLE} deleted\n")
