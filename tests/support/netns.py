"""A network namespace a test makes (``ip netns add``), with loopback up; deleted after.

Processes run in it through ``ip netns exec NAME``. Where namespaces cannot be made (not
root, no ``ip``, a sandbox without CAP_SYS_ADMIN) the test skips and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.polling import wait_until


class NetNs:
    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def run(self, *command: str, check: bool = True, timeout: float = 20) -> str:
        done = subprocess.run(
            [*self.prefix, *command], capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")
        return done.stdout


@contextmanager
def network_namespace() -> Iterator[NetNs]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("making a network namespace needs root and iproute2's ip")
    name = f"dnsmesh-test-{uuid.uuid4().hex[:10]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        ns = NetNs(name)
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def dnsmasq(ns: NetNs, address: str, *answers: str) -> Iterator[subprocess.Popen[str]]:
    """dnsmasq on ``address``:53 in ``ns`` answering only ``--address=/NAME/IP`` rules (no
    upstream, no hosts file); ready once it answers."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (scripts/test installs it)")
    proc = subprocess.Popen(
        [
            *ns.prefix,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={address}",
            "--port=53",
            "--user=root",
            "--pid-file=",
            *(f"--address={answer}" for answer in answers),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_until(
            lambda: ns.run("dig", f"@{address}", "+time=1", "+tries=1", "ready.test", check=False),
            timeout=10,
            what=f"dnsmasq on {address}",
        )
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
