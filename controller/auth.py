"""API tokens and roles: minting, hashing, listing, revoking and checking bearer tokens.

A token is ``dnsm_`` + 43 URL-safe characters (256 random bits); the prefix makes a leaked
token recognisable to secret scanners and people. Only its SHA-256 digest is stored.
Why not bcrypt/argon2: those slow hashes exist to protect low-entropy passwords from
guessing. A 256-bit random token cannot be guessed whatever the hash costs, so a fast,
unsalted digest loses nothing, lets the lookup be one indexed equality, and keeps the
per-request cost of authentication at microseconds instead of ~100 ms of CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.db.models import AuditRow, TokenRow
from controller.db.session import Database, as_utc, iso
from controller.errors import AlreadyExists, DatabaseUnavailable, InvalidRequest, NotFound
from dnsmesh.errors import FieldError

TOKEN_PREFIX = "dnsm_"
_SHOWN_PREFIX = 12  # "dnsm_" + 7 characters: enough to tell tokens apart in a listing
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._@-]{0,61}[a-z0-9])?$")


class Role(StrEnum):
    ADMIN = "admin"  # manage tokens, and everything an editor may
    EDITOR = "editor"  # write policies and slices, read everything but tokens
    VIEWER = "viewer"  # read policies, slices and the audit log
    AGENT = "agent"  # reserved for node agents: read policies


class Permission(StrEnum):
    READ_POLICIES = "policies:read"
    WRITE_POLICIES = "policies:write"
    READ_AUDIT = "audit:read"
    MANAGE_TOKENS = "tokens:manage"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.EDITOR: frozenset(
        {Permission.READ_POLICIES, Permission.WRITE_POLICIES, Permission.READ_AUDIT}
    ),
    Role.VIEWER: frozenset({Permission.READ_POLICIES, Permission.READ_AUDIT}),
    Role.AGENT: frozenset({Permission.READ_POLICIES}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the token's name (written to the audit log) and its role."""

    name: str
    role: Role
    expires_at: datetime | None = None  # None: until revoked

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: Role
    prefix: str
    created_at: str
    created_by: str
    expires_at: str | None  # None: until revoked
    join: bool = False  # a one-time join token (controller/join_tokens.py)
    join_node: str | None = None  # the only node it may join as (None: any)
    spent_at: str | None = None  # when a join token was used

    def to_json(self) -> dict[str, str | bool | None]:
        return {
            "name": self.name,
            "role": self.role.value,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "join": self.join,
            "join_node": self.join_node,
            "spent_at": self.spent_at,
        }


class TokenExpired(Exception):
    """The token is known but past its expiry (a 401 that says so)."""


_TTL_RE = re.compile(r"^([1-9][0-9]{0,9})([smhdw])$")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_TTL = timedelta(days=3650)


def parse_ttl(value: object, *, field: str = "ttl") -> timedelta:
    """``90s``, ``30m``, ``1h``, ``7d``, ``2w``: a token's lifetime, at most ten years."""
    match = _TTL_RE.match(value) if isinstance(value, str) else None
    ttl = timedelta(seconds=int(match[1]) * _TTL_UNITS[match[2]]) if match else None
    if ttl is None or ttl > MAX_TTL:
        raise InvalidRequest(
            f"{value!r} is not a token lifetime",
            [
                FieldError(
                    field, "a whole number and a unit: s, m, h, d or w (e.g. 1h, 7d); at most 3650d"
                )
            ],
        )
    return ttl


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_role(value: object) -> Role:
    try:
        return Role(str(value))
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise InvalidRequest(
            f"{value!r} is not a role", [FieldError("role", f"must be one of {choices}")]
        ) from None


def check_token_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidRequest(
            f"{value!r} is not a token name",
            [
                FieldError(
                    "name",
                    "1-63 lower-case letters, digits, '.', '_', '@' or '-', "
                    "starting and ending with a letter or digit",
                )
            ],
        )
    return value


# Tokens verified against the database, kept so stale reads can still be authenticated
# while it is away; only valid tokens enter, so a few dozen entries in practice.
_KNOWN_TOKENS = 4096


class TokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._known: dict[str, Principal] = {}  # digest -> principal, as last verified

    def create(
        self, name: object, role: object, *, actor: str, ttl: timedelta | None = None
    ) -> tuple[TokenInfo, str]:
        """Mints a token; returns its description and the secret (shown this once only).

        ``ttl``: the token stops working that long after now (None: until revoked).
        """
        checked_name = check_token_name(name)
        checked_role = parse_role(role)
        secret = new_token()

        def work(session: Session) -> TokenInfo:
            if session.scalar(select(TokenRow.id).where(TokenRow.name == checked_name)):
                raise AlreadyExists(f"a token named {checked_name!r} already exists")
            now = self.db.clock()
            row = TokenRow(
                name=checked_name,
                role=checked_role.value,
                digest=token_digest(secret),
                prefix=secret[:_SHOWN_PREFIX],
                created_at=now,
                created_by=actor,
                expires_at=None if ttl is None else now + ttl,
            )
            session.add(row)
            session.flush()
            info = token_info(row)
            audit_token(session, self.db, actor, "token.create", checked_name, None, info)
            return info

        return self.db.write(work), secret

    def list(self) -> list[TokenInfo]:
        def work(session: Session) -> list[TokenInfo]:
            return [
                token_info(row) for row in session.scalars(select(TokenRow).order_by(TokenRow.name))
            ]

        return self.db.read(work)

    def revoke(self, name: str, *, actor: str) -> None:
        def work(session: Session) -> None:
            row = session.scalars(select(TokenRow).where(TokenRow.name == name)).one_or_none()
            if row is None:
                raise NotFound(f"no token named {name!r}")
            info = token_info(row)
            self._known.pop(row.digest, None)
            session.execute(delete(TokenRow).where(TokenRow.id == row.id))
            audit_token(session, self.db, actor, "token.revoke", name, info, None)

        self.db.write(work)

    def authenticate(self, secret: str, *, known_if_away: bool = False) -> Principal | None:
        """The principal for a presented token, or None when it is unknown or revoked.

        Raises TokenExpired for a known token past its expiry.

        ``known_if_away`` (the policy reads served stale): while the database is unreachable,
        a token this process verified before is taken as it was then, so those reads are not
        refused for want of the token table (a revocation made on another replica reaches
        this one when the database is back). Otherwise, or for any other token, the outage
        raises DatabaseUnavailable.
        """
        if not secret.startswith(TOKEN_PREFIX):
            return None
        digest = token_digest(secret)
        try:
            principal = self._verify(digest)
        except DatabaseUnavailable:
            known = self._known.get(digest) if known_if_away else None
            if known is None:
                raise
            principal = known
        if principal is None:
            self._known.pop(digest, None)
        elif digest not in self._known and len(self._known) < _KNOWN_TOKENS:
            self._known[digest] = principal
        if principal is not None and principal.expired(self.db.clock()):
            raise TokenExpired(principal.name)
        return principal

    def _verify(self, digest: str) -> Principal | None:

        def work(session: Session) -> Principal | None:
            row = session.execute(
                select(TokenRow.name, TokenRow.role, TokenRow.digest, TokenRow.expires_at).where(
                    TokenRow.digest == digest,
                    TokenRow.is_join.is_(False),  # a join token buys a certificate, nothing else
                )
            ).one_or_none()
            # The lookup already matched; compare_digest keeps the final check constant-time.
            if row is None or not hmac.compare_digest(row.digest, digest):
                return None
            expires = None if row.expires_at is None else as_utc(row.expires_at)
            return Principal(row.name, Role(row.role), expires)

        return self.db.read(work)


def token_info(row: TokenRow) -> TokenInfo:
    expires = None if row.expires_at is None else iso(row.expires_at)
    return TokenInfo(
        row.name,
        Role(row.role),
        row.prefix,
        iso(row.created_at),
        row.created_by,
        expires,
        join=row.is_join,
        join_node=row.join_node,
        spent_at=None if row.spent_at is None else iso(row.spent_at),
    )


def audit_token(
    session: Session,
    db: Database,
    actor: str,
    operation: str,
    name: str,
    before: TokenInfo | None,
    after: TokenInfo | None,
) -> None:
    session.add(
        AuditRow(
            at=db.clock(),
            actor=actor,
            operation=operation,
            target=f"token/{name}",
            revision=None,
            before=before.to_json() if before else None,
            after=after.to_json() if after else None,
        )
    )
    session.flush()
