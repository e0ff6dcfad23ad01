"""The SQLite repository's accounts: users, sessions, API tokens, login failures and the audit
log (the ``Repository`` methods about who may do what; ``sqlite.SqliteRepository`` adds the
rest). One transaction per change, as everywhere in the repository: see ``sqlite``."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from ctm_adapters._sqlite_schema import (
    Row,
    audit_from_row,
    dt_in,
    dt_out,
    is_foreign_key_violation,
    is_unique_violation,
    opt_dt_out,
    session_from_row,
    token_from_row,
    user_from_row,
    utc,
)
from ctm_adapters._sqlite_store import (
    SqliteStore,
)
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
    Session,
    User,
    UserChange,
)


class SqliteAccounts(SqliteStore):
    """Users, sessions, API tokens, login failures and audit events on the store's file."""

    # --- users ---------------------------------------------------------------------------------

    def add_user(
        self, *, username: str, password_hash: str, is_admin: bool, created_at: datetime
    ) -> User:
        """Store a new user. Raises ``UserExists``."""
        user = User(
            id=0,
            username=username,
            password_hash=password_hash,
            is_admin=bool(is_admin),
            created_at=utc(created_at),
        )
        with self._lock:
            try:
                cursor = self._conn.execute(
                    "INSERT INTO users (username, password_hash, is_admin, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (username, password_hash, 1 if is_admin else 0, dt_out(created_at)),
                )
            except sqlite3.IntegrityError as e:
                if is_unique_violation(e, "users.username"):
                    raise UserExists(username) from None
                raise
        assert cursor.lastrowid is not None
        user.id = cursor.lastrowid
        return user

    def get_user(self, user_id: int) -> User | None:
        row = self._read_one("SELECT * FROM users WHERE id = ?", (user_id,))
        return None if row is None else user_from_row(row)

    def get_user_by_name(self, username: str) -> User | None:
        row = self._read_one("SELECT * FROM users WHERE username = ?", (username,))
        return None if row is None else user_from_row(row)

    def count_users(self) -> int:
        row = self._read_one("SELECT count(*) AS n FROM users")
        return int(row["n"]) if row else 0

    def list_users(self) -> list[User]:
        return [user_from_row(r) for r in self._read("SELECT * FROM users ORDER BY id")]

    def update_user(
        self, user_id: int, change: UserChange, *, keep_session: str | None = None
    ) -> tuple[User, int]:
        sets = {
            "is_admin": None if change.is_admin is None else int(change.is_admin),
            "disabled": None if change.disabled is None else int(change.disabled),
            "password_hash": change.password_hash,
        }
        with self._transaction():
            before = self._one("SELECT * FROM users WHERE id = ?", (user_id,))
            if before is None:
                raise UserNotFound(f"#{user_id}")
            self._write(
                "UPDATE users SET is_admin = coalesce(:is_admin, is_admin),"
                " disabled = coalesce(:disabled, disabled),"
                " password_hash = coalesce(:password_hash, password_hash) WHERE id = :id",
                {**sets, "id": user_id},
            )
            self._keep_an_admin(before)
            ended = 0
            if change.revokes_sessions:
                ended = self._write(
                    "DELETE FROM sessions WHERE user_id = ? AND token_hash IS NOT ?",
                    (user_id, keep_session),
                )
                self._write("DELETE FROM api_tokens WHERE user_id = ?", (user_id,))
            after = self._one("SELECT * FROM users WHERE id = ?", (user_id,))
        assert after is not None
        return user_from_row(after), ended

    def delete_user(self, user_id: int) -> None:
        with self._transaction():
            before = self._one("SELECT * FROM users WHERE id = ?", (user_id,))
            if before is None:
                raise UserNotFound(f"#{user_id}")
            owned = self._one("SELECT count(*) AS n FROM tasks WHERE owner_id = ?", (user_id,))
            if owned and owned["n"]:
                raise UserOwnsTasks(str(before["username"]), int(owned["n"]))
            self._write("DELETE FROM users WHERE id = ?", (user_id,))
            self._keep_an_admin(before)

    def _keep_an_admin(self, changed: Row) -> None:
        """In a transaction that changed the user ``changed`` (its row before): raise
        ``LastAdmin`` (rolling back) when it was an enabled admin and none is left."""
        if not changed["is_admin"] or changed["disabled"]:
            return
        left = self._one("SELECT count(*) AS n FROM users WHERE is_admin = 1 AND disabled = 0")
        if not left or not left["n"]:
            raise LastAdmin(str(changed["username"]))

    # --- sessions ------------------------------------------------------------------------------

    def add_session(self, session: Session, *, max_per_user: int | None = None) -> int:
        """Store a session; beyond ``max_per_user``, delete the user's oldest. Raises
        ``LookupError`` for an unknown user, ``ValueError`` for a token hash already stored."""
        with self._transaction():
            try:
                self._write(
                    "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        session.token_hash,
                        session.user_id,
                        dt_out(session.created_at),
                        dt_out(session.last_seen_at),
                    ),
                )
            except sqlite3.IntegrityError as e:
                if is_foreign_key_violation(e):
                    raise LookupError(f"no user with id {session.user_id}") from None
                if is_unique_violation(e, "sessions.token_hash"):
                    raise ValueError("a session with this token hash exists") from None
                raise
            if max_per_user is None:
                return 0
            return self._write(
                "DELETE FROM sessions WHERE user_id = :user AND rowid NOT IN"
                " (SELECT rowid FROM sessions WHERE user_id = :user"
                "  ORDER BY created_at DESC, rowid DESC LIMIT :keep)",
                {"user": session.user_id, "keep": max(1, max_per_user)},
            )

    def get_session(self, token_hash: str) -> Session | None:
        row = self._read_one("SELECT * FROM sessions WHERE token_hash = ?", (token_hash,))
        return None if row is None else session_from_row(row)

    def touch_session(self, token_hash: str, last_seen_at: datetime) -> None:
        with self._lock:
            self._write(
                "UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?",
                (dt_out(last_seen_at), token_hash),
            )

    def delete_session(self, token_hash: str) -> None:
        with self._lock:
            self._write("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def delete_sessions_before(self, *, idle_before: datetime, created_before: datetime) -> int:
        """Delete sessions idle since before ``idle_before`` or created before
        ``created_before``; return how many."""
        with self._lock:
            return self._write(
                "DELETE FROM sessions WHERE last_seen_at < ? OR created_at < ?",
                (dt_out(idle_before), dt_out(created_before)),
            )

    def count_sessions_by_user(self) -> dict[int, int]:
        rows = self._read("SELECT user_id, count(*) AS n FROM sessions GROUP BY user_id")
        return {int(r["user_id"]): int(r["n"]) for r in rows}

    # --- API tokens ----------------------------------------------------------------------------

    def add_token(self, token: ApiToken, *, max_per_user: int | None = None) -> ApiToken:
        with self._transaction():
            if max_per_user is not None:
                row = self._one(
                    "SELECT count(*) AS n FROM api_tokens WHERE user_id = ?", (token.user_id,)
                )
                if row and row["n"] >= max_per_user:
                    raise InvalidInput("name", f"At most {max_per_user} tokens per user")
            try:
                self._write(
                    "INSERT INTO api_tokens"
                    " (user_id, name, token_hash, created_at, expires_at, last_used_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        token.user_id,
                        token.name,
                        token.token_hash,
                        dt_out(token.created_at),
                        opt_dt_out(token.expires_at),
                        opt_dt_out(token.last_used_at),
                    ),
                )
            except sqlite3.IntegrityError as e:
                if is_foreign_key_violation(e):
                    raise LookupError(f"no user with id {token.user_id}") from None
                raise
            row = self._one("SELECT * FROM api_tokens WHERE token_hash = ?", (token.token_hash,))
        assert row is not None
        return token_from_row(row)

    def get_token(self, token_id: int) -> ApiToken | None:
        row = self._read_one("SELECT * FROM api_tokens WHERE id = ?", (token_id,))
        return None if row is None else token_from_row(row)

    def get_token_by_hash(self, token_hash: str) -> ApiToken | None:
        row = self._read_one("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,))
        return None if row is None else token_from_row(row)

    def list_tokens(self, user_id: int | None = None) -> list[ApiToken]:
        rows = self._read(
            "SELECT * FROM api_tokens WHERE ? IS NULL OR user_id = ? ORDER BY id",
            (user_id, user_id),
        )
        return [token_from_row(r) for r in rows]

    def touch_token(self, token_id: int, last_used_at: datetime) -> None:
        with self._lock:
            self._write(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ?",
                (dt_out(last_used_at), token_id),
            )

    def delete_token(self, token_id: int) -> None:
        with self._lock:
            self._write("DELETE FROM api_tokens WHERE id = ?", (token_id,))

    # --- login throttling ----------------------------------------------------------------------

    def add_login_failure(self, *, username: str, client: str, at: datetime) -> None:
        with self._lock:
            self._write(
                "INSERT INTO login_failures (username, client, at) VALUES (?, ?, ?)",
                (username, client, dt_out(at)),
            )

    def login_failures_of_client(
        self, *, client: str, since: datetime
    ) -> list[tuple[datetime, str]]:
        rows = self._read(
            "SELECT at, username FROM login_failures WHERE client = ? AND at >= ? ORDER BY at",
            (client, dt_out(since)),
        )
        return [(dt_in(r["at"]), str(r["username"])) for r in rows]

    def clear_login_failures(self, *, username: str, client: str) -> None:
        with self._lock:
            self._write(
                "DELETE FROM login_failures WHERE username = ? AND client = ?", (username, client)
            )

    def delete_login_failures_before(self, before: datetime) -> int:
        with self._lock:
            return self._write("DELETE FROM login_failures WHERE at < ?", (dt_out(before),))

    # --- audit ---------------------------------------------------------------------------------

    def add_audit_event(self, event: AuditEvent) -> None:
        with self._lock:
            self._write(
                "INSERT INTO audit_events (at, actor, address, action, target, outcome, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    dt_out(event.at),
                    event.actor,
                    event.address,
                    event.action,
                    event.target,
                    event.outcome,
                    json.dumps(event.detail, ensure_ascii=False, default=str),
                ),
            )

    def audit_page(self, *, limit: int, before: int | None = None) -> list[AuditEvent]:
        rows = self._read(
            "SELECT * FROM audit_events WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before if before is not None else 2**63 - 1, limit),
        )
        return [audit_from_row(r) for r in rows]

    def prune_audit(self, before: datetime) -> int:
        with self._lock:
            return self._write("DELETE FROM audit_events WHERE at < ?", (dt_out(before),))
