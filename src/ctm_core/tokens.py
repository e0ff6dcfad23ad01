"""API tokens: long-lived credentials for scripts, CI jobs and monitoring.

A token is shown once, at creation (``ctm_`` and 256 random bits); only its SHA-256 is stored.
``Authorization: Bearer <token>`` acts with its user's permissions, as a session would, until
the token expires, is deleted, or its user is disabled, given a new password or deleted (then
every token of the user is deleted with the sessions, in the same transaction).
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import timedelta

import attrs

from ctm_core.audit import AuditLog
from ctm_core.auth import hash_token, principal_of, require_user
from ctm_core.commands import NewToken
from ctm_core.errors import AuthenticationRequired, StorageUnavailable, TokenNotFound
from ctm_core.models import ApiToken, Principal
from ctm_core.ports import Clock, Repository

PREFIX = "ctm_"
MAX_TOKENS_PER_USER = 100
TOUCH_EVERY = timedelta(seconds=60)


def looks_like_token(value: str) -> bool:
    return value.startswith(PREFIX) and 20 < len(value) <= 256


@attrs.frozen(kw_only=True)
class CreatedToken:
    token: str = attrs.field(repr=False)
    """The secret: shown once, never stored."""
    info: ApiToken


@attrs.define
class TokenService:
    repo: Repository
    clock: Clock
    audit: AuditLog | None = None

    def create(self, actor: Principal, command: NewToken) -> CreatedToken:
        """A new token of ``actor``'s. Raises ``InvalidInput`` (the command's fields, or
        ``MAX_TOKENS_PER_USER`` reached) and ``AuthenticationRequired`` (no such user)."""
        command = command.checked()
        require_user(self.repo, actor)
        now = self.clock.now()
        secret = PREFIX + secrets.token_urlsafe(32)
        info = self.repo.add_token(
            ApiToken(
                id=0,
                user_id=actor.user_id,
                name=command.name,
                token_hash=hash_token(secret),
                created_at=now,
                expires_at=now + timedelta(days=command.expires_in_days),
            ),
            max_per_user=MAX_TOKENS_PER_USER,
        )
        if self.audit is not None:
            expires = None if info.expires_at is None else info.expires_at.isoformat()
            self.audit.record(actor, "token.create", f"{info.id}:{info.name}", expires_at=expires)
        return CreatedToken(token=secret, info=info)

    def list(self, actor: Principal) -> list[tuple[ApiToken, str]]:
        """(token, its user's name): the caller's own tokens; an admin's: everyone's."""
        names = {u.id: u.username for u in self.repo.list_users()}
        tokens = self.repo.list_tokens(None if actor.is_admin else actor.user_id)
        return [(t, names.get(t.user_id, "?")) for t in tokens]

    def delete(self, actor: Principal, token_id: int) -> None:
        """Delete a token: one's own, or any as an admin. Raises ``TokenNotFound`` (also for
        another user's token, so ids tell nothing)."""
        token = self.repo.get_token(token_id)
        if token is None or (token.user_id != actor.user_id and not actor.is_admin):
            raise TokenNotFound(token_id)
        self.repo.delete_token(token_id)
        if self.audit is not None:
            self.audit.record(actor, "token.delete", f"{token.id}:{token.name}")

    def authenticate(self, secret: str | None, client: str | None = None) -> Principal:
        """The user behind a bearer token. Raises ``AuthenticationRequired`` for an unknown,
        expired or deleted token and for a disabled user's. Its last use is written at most
        once a minute, best effort."""
        if not secret or not looks_like_token(secret):
            raise AuthenticationRequired()
        token = self.repo.get_token_by_hash(hash_token(secret))
        now = self.clock.now()
        if token is None or (token.expires_at is not None and now >= token.expires_at):
            raise AuthenticationRequired()
        user = self.repo.get_user(token.user_id)
        if user is None or user.disabled:
            raise AuthenticationRequired()
        if token.last_used_at is None or now - token.last_used_at >= TOUCH_EVERY:
            with contextlib.suppress(StorageUnavailable):
                self.repo.touch_token(token.id, now)
        return principal_of(user, client)
