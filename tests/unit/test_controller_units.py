"""Controller pieces with no I/O: tokens and roles, URLs, If-Match, --listen."""

from __future__ import annotations

import hashlib

import pytest
from starlette.requests import Request

from cli.main import build_parser
from controller.api.deps import etag, if_match
from controller.auth import (
    ROLE_PERMISSIONS,
    TOKEN_PREFIX,
    Permission,
    Principal,
    Role,
    check_token_name,
    new_token,
    parse_role,
    token_digest,
)
from controller.db.engine import normalize_url, redact, resolve_database_url
from controller.errors import InvalidRequest
from controller.server import parse_listen, push_settings
from controller.services.policies import IfMatch
from dnsmesh.errors import ConfigError


def test_tokens_are_prefixed_random_and_stored_as_sha256() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
        assert token_digest(token) == hashlib.sha256(token.encode()).hexdigest()


def test_roles_and_permissions() -> None:
    admin, editor, viewer, agent = (Principal("x", r) for r in Role)
    assert all(admin.can(p) for p in Permission)
    assert editor.can(Permission.WRITE_POLICIES) and not editor.can(Permission.MANAGE_TOKENS)
    assert viewer.can(Permission.READ_AUDIT) and not viewer.can(Permission.WRITE_POLICIES)
    assert agent.can(Permission.READ_POLICIES) and not agent.can(Permission.READ_AUDIT)
    assert ROLE_PERMISSIONS[Role.AGENT] == {Permission.READ_POLICIES}
    assert parse_role("agent") is Role.AGENT
    with pytest.raises(InvalidRequest):
        parse_role("root")
    assert check_token_name("ci-bot@team.a") == "ci-bot@team.a"
    for bad in ("", "UPPER", "-x", "x" * 64, 7):
        with pytest.raises(InvalidRequest):
            check_token_name(bad)


def test_database_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DNSMESH_DATABASE_URL", raising=False)
    assert resolve_database_url(None) == "sqlite:///dnsmesh.db"
    monkeypatch.setenv("DNSMESH_DATABASE_URL", "sqlite:///env.db")
    assert resolve_database_url(None) == "sqlite:///env.db"
    assert resolve_database_url("sqlite:///given.db") == "sqlite:///given.db"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    assert "secret" not in redact("postgresql://u:secret@h/db")
    for bad in ("mysql://u@h/db", "not a url"):
        with pytest.raises(ConfigError):
            normalize_url(bad)


def _request(value: str | None) -> Request:
    headers = [] if value is None else [(b"if-match", value.encode())]
    return Request({"type": "http", "headers": headers})


def test_if_match_parsing() -> None:
    assert if_match(_request(None)) is None
    assert if_match(_request("*")) == IfMatch(None)
    assert if_match(_request('"5"')) == IfMatch(frozenset({5}))
    assert if_match(_request('"5", "7" ,W/"8", "x"')) == IfMatch(frozenset({5, 7}))
    assert IfMatch(None).holds(3) and not IfMatch(None).holds(None)
    assert IfMatch(frozenset({3})).holds(3) and not IfMatch(frozenset({3})).holds(4)
    assert etag(12) == '"12"'


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8053") == ("127.0.0.1", 8053)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8053", "host:", "host:99999", "host:x"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_token_buckets_admit_a_burst_then_the_rate_and_count_the_drops() -> None:
    from controller.api.refusals import TokenBuckets, Verdict

    now = [0.0]
    buckets = TokenBuckets(rate_per_s=20, burst=50, clock=lambda: now[0])
    assert all(buckets.take("a").admitted for _ in range(50))
    assert buckets.take("a") == Verdict(False, 1, 1)  # the first drop is logged at once
    assert buckets.take("a") == Verdict(False, 2, 0)  # the next within 10 s are not
    assert buckets.take("b").admitted  # another source has its own bucket
    now[0] += 0.05  # one token refilled
    assert buckets.take("a") == Verdict(True, 2, 0)  # the row carries the drops
    assert buckets.take("a") == Verdict(False, 1, 0)
    now[0] += 10.0
    assert buckets.take("a") == Verdict(True, 1, 2)  # the log line: drops since the last one


def test_token_buckets_forget_idle_sources_first_when_full() -> None:
    from controller.api.refusals import TokenBuckets

    now = [0.0]
    buckets = TokenBuckets(rate_per_s=20, burst=2, max_keys=2, clock=lambda: now[0])
    buckets.take("idle")
    for _ in range(3):
        buckets.take("busy")  # one drop owed to its next row
    now[0] += 1.0  # both refilled
    buckets.take("new")  # room is made by forgetting "idle", which owes nothing
    assert buckets.take("busy").dropped == 1


def test_controller_flags_past_a_column_or_the_body_are_refused() -> None:
    parser = build_parser()
    long_id = parser.parse_args(["controller", "--replica-id", "r" * 129])
    with pytest.raises(ConfigError, match="at most 128"):
        push_settings(long_id)
    fits = parser.parse_args(["controller", "--replica-id", "r" * 128])
    assert push_settings(fits).replica_id == "r" * 128
    assert parser.parse_args(["controller"]).max_body is None  # the default: 1 MiB
