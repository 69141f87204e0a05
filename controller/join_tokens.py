"""One-time join tokens: what an operator hands a new node so that it can get its certificate.

A join token is ``dnsmj_`` + 43 URL-safe characters (256 random bits; the prefix tells it
apart from bearer tokens, which it never works as), kept in ``api_tokens`` as its SHA-256
digest like every token (controller/auth.py says why a fast digest), with role ``agent``,
an expiry (1 hour unless asked otherwise) and optionally the one node name it may join as.

Spending is one statement: ``UPDATE ... SET spent_at WHERE digest = ? AND spent_at IS NULL
AND not expired AND the node matches``. Two joins racing with one token both run it; the
database lets exactly one of them change the row (PostgreSQL re-checks the condition on
the row the first one committed; SQLite writes one at a time), so one gets a certificate
and the other is refused as spent. The spend and the certificate's record commit together:
a join that fails after it leaves the token unspent.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from controller.auth import (
    Role,
    TokenInfo,
    audit_token,
    check_token_name,
    token_digest,
    token_info,
)
from controller.db.models import TokenRow
from controller.db.session import Database, as_utc, iso
from controller.errors import AlreadyExists, InvalidRequest
from controller.identity import check_node_name
from controller.identity_refusals import Refusal
from dnsmesh.errors import FieldError

JOIN_PREFIX = "dnsmj_"
DEFAULT_JOIN_TTL = timedelta(hours=1)
_SHOWN_PREFIX = 13  # "dnsmj_" + 7 characters


class JoinRefused(Exception):
    """The join token cannot be used (unknown, spent, expired, or for another node)."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SpentToken:
    name: str  # the token's name: who the certificate was issued by, in the audit log


def new_join_token() -> str:
    return JOIN_PREFIX + secrets.token_urlsafe(32)


def check_join_node(value: object, field: str = "node") -> str:
    try:
        return check_node_name(str(value))
    except ValueError as error:
        raise InvalidRequest(
            f"{value!r} is not a node name", [FieldError(field, str(error))]
        ) from None


class JoinTokens:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        name: object,
        *,
        actor: str,
        node: str | None = None,
        ttl: timedelta | None = None,
    ) -> tuple[TokenInfo, str]:
        """Mints a join token; returns its description and the secret (shown this once)."""
        checked_name = check_token_name(name)
        checked_node = None if node is None else check_join_node(node)
        lifetime = DEFAULT_JOIN_TTL if ttl is None else ttl
        secret = new_join_token()

        def work(session: Session) -> TokenInfo:
            if session.scalar(select(TokenRow.id).where(TokenRow.name == checked_name)):
                raise AlreadyExists(f"a token named {checked_name!r} already exists")
            now = self.db.clock()
            row = TokenRow(
                name=checked_name,
                role=Role.AGENT.value,
                digest=token_digest(secret),
                prefix=secret[:_SHOWN_PREFIX],
                created_at=now,
                created_by=actor,
                expires_at=now + lifetime,
                is_join=True,
                join_node=checked_node,
            )
            session.add(row)
            session.flush()
            info = token_info(row)
            audit_token(session, self.db, actor, "token.create", checked_name, None, info)
            return info

        return self.db.write(work), secret

    def spend(self, session: Session, secret: str, node: str) -> SpentToken:
        """Spends the token for ``node`` in the caller's write transaction, or JoinRefused."""
        if not secret.startswith(JOIN_PREFIX):
            raise JoinRefused(Refusal.JOIN_TOKEN_UNKNOWN, "not a join token (dnsmj_...)")
        digest = token_digest(secret)
        now = self.db.clock()
        spent = session.execute(
            update(TokenRow)
            .where(
                TokenRow.digest == digest,
                TokenRow.is_join.is_(True),
                TokenRow.spent_at.is_(None),
                or_(TokenRow.expires_at.is_(None), TokenRow.expires_at > now),
                or_(TokenRow.join_node.is_(None), TokenRow.join_node == node),
            )
            .values(spent_at=now, spent_by=node)
            .returning(TokenRow.name)
        ).scalar_one_or_none()
        if spent is not None:
            return SpentToken(spent)
        raise self._why_not(session, digest, node, now)

    @staticmethod
    def _why_not(session: Session, digest: str, node: str, now: datetime) -> JoinRefused:
        row = session.execute(
            select(TokenRow).where(TokenRow.digest == digest, TokenRow.is_join.is_(True))
        ).scalar_one_or_none()
        if row is None:
            return JoinRefused(Refusal.JOIN_TOKEN_UNKNOWN, "the join token is unknown or revoked")
        if row.spent_at is not None:
            return JoinRefused(
                Refusal.JOIN_TOKEN_SPENT,
                f"the join token was already used (by node {row.spent_by!r} at "
                f"{iso(row.spent_at)}); a join token works once",
            )
        if row.expires_at is not None and as_utc(row.expires_at) <= now:
            return JoinRefused(Refusal.JOIN_TOKEN_EXPIRED, "the join token has expired")
        return JoinRefused(
            Refusal.JOIN_TOKEN_NODE,
            f"the join token is for node {row.join_node!r}, not {node!r}",
        )
