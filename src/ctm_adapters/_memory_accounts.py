"""The in-memory repository's accounts: users, sessions, API tokens, login failures and the
audit log (``memory.InMemoryRepository`` adds the rest, and shares the lock and the copying
helpers defined here)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs

from ctm_core.errors import (
    InvalidInput,
    LastAdmin,
    UserExists,
    UserNotFound,
    UserOwnsTasks,
)
from ctm_core.models import (
    ApiToken,
    AuditEvent,
    Execution,
    ExecutionStatus,
    Session,
    Task,
    TaskStatus,
    User,
    UserChange,
)

_E = TypeVar("_E", User, Session, Task, Execution, ApiToken)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the repository takes aware datetimes only")
    return value.astimezone(UTC)


def _copy(entity: _E) -> _E:
    """A copy with every datetime field in UTC and the status an enum member (as the SQLite
    adapter hands them back). Raises ``ValueError`` for an unknown status."""
    changes: dict[str, Any] = {}
    if isinstance(entity, Task):
        changes["status"] = TaskStatus(entity.status)
    elif isinstance(entity, Execution):
        changes["status"] = ExecutionStatus(entity.status)
    for field in attrs.fields(type(entity)):
        value = getattr(entity, field.name)
        if isinstance(value, datetime):
            changes[field.name] = _utc(value)
    return attrs.evolve(entity, **changes)


class MemoryAccounts:
    """Users, sessions, API tokens, login failures and audit events on dicts, under one lock.
    ``delete_user`` reads the tasks and the environment owners the subclass keeps."""

    _tasks: dict[int, Task]
    _owners: dict[str, int | None]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[int, User] = {}
        self._sessions: dict[str, Session] = {}
        self._failures: list[tuple[str, str, datetime]] = []
        self._audit: list[AuditEvent] = []
        self._tokens: dict[int, ApiToken] = {}
        self._last_user_id = 0
        self._last_token_id = 0
        self._last_audit_id = 0

    def _check_user(self, user_id: int) -> None:
        if user_id not in self._users:
            raise LookupError(f"no user with id {user_id}")

    # --- users ---------------------------------------------------------------------------------

    def add_user(
        self, *, username: str, password_hash: str, is_admin: bool, created_at: datetime
    ) -> User:
        """Store a new user. Raises ``UserExists``."""
        with self._lock:
            if any(u.username == username for u in self._users.values()):
                raise UserExists(username)
            user = User(
                id=self._last_user_id + 1,
                username=username,
                password_hash=password_hash,
                is_admin=bool(is_admin),
                created_at=_utc(created_at),
            )
            self._last_user_id = user.id
            self._users[user.id] = user
            return _copy(user)

    def get_user(self, user_id: int) -> User | None:
        with self._lock:
            user = self._users.get(user_id)
            return None if user is None else _copy(user)

    def get_user_by_name(self, username: str) -> User | None:
        with self._lock:
            for user in self._users.values():
                if user.username == username:
                    return _copy(user)
            return None

    def count_users(self) -> int:
        with self._lock:
            return len(self._users)

    def list_users(self) -> list[User]:
        with self._lock:
            return [_copy(u) for _, u in sorted(self._users.items())]

    def update_user(
        self, user_id: int, change: UserChange, *, keep_session: str | None = None
    ) -> tuple[User, int]:
        with self._lock:
            user = self._users.get(user_id)
            if user is None:
                raise UserNotFound(f"#{user_id}")
            after = attrs.evolve(
                user,
                is_admin=user.is_admin if change.is_admin is None else change.is_admin,
                disabled=user.disabled if change.disabled is None else change.disabled,
                password_hash=change.password_hash or user.password_hash,
            )
            self._keep_an_admin(user, after)
            self._users[user_id] = after
            ended = 0
            if change.revokes_sessions:
                doomed = [
                    h
                    for h, s in self._sessions.items()
                    if s.user_id == user_id and h != keep_session
                ]
                for token_hash in doomed:
                    del self._sessions[token_hash]
                ended = len(doomed)
                self._tokens = {i: t for i, t in self._tokens.items() if t.user_id != user_id}
            return _copy(after), ended

    def delete_user(self, user_id: int) -> None:
        with self._lock:
            user = self._users.get(user_id)
            if user is None:
                raise UserNotFound(f"#{user_id}")
            owned = sum(1 for t in self._tasks.values() if t.owner_id == user_id)
            if owned:
                raise UserOwnsTasks(user.username, owned)
            self._keep_an_admin(user, None)
            del self._users[user_id]
            self._sessions = {h: s for h, s in self._sessions.items() if s.user_id != user_id}
            self._tokens = {i: t for i, t in self._tokens.items() if t.user_id != user_id}
            for name, owner in self._owners.items():
                if owner == user_id:
                    self._owners[name] = None

    def _keep_an_admin(self, before: User, after: User | None) -> None:
        if not before.is_admin or before.disabled:
            return
        others = [u for u in self._users.values() if u.id != before.id]
        if after is not None:
            others.append(after)
        if not any(u.is_admin and not u.disabled for u in others):
            raise LastAdmin(before.username)

    # --- sessions ------------------------------------------------------------------------------

    def add_session(self, session: Session, *, max_per_user: int | None = None) -> int:
        """Store a session; beyond ``max_per_user``, delete the user's oldest. Raises
        ``LookupError`` for an unknown user, ``ValueError`` for a token hash already stored."""
        with self._lock:
            self._check_user(session.user_id)
            if session.token_hash in self._sessions:
                raise ValueError("a session with this token hash exists")
            self._sessions[session.token_hash] = _copy(session)
            if max_per_user is None:
                return 0
            # dicts keep insertion order: among equal creation times, the later stored is newer
            own = [s for s in self._sessions.values() if s.user_id == session.user_id]
            ranked = sorted(enumerate(own), key=lambda p: (p[1].created_at, p[0]), reverse=True)
            doomed = [s.token_hash for _, s in ranked[max(1, max_per_user) :]]
            for token_hash in doomed:
                del self._sessions[token_hash]
            return len(doomed)

    def get_session(self, token_hash: str) -> Session | None:
        with self._lock:
            session = self._sessions.get(token_hash)
            return None if session is None else _copy(session)

    def touch_session(self, token_hash: str, last_seen_at: datetime) -> None:
        when = _utc(last_seen_at)
        with self._lock:
            session = self._sessions.get(token_hash)
            if session is not None:
                session.last_seen_at = when

    def delete_session(self, token_hash: str) -> None:
        with self._lock:
            self._sessions.pop(token_hash, None)

    def delete_sessions_before(self, *, idle_before: datetime, created_before: datetime) -> int:
        """Delete sessions idle since before ``idle_before`` or created before
        ``created_before``; return how many."""
        idle, created = _utc(idle_before), _utc(created_before)
        with self._lock:
            doomed = [
                s.token_hash
                for s in self._sessions.values()
                if s.last_seen_at < idle or s.created_at < created
            ]
            for token_hash in doomed:
                del self._sessions[token_hash]
            return len(doomed)

    def count_sessions_by_user(self) -> dict[int, int]:
        with self._lock:
            counts: dict[int, int] = {}
            for s in self._sessions.values():
                counts[s.user_id] = counts.get(s.user_id, 0) + 1
            return counts

    # --- API tokens ----------------------------------------------------------------------------

    def add_token(self, token: ApiToken, *, max_per_user: int | None = None) -> ApiToken:
        with self._lock:
            self._check_user(token.user_id)
            own = sum(1 for t in self._tokens.values() if t.user_id == token.user_id)
            if max_per_user is not None and own >= max_per_user:
                raise InvalidInput("name", f"At most {max_per_user} tokens per user")
            if any(t.token_hash == token.token_hash for t in self._tokens.values()):
                raise ValueError("a token with this hash exists")
            self._last_token_id += 1
            stored = attrs.evolve(token, id=self._last_token_id)
            self._tokens[stored.id] = stored
            return _copy(stored)

    def get_token(self, token_id: int) -> ApiToken | None:
        with self._lock:
            token = self._tokens.get(token_id)
            return None if token is None else _copy(token)

    def get_token_by_hash(self, token_hash: str) -> ApiToken | None:
        with self._lock:
            for token in self._tokens.values():
                if token.token_hash == token_hash:
                    return _copy(token)
            return None

    def list_tokens(self, user_id: int | None = None) -> list[ApiToken]:
        with self._lock:
            return [
                _copy(t)
                for _, t in sorted(self._tokens.items())
                if user_id is None or t.user_id == user_id
            ]

    def touch_token(self, token_id: int, last_used_at: datetime) -> None:
        when = _utc(last_used_at)
        with self._lock:
            token = self._tokens.get(token_id)
            if token is not None:
                token.last_used_at = when

    def delete_token(self, token_id: int) -> None:
        with self._lock:
            self._tokens.pop(token_id, None)

    # --- login throttling ----------------------------------------------------------------------

    def add_login_failure(self, *, username: str, client: str, at: datetime) -> None:
        when = _utc(at)
        with self._lock:
            self._failures.append((username, client, when))

    def login_failures_of_client(
        self, *, client: str, since: datetime
    ) -> list[tuple[datetime, str]]:
        start = _utc(since)
        with self._lock:
            return sorted(
                (at, name) for (name, addr, at) in self._failures if addr == client and at >= start
            )

    def clear_login_failures(self, *, username: str, client: str) -> None:
        with self._lock:
            self._failures = [f for f in self._failures if f[:2] != (username, client)]

    def delete_login_failures_before(self, before: datetime) -> int:
        end = _utc(before)
        with self._lock:
            kept = [f for f in self._failures if f[2] >= end]
            removed = len(self._failures) - len(kept)
            self._failures = kept
            return removed

    # --- audit ---------------------------------------------------------------------------------

    def add_audit_event(self, event: AuditEvent) -> None:
        with self._lock:
            self._last_audit_id += 1
            self._audit.append(attrs.evolve(event, id=self._last_audit_id))

    def audit_page(self, *, limit: int, before: int | None = None) -> list[AuditEvent]:
        with self._lock:
            newer_first = reversed(self._audit)
            return [e for e in newer_first if before is None or e.id < before][:limit]

    def prune_audit(self, before: datetime) -> int:
        end = _utc(before)
        with self._lock:
            kept = [e for e in self._audit if e.at >= end]
            removed = len(self._audit) - len(kept)
            self._audit = kept
            return removed
