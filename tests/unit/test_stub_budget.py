"""The stub's wait outlasts the agent's deadline, computed from the agent's own defaults, so
the two cannot drift apart (docs/design.md, "Forwarding and its time budget")."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig
from cli.main import build_parser
from dnsmesh.noderesolv import agent_resolv_conf
from dnsmesh.stubbudget import (
    DELIVERY_MARGIN,
    StubOptions,
    agent_worst_case,
    glibc_waits,
    stub_options,
)

REPO = Path(__file__).resolve().parents[2]


def shipped_options() -> StubOptions:
    """The timeout/attempts of deploy/resolv.conf.example."""
    text = (REPO / "deploy" / "resolv.conf.example").read_text()
    words = next(line.split() for line in text.splitlines() if line.startswith("options"))
    values = dict(w.split(":", 1) for w in words[1:] if ":" in w)
    return StubOptions(int(values["timeout"]), int(values["attempts"]))


def test_the_agent_flags_and_its_config_share_their_defaults() -> None:
    args = build_parser().parse_args(["agent"])
    config = AgentConfig()
    assert args.query_timeout == config.query_timeout
    assert args.stale_answer_after == config.stale_answer_after
    assert args.attempt_timeout == config.attempt_timeout
    assert config.attempt_timeout < config.query_timeout  # the chain's first link


def test_the_stub_waits_longer_than_the_agent_takes_with_its_defaults() -> None:
    config = AgentConfig()
    worst = agent_worst_case(config.query_timeout, config.stale_answer_after)
    assert worst == config.query_timeout  # 1.5 s: the stale timer (1.8 s) never comes later
    options = stub_options(config.query_timeout, config.stale_answer_after)
    assert options == StubOptions(timeout=2, attempts=2)
    for nameservers in (1, 2, 3):
        first_wait = glibc_waits(options, nameservers)[0]
        assert first_wait >= worst + DELIVERY_MARGIN


def test_the_shipped_resolv_conf_and_install_use_at_least_that() -> None:
    config = AgentConfig()
    needed = stub_options(config.query_timeout, config.stale_answer_after)
    shipped = shipped_options()
    assert shipped.timeout >= needed.timeout and shipped.attempts >= needed.attempts
    written = agent_resolv_conf("nameserver 192.0.2.1\n", ["127.0.0.1"], needed)
    assert f"options timeout:{needed.timeout} attempts:{needed.attempts}" in written


def test_a_stale_timer_before_the_deadline_does_not_lengthen_the_wait() -> None:
    assert agent_worst_case(3.0, 1.8) == 3.0
    assert stub_options(3.0, 1.8).timeout == 4
    assert stub_options(0.2, 1.8).timeout == 1


def test_glibc_waits_as_res_send_computes_them() -> None:
    # index 0 gets timeout; index i > 0 gets (timeout << i) // n, at least 1
    assert glibc_waits(StubOptions(2, 2), 2) == [2, 2, 2, 2]
    assert glibc_waits(StubOptions(5, 1), 3) == [5, 3, 6]
    assert glibc_waits(StubOptions(1, 1), 3) == [1, 1, 1]
    assert glibc_waits(StubOptions(99, 9), 1) == [30] * 5  # RES_MAXRETRANS, RES_MAXRETRY
