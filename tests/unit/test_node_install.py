"""`dnsmesh node install` and `uninstall` on trees made here (``--root``): the three shapes
of resolv.conf, put back byte for byte; dry runs and refusals change nothing."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from cli.main import main
from cli.node.files import Root
from cli.node.install import STATE_FILE, InstallRequest, install, uninstall
from tests.support.trees import snapshot

NODE_RESOLV = "search corp.example\nnameserver 10.0.0.2\nnameserver 10.0.0.3\noptions edns0\n"


def plain(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "resolv.conf").write_text(NODE_RESOLV)
    (root / "etc" / "resolv.conf").chmod(0o640)


def symlinked(root: Path) -> None:
    """resolvconf's shape: /etc/resolv.conf -> ../run/resolvconf/resolv.conf."""
    (root / "etc").mkdir()
    (root / "run" / "resolvconf").mkdir(parents=True)
    (root / "run" / "resolvconf" / "resolv.conf").write_text(NODE_RESOLV)
    (root / "etc" / "resolv.conf").symlink_to("../run/resolvconf/resolv.conf")


def resolved(root: Path) -> None:
    """systemd-resolved's shape, with an existing drop-in folder and a link DNS server."""
    run = root / "run" / "systemd" / "resolve"
    run.mkdir(parents=True)
    (run / "stub-resolv.conf").write_text(
        "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n"
    )
    (run / "resolv.conf").write_text("nameserver 192.168.1.1\nsearch lan\n")
    (root / "etc" / "systemd" / "resolved.conf.d").mkdir(parents=True)
    (root / "etc" / "systemd" / "resolved.conf.d" / "local.conf").write_text("[Resolve]\n")
    (root / "etc" / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")


def run_install(root: Path, **fields: object) -> str:
    out = io.StringIO()
    install(InstallRequest(root=Root(root), **fields), out)  # type: ignore[arg-type]
    return out.getvalue()


def test_plain_resolv_conf_round_trip(tmp_path: Path) -> None:
    plain(tmp_path)
    before = snapshot(tmp_path)
    run_install(tmp_path, controller="https://ctl:8053", join_token="dnsmj_x", ca_pem=b"PEM")
    etc = tmp_path / "etc"
    assert (etc / "dnsmesh" / "upstream-resolv.conf").read_text().splitlines()[1:] == [
        "nameserver 10.0.0.2",
        "nameserver 10.0.0.3",
    ]
    resolv = (etc / "resolv.conf").read_text()
    assert "nameserver 127.0.0.1\nnameserver ::1\nsearch corp.example\n" in resolv
    assert resolv.endswith("options timeout:2 attempts:2 edns0\n")
    env = (etc / "dnsmesh" / "agent.env").read_text()
    assert "DNSMESH_AGENT_ARGS=--socket-mark 0x646d --controller https://ctl:8053 " in env
    assert "--ca-file /etc/dnsmesh/ca.pem" in env
    assert "DNSMESH_AGENT_UPSTREAMS=--resolv-conf /etc/dnsmesh/upstream-resolv.conf" in env
    token = etc / "dnsmesh" / "join-token"
    assert token.read_text() == "dnsmj_x\n" and stat.S_IMODE(token.stat().st_mode) == 0o600
    units = etc / "systemd" / "system"
    assert (units / "dnsmesh-agent.service.d" / "join.conf").read_text().count("join-token") >= 2
    wants = units / "multi-user.target.wants" / "dnsmesh-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/dnsmesh-agent.service"
    state = tmp_path / STATE_FILE.lstrip("/")
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert json.loads(state.read_text())["kind"] == "plain"

    uninstall(Root(tmp_path), io.StringIO())
    assert snapshot(tmp_path) == before


def test_symlinked_resolv_conf_round_trip(tmp_path: Path) -> None:
    symlinked(tmp_path)
    before = snapshot(tmp_path)
    run_install(tmp_path)
    link = tmp_path / "etc" / "resolv.conf"
    assert not link.is_symlink()  # ours now; resolvconf's rewrites reach only its own file
    assert "nameserver 10.0.0.2" in (tmp_path / "etc/dnsmesh/upstream-resolv.conf").read_text()
    uninstall(Root(tmp_path), io.StringIO())
    assert snapshot(tmp_path) == before
    assert os.readlink(link) == "../run/resolvconf/resolv.conf"


def test_systemd_resolved_round_trip(tmp_path: Path) -> None:
    resolved(tmp_path)
    before = snapshot(tmp_path)
    run_install(tmp_path, listen=("127.0.0.1",))
    dropin = (tmp_path / "etc/systemd/resolved.conf.d/dnsmesh.conf").read_text()
    assert "DNS=127.0.0.1\n" in dropin and "DNSStubListener=no\n" in dropin
    resolv = (tmp_path / "etc" / "resolv.conf").read_text()
    assert "nameserver 127.0.0.1\nsearch lan\noptions timeout:2 attempts:2 edns0 trust-ad\n" in (
        resolv
    )
    env = (tmp_path / "etc/dnsmesh/agent.env").read_text()
    assert "DNSMESH_AGENT_UPSTREAMS=--resolv-conf /run/systemd/resolve/resolv.conf" in env
    assert "DNSMESH_AGENT_LISTEN=--listen 127.0.0.1:53\n" in env
    assert not (tmp_path / "etc/dnsmesh/upstream-resolv.conf").exists()
    uninstall(Root(tmp_path), io.StringIO())
    assert snapshot(tmp_path) == before


def test_a_file_changed_after_install_is_still_put_back(tmp_path: Path) -> None:
    plain(tmp_path)
    before = snapshot(tmp_path)
    run_install(tmp_path)
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 192.0.2.9\n")
    out = io.StringIO()
    uninstall(Root(tmp_path), out)
    assert "changed since install" in out.getvalue()
    assert snapshot(tmp_path) == before


def test_dry_runs_print_every_file_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain(tmp_path)
    before = snapshot(tmp_path)
    flags = ["--root", str(tmp_path), "--dry-run"]
    assert main(["node", "install", *flags, "--controller", "https://c", "--join-token", "t"]) == 0
    printed = capsys.readouterr().out
    for path in (
        STATE_FILE,
        "/etc/resolv.conf",
        "/etc/dnsmesh/upstream-resolv.conf",
        "/etc/dnsmesh/agent.env",
        "/etc/dnsmesh/join-token",
        "/etc/systemd/system/dnsmesh-agent.service",
        "/etc/systemd/system/dnsmesh-agent.service.d/join.conf",
        "/etc/systemd/system/multi-user.target.wants/dnsmesh-agent.service",
    ):
        assert f"would write {path} " in printed
    assert snapshot(tmp_path) == before

    assert main(["node", "install", "--root", str(tmp_path)]) == 0
    installed = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["node", "uninstall", *flags]) == 0
    assert "would restore /etc/resolv.conf: a file of" in capsys.readouterr().out
    assert snapshot(tmp_path) == installed


def test_a_second_install_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain(tmp_path)
    assert main(["node", "install", "--root", str(tmp_path)]) == 0
    installed = snapshot(tmp_path)
    assert main(["node", "install", "--root", str(tmp_path)]) == 1
    assert "already installed" in capsys.readouterr().err
    assert snapshot(tmp_path) == installed


@pytest.mark.parametrize(
    ("shape", "flags", "problem"),
    [
        (plain, ["--listen", "127.0.0.1:5353"], "can only name port 53"),
        (plain, ["--listen", "localhost"], "not a numeric"),
        (plain, ["--join-token", "dnsmj_x"], "needs --controller"),
        (plain, ["--controller", "ctl:8053"], "not an http"),
        (plain, ["--controller", "https://c", "--join-token-file", "/nonexistent"], "nonexist"),
        (plain, ["--ca-file", "/etc/hostname"], "no PEM CA certificate"),
        (lambda root: (root / "etc").mkdir(), [], "does not exist"),
        (
            lambda root: (
                (root / "etc").mkdir()
                or (root / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")
            ),
            [],
            "no resolver other than the agent",
        ),
        (
            lambda root: (
                (root / "etc").mkdir()
                or (root / "etc/resolv.conf").symlink_to("/run/resolvconf/resolv.conf")
            ),
            [],
            "cannot be read",
        ),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    shape: object,
    flags: list[str],
    problem: str,
) -> None:
    shape(tmp_path)  # type: ignore[operator]
    before = snapshot(tmp_path)
    assert main(["node", "install", "--root", str(tmp_path), *flags]) == 1
    assert problem in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_uninstall_without_an_install_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain(tmp_path)
    assert main(["node", "uninstall", "--root", str(tmp_path)]) == 1
    assert "not installed" in capsys.readouterr().err


def test_a_capture_dry_run_prints_the_ruleset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "capture", "on", "--agent", "127.0.0.1:5353", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("would load into nft")
    assert "dnat ip to 127.0.0.1:5353" in printed and "ip6" not in printed


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--agent", "127.0.0.1:53", "--agent", "127.0.0.2:53"], "at most one IPv4"),
        (["--agent", "127.0.0.1:0"], "port 0"),
        (["--exempt-mark", "0"], "socket mark"),
    ],
)
def test_a_bad_capture_is_refused(
    capsys: pytest.CaptureFixture[str], flags: list[str], problem: str
) -> None:
    assert main(["node", "capture", "on", "--dry-run", *flags]) == 1
    assert problem in capsys.readouterr().err
