"""The Repository port on one SQLite file, through sqlite-utils.

One connection, shared by every thread (HTTP thread pool, run threads) and serialized by a lock;
WAL journal mode so a backup or a reader in another process never blocks it; foreign keys on; a
busy timeout for the rare writer in another process (an admin CLI). The schema is built by named
migrations (sqlite-utils ``Migrations``), applied in order at construction and recorded in
``_sqlite_migrations``. See ``docs/storage.md``.

Datetimes are stored as fixed-width ISO-8601 UTC text (``2024-05-01T12:00:00.000000+00:00``), so
text order is time order in SQL, and come back as aware UTC datetimes. Enums are stored as their
string value, booleans as 0/1. Rows become entities field by field in the ``_*_from_row``
functions; nothing does ``Task(**row)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlite_utils import Database, Migrations

from ctm_core.errors import TaskExists, TaskNotFound, UserExists
from ctm_core.models import (
    Execution,
    ExecutionStatus,
    Session,
    Task,
    TaskStatus,
    User,
)

__all__ = ["MIGRATIONS", "SqliteRepository"]

# Status sets as JSON arrays, bound as one parameter and read with json_each().
_FINISHED = json.dumps([s.value for s in ExecutionStatus if s.finished])
_PRUNABLE = json.dumps(
    [s.value for s in ExecutionStatus if s.finished or s is ExecutionStatus.SKIPPED]
)
_UNFINISHED = json.dumps([ExecutionStatus.QUEUED.value, ExecutionStatus.RUNNING.value])

# --- schema ------------------------------------------------------------------------------------

MIGRATIONS = Migrations("ctm")
"""The ordered, named schema migrations. Append new ones; never edit or reorder applied ones."""

_INITIAL_SCHEMA = (
    """
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        username      TEXT    NOT NULL UNIQUE,
        password_hash TEXT    NOT NULL,
        is_admin      INTEGER NOT NULL CHECK (is_admin IN (0, 1)),
        created_at    TEXT    NOT NULL
    ) STRICT
    """,
    """
    CREATE TABLE sessions (
        token_hash   TEXT    PRIMARY KEY,
        user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at   TEXT    NOT NULL,
        last_seen_at TEXT    NOT NULL
    ) STRICT
    """,
    "CREATE INDEX sessions_user_id ON sessions (user_id)",
    """
    CREATE TABLE login_failures (
        id       INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        client   TEXT NOT NULL,
        at       TEXT NOT NULL
    ) STRICT
    """,
    "CREATE INDEX login_failures_username_at ON login_failures (username, at)",
    "CREATE INDEX login_failures_client_at ON login_failures (client, at)",
    """
    CREATE TABLE environment_owners (
        name    TEXT    PRIMARY KEY,
        user_id INTEGER REFERENCES users (id) ON DELETE SET NULL
    ) STRICT
    """,
    "CREATE INDEX environment_owners_user_id ON environment_owners (user_id)",
    """
    CREATE TABLE tasks (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        name              TEXT    NOT NULL UNIQUE,
        owner_id          INTEGER,
        script_path       TEXT    NOT NULL,
        script_stored     INTEGER NOT NULL CHECK (script_stored IN (0, 1)),
        conda_env         TEXT    NOT NULL,
        requirements      TEXT,
        cron_expression   TEXT,
        delay_seconds     REAL,
        timeout_seconds   REAL,
        status            TEXT    NOT NULL,
        created_at        TEXT    NOT NULL,
        next_run_at       TEXT,
        last_run_at       TEXT,
        last_run_duration REAL,
        last_execution_id TEXT
    ) STRICT
    """,
    "CREATE INDEX tasks_conda_env ON tasks (conda_env)",
    """
    CREATE TABLE executions (
        id             TEXT    PRIMARY KEY,
        task_id        INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        status         TEXT    NOT NULL,
        scheduled_for  TEXT,
        start_time     TEXT,
        end_time       TEXT,
        duration       REAL,
        peak_memory_mb REAL,
        avg_memory_mb  REAL,
        exit_code      INTEGER,
        log_path       TEXT,
        pid            INTEGER,
        note           TEXT
    ) STRICT
    """,
    "CREATE INDEX executions_task_id_start_time ON executions (task_id, start_time)",
    "CREATE INDEX executions_status_end_time ON executions (status, end_time)",
    "CREATE INDEX executions_start_time ON executions (start_time)",
)


@MIGRATIONS(name="0001_initial_schema")
def _initial_schema(db: Database) -> None:
    for statement in _INITIAL_SCHEMA:
        db.execute(statement)


@MIGRATIONS(name="0002_task_run_limits_and_skip_runs")
def _task_run_limits_and_skip_runs(db: Database) -> None:
    for statement in (
        "ALTER TABLE tasks ADD COLUMN memory_limit_mb REAL",
        "ALTER TABLE tasks ADD COLUMN max_processes INTEGER",
        "ALTER TABLE tasks ADD COLUMN cpu_limit REAL",
        "ALTER TABLE tasks ADD COLUMN network INTEGER CHECK (network IN (0, 1))",
        "ALTER TABLE executions ADD COLUMN skip_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE executions ADD COLUMN first_skipped_at TEXT",
        "ALTER TABLE executions ADD COLUMN last_skipped_at TEXT",
        # Each skipped row of before stood for one occurrence.
        "UPDATE executions SET skip_count = 1, first_skipped_at = scheduled_for,"
        " last_skipped_at = scheduled_for WHERE status = 'skipped'",
    ):
        db.execute(statement)


# --- value conversion --------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the repository takes aware datetimes only")
    return value.astimezone(UTC)


def _dt_out(value: datetime) -> str:
    """Fixed-width ISO-8601 UTC text: its text order is its time order."""
    return _utc(value).isoformat(timespec="microseconds")


def _opt_dt_out(value: datetime | None) -> str | None:
    return None if value is None else _dt_out(value)


def _dt_in(value: Any) -> datetime:
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def _opt_dt_in(value: Any) -> datetime | None:
    return None if value is None else _dt_in(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


# --- rows <-> entities -------------------------------------------------------------------------

_Row = dict[str, Any]


def _user_from_row(row: _Row) -> User:
    return User(
        id=int(row["id"]),
        username=str(row["username"]),
        password_hash=str(row["password_hash"]),
        is_admin=bool(row["is_admin"]),
        created_at=_dt_in(row["created_at"]),
    )


def _session_from_row(row: _Row) -> Session:
    return Session(
        token_hash=str(row["token_hash"]),
        user_id=int(row["user_id"]),
        created_at=_dt_in(row["created_at"]),
        last_seen_at=_dt_in(row["last_seen_at"]),
    )


_TASK_COLUMNS = (
    "name",
    "owner_id",
    "script_path",
    "script_stored",
    "conda_env",
    "requirements",
    "cron_expression",
    "delay_seconds",
    "timeout_seconds",
    "status",
    "created_at",
    "next_run_at",
    "last_run_at",
    "last_run_duration",
    "last_execution_id",
    "memory_limit_mb",
    "max_processes",
    "cpu_limit",
    "network",
)


def _task_to_row(task: Task) -> _Row:
    """Every column but ``id``, in ``_TASK_COLUMNS`` order."""
    return {
        "name": task.name,
        "owner_id": task.owner_id,
        "script_path": task.script_path,
        "script_stored": 1 if task.script_stored else 0,
        "conda_env": task.conda_env,
        "requirements": task.requirements,
        "cron_expression": task.cron_expression,
        "delay_seconds": task.delay_seconds,
        "timeout_seconds": task.timeout_seconds,
        "status": TaskStatus(task.status).value,
        "created_at": _dt_out(task.created_at),
        "next_run_at": _opt_dt_out(task.next_run_at),
        "last_run_at": _opt_dt_out(task.last_run_at),
        "last_run_duration": task.last_run_duration,
        "last_execution_id": task.last_execution_id,
        "memory_limit_mb": task.memory_limit_mb,
        "max_processes": task.max_processes,
        "cpu_limit": task.cpu_limit,
        "network": None if task.network is None else int(task.network),
    }


def _task_from_row(row: _Row) -> Task:
    return Task(
        id=int(row["id"]),
        name=str(row["name"]),
        owner_id=_opt_int(row["owner_id"]),
        script_path=str(row["script_path"]),
        script_stored=bool(row["script_stored"]),
        conda_env=str(row["conda_env"]),
        requirements=_opt_str(row["requirements"]),
        cron_expression=_opt_str(row["cron_expression"]),
        delay_seconds=_opt_float(row["delay_seconds"]),
        timeout_seconds=_opt_float(row["timeout_seconds"]),
        status=TaskStatus(row["status"]),
        created_at=_dt_in(row["created_at"]),
        next_run_at=_opt_dt_in(row["next_run_at"]),
        last_run_at=_opt_dt_in(row["last_run_at"]),
        last_run_duration=_opt_float(row["last_run_duration"]),
        last_execution_id=_opt_str(row["last_execution_id"]),
        memory_limit_mb=_opt_float(row["memory_limit_mb"]),
        max_processes=_opt_int(row["max_processes"]),
        cpu_limit=_opt_float(row["cpu_limit"]),
        network=None if row["network"] is None else bool(row["network"]),
    )


_EXECUTION_COLUMNS = (
    "id",
    "task_id",
    "status",
    "scheduled_for",
    "start_time",
    "end_time",
    "duration",
    "peak_memory_mb",
    "avg_memory_mb",
    "exit_code",
    "log_path",
    "pid",
    "note",
    "skip_count",
    "first_skipped_at",
    "last_skipped_at",
)


def _execution_to_row(execution: Execution) -> _Row:
    return {
        "id": execution.id,
        "task_id": execution.task_id,
        "status": ExecutionStatus(execution.status).value,
        "scheduled_for": _opt_dt_out(execution.scheduled_for),
        "start_time": _opt_dt_out(execution.start_time),
        "end_time": _opt_dt_out(execution.end_time),
        "duration": execution.duration,
        "peak_memory_mb": execution.peak_memory_mb,
        "avg_memory_mb": execution.avg_memory_mb,
        "exit_code": execution.exit_code,
        "log_path": execution.log_path,
        "pid": execution.pid,
        "note": execution.note,
        "skip_count": execution.skip_count,
        "first_skipped_at": _opt_dt_out(execution.first_skipped_at),
        "last_skipped_at": _opt_dt_out(execution.last_skipped_at),
    }


def _execution_from_row(row: _Row) -> Execution:
    return Execution(
        id=str(row["id"]),
        task_id=int(row["task_id"]),
        status=ExecutionStatus(row["status"]),
        scheduled_for=_opt_dt_in(row["scheduled_for"]),
        start_time=_opt_dt_in(row["start_time"]),
        end_time=_opt_dt_in(row["end_time"]),
        duration=_opt_float(row["duration"]),
        peak_memory_mb=_opt_float(row["peak_memory_mb"]),
        avg_memory_mb=_opt_float(row["avg_memory_mb"]),
        exit_code=_opt_int(row["exit_code"]),
        log_path=_opt_str(row["log_path"]),
        pid=_opt_int(row["pid"]),
        note=_opt_str(row["note"]),
        skip_count=int(row["skip_count"] or 0),
        first_skipped_at=_opt_dt_in(row["first_skipped_at"]),
        last_skipped_at=_opt_dt_in(row["last_skipped_at"]),
    )


# Built once at import from the constant column tuples above, never from input.
def _insert(table: str, columns: Sequence[str]) -> str:
    names, values = ", ".join(columns), ", ".join(":" + c for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"  # noqa: S608


def _update(table: str, columns: Sequence[str]) -> str:
    sets = ", ".join(f"{c} = :{c}" for c in columns if c != "id")
    return f"UPDATE {table} SET {sets} WHERE id = :id"  # noqa: S608


_TASK_INSERT = _insert("tasks", _TASK_COLUMNS)
_TASK_UPDATE = _update("tasks", _TASK_COLUMNS)
_EXECUTION_INSERT = _insert("executions", _EXECUTION_COLUMNS)
_EXECUTION_UPDATE = _update("executions", _EXECUTION_COLUMNS)
# Newest first: not yet started first (a queued run is the newest thing a task has), then by start
# time, then by scheduled time (unscheduled first), then the latest inserted first.
_EXECUTIONS_OF_TASK = """
    SELECT * FROM executions WHERE task_id = ?
    ORDER BY start_time IS NULL DESC, start_time DESC,
             scheduled_for IS NULL DESC, scheduled_for DESC, rowid DESC
"""
# The latest stored (not the latest started): only firings add executions, in order.
_LATEST_EXECUTION_OF_TASK = """
    SELECT * FROM executions
    WHERE rowid = (SELECT MAX(rowid) FROM executions WHERE task_id = ?)
"""
_EXECUTIONS_SINCE = """
    SELECT * FROM executions WHERE start_time >= ?
    ORDER BY start_time DESC, scheduled_for IS NULL DESC, scheduled_for DESC, rowid DESC
"""
_EXECUTIONS_WITH_STATUS = """
    SELECT * FROM executions WHERE status IN (SELECT value FROM json_each(?))
    ORDER BY start_time IS NULL DESC, start_time DESC,
             scheduled_for IS NULL DESC, scheduled_for DESC, rowid DESC
"""
_PRUNABLE_LOGS = """
    SELECT log_path FROM executions
    WHERE status IN (SELECT value FROM json_each(:statuses)) AND end_time < :before
"""
_PRUNE = """
    DELETE FROM executions
    WHERE status IN (SELECT value FROM json_each(:statuses)) AND end_time < :before
"""


def _check_skip(skip: Execution, task: Task) -> None:
    if skip.status is not ExecutionStatus.SKIPPED or skip.task_id != task.id:
        raise ValueError(f"execution {skip.id!r} is not a skipped execution of task {task.id}")


def _is_unique_violation(error: sqlite3.IntegrityError, column: str) -> bool:
    return "UNIQUE constraint failed" in str(error) and column in str(error)


def _is_foreign_key_violation(error: sqlite3.IntegrityError) -> bool:
    return "FOREIGN KEY constraint failed" in str(error)


def _create_private_file(path: str) -> None:
    """Create ``path`` mode 0600 if missing; take group/other access away if present."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            with contextlib.suppress(PermissionError):  # not ours: leave it to its owner
                os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


# --- the repository ----------------------------------------------------------------------------


class SqliteRepository:
    """The Repository port on the SQLite file at ``path`` (``":memory:"`` for a throwaway one).

    The file (and SQLite's ``-wal``/``-shm`` companions, which inherit its mode) is created 0600:
    it holds password and session hashes. Pending migrations are applied here. Thread-safe; call
    ``close()`` when done (or use it as a context manager).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:":
            _create_private_file(self.path)
        self._lock = threading.Lock()
        conn = sqlite3.connect(self.path, timeout=busy_timeout, check_same_thread=False)
        try:
            self._db = Database(conn, execute_plugins=False)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.enable_wal()
            # In WAL mode NORMAL is safe from corruption; only a power cut may lose the last
            # commits (never an application crash).
            self._db.execute("PRAGMA synchronous = NORMAL")
            MIGRATIONS.apply(self._db)
        except BaseException:
            conn.close()
            raise

    # --- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (checkpointing the WAL). Idempotent."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteRepository:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[_Row]:
        cursor = self._db.execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]

    def _one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> _Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _write(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one change (its own transaction unless one is open); return the rows changed."""
        return self._db.execute(sql, params).rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, taking the write lock at once (no deadlock on upgrade)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.rollback()
            raise
        else:
            self._db.commit()

    def _executions(self, sql: str, params: Sequence[Any]) -> list[Execution]:
        with self._lock:
            rows = self._rows(sql, params)
        return [_execution_from_row(r) for r in rows]

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
            created_at=_utc(created_at),
        )
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO users (username, password_hash, is_admin, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (username, password_hash, 1 if is_admin else 0, _dt_out(created_at)),
                )
            except sqlite3.IntegrityError as e:
                if _is_unique_violation(e, "users.username"):
                    raise UserExists(username) from None
                raise
        assert cursor.lastrowid is not None
        user.id = cursor.lastrowid
        return user

    def get_user(self, user_id: int) -> User | None:
        with self._lock:
            row = self._one("SELECT * FROM users WHERE id = ?", (user_id,))
        return None if row is None else _user_from_row(row)

    def get_user_by_name(self, username: str) -> User | None:
        with self._lock:
            row = self._one("SELECT * FROM users WHERE username = ?", (username,))
        return None if row is None else _user_from_row(row)

    def count_users(self) -> int:
        with self._lock:
            row = self._one("SELECT count(*) AS n FROM users")
        return int(row["n"]) if row else 0

    # --- sessions ------------------------------------------------------------------------------

    def add_session(self, session: Session) -> None:
        """Store a session. Raises ``LookupError`` for an unknown user, ``ValueError`` for a
        token hash already stored."""
        with self._lock:
            try:
                self._write(
                    "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        session.token_hash,
                        session.user_id,
                        _dt_out(session.created_at),
                        _dt_out(session.last_seen_at),
                    ),
                )
            except sqlite3.IntegrityError as e:
                if _is_foreign_key_violation(e):
                    raise LookupError(f"no user with id {session.user_id}") from None
                if _is_unique_violation(e, "sessions.token_hash"):
                    raise ValueError("a session with this token hash exists") from None
                raise

    def get_session(self, token_hash: str) -> Session | None:
        with self._lock:
            row = self._one("SELECT * FROM sessions WHERE token_hash = ?", (token_hash,))
        return None if row is None else _session_from_row(row)

    def touch_session(self, token_hash: str, last_seen_at: datetime) -> None:
        with self._lock:
            self._write(
                "UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?",
                (_dt_out(last_seen_at), token_hash),
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
                (_dt_out(idle_before), _dt_out(created_before)),
            )

    # --- login throttling ----------------------------------------------------------------------

    def add_login_failure(self, *, username: str, client: str, at: datetime) -> None:
        with self._lock:
            self._write(
                "INSERT INTO login_failures (username, client, at) VALUES (?, ?, ?)",
                (username, client, _dt_out(at)),
            )

    def login_failures_since(
        self, *, username: str, client: str, since: datetime
    ) -> list[datetime]:
        """Times of failures since ``since`` for this username OR this client address."""
        when = _dt_out(since)
        with self._lock:
            rows = self._rows(
                "SELECT at FROM login_failures"
                " WHERE (username = ? OR client = ?) AND at >= ? ORDER BY at",
                (username, client, when),
            )
        return [_dt_in(r["at"]) for r in rows]

    def clear_login_failures(self, *, username: str) -> None:
        with self._lock:
            self._write("DELETE FROM login_failures WHERE username = ?", (username,))

    def delete_login_failures_before(self, before: datetime) -> int:
        with self._lock:
            return self._write("DELETE FROM login_failures WHERE at < ?", (_dt_out(before),))

    # --- environment owners --------------------------------------------------------------------

    def get_environment_owner(self, name: str) -> int | None:
        with self._lock:
            row = self._one("SELECT user_id FROM environment_owners WHERE name = ?", (name,))
        return None if row is None else _opt_int(row["user_id"])

    def set_environment_owner(self, name: str, user_id: int | None) -> None:
        """Record (or replace) the owner. Raises ``LookupError`` for an unknown user."""
        with self._lock:
            try:
                self._write(
                    "INSERT INTO environment_owners (name, user_id) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET user_id = excluded.user_id",
                    (name, user_id),
                )
            except sqlite3.IntegrityError as e:
                if _is_foreign_key_violation(e):
                    raise LookupError(f"no user with id {user_id}") from None
                raise

    def rename_environment(self, old: str, new: str) -> int:
        """Move the owner record and every task's ``conda_env`` from ``old`` to ``new`` in one
        transaction; return how many tasks changed. A record already under ``new`` is replaced
        by ``old``'s (or dropped when ``old`` has none)."""
        with self._lock, self._transaction():
            if old == new:
                return 0
            self._write("DELETE FROM environment_owners WHERE name = ?", (new,))
            self._write("UPDATE environment_owners SET name = ? WHERE name = ?", (new, old))
            return self._write("UPDATE tasks SET conda_env = ? WHERE conda_env = ?", (new, old))

    def forget_environment(self, name: str) -> None:
        with self._lock:
            self._write("DELETE FROM environment_owners WHERE name = ?", (name,))

    # --- tasks ---------------------------------------------------------------------------------

    def add_task(self, task: Task) -> Task:
        """Store ``task`` (its ``id`` is ignored) and return it with the id given. Raises
        ``TaskExists`` when the name is taken. Ids are never reused, even after a delete."""
        row = _task_to_row(task)
        with self._lock:
            try:
                cursor = self._db.execute(_TASK_INSERT, row)
            except sqlite3.IntegrityError as e:
                if _is_unique_violation(e, "tasks.name"):
                    raise TaskExists(task.name) from None
                raise
            assert cursor.lastrowid is not None
            stored = self._one("SELECT * FROM tasks WHERE id = ?", (cursor.lastrowid,))
        assert stored is not None
        return _task_from_row(stored)

    def get_task(self, task_id: int) -> Task:
        """Raises ``TaskNotFound``."""
        with self._lock:
            row = self._one("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            raise TaskNotFound(task_id)
        return _task_from_row(row)

    def get_task_by_name(self, name: str) -> Task | None:
        with self._lock:
            row = self._one("SELECT * FROM tasks WHERE name = ?", (name,))
        return None if row is None else _task_from_row(row)

    def list_tasks(self) -> list[Task]:
        """All tasks by id."""
        with self._lock:
            rows = self._rows("SELECT * FROM tasks ORDER BY id")
        return [_task_from_row(r) for r in rows]

    def _update_task(self, task: Task) -> None:
        params = _task_to_row(task)
        params["id"] = task.id
        try:
            changed = self._write(_TASK_UPDATE, params)
        except sqlite3.IntegrityError as e:
            if _is_unique_violation(e, "tasks.name"):
                raise TaskExists(task.name) from None
            raise
        if changed == 0:
            raise TaskNotFound(task.id)

    def update_task(self, task: Task) -> None:
        """Raises ``TaskNotFound``, and ``TaskExists`` when renamed to a name taken."""
        with self._lock:
            self._update_task(task)

    def delete_task(self, task_id: int) -> list[str]:
        """Delete the task and its executions; return their log paths. Raises ``TaskNotFound``."""
        with self._lock, self._transaction():
            rows = self._rows(_EXECUTIONS_OF_TASK, (task_id,))
            self._write("DELETE FROM executions WHERE task_id = ?", (task_id,))
            if self._write("DELETE FROM tasks WHERE id = ?", (task_id,)) == 0:
                raise TaskNotFound(task_id)
        return [str(r["log_path"]) for r in rows if r["log_path"] is not None]

    def tasks_using_environment(self, name: str) -> list[Task]:
        """Tasks whose ``conda_env`` is ``name``, by id."""
        with self._lock:
            rows = self._rows("SELECT * FROM tasks WHERE conda_env = ? ORDER BY id", (name,))
        return [_task_from_row(r) for r in rows]

    def count_tasks_owned_by(self, owner_id: int) -> int:
        with self._lock:
            row = self._one("SELECT COUNT(*) AS n FROM tasks WHERE owner_id = ?", (owner_id,))
        return int(row["n"]) if row is not None else 0

    # --- executions ----------------------------------------------------------------------------

    def add_execution(self, execution: Execution, *, task: Task | None = None) -> None:
        """Store a new execution (and update ``task`` in the same transaction). Raises
        ``TaskNotFound`` when its task does not exist and ``ValueError`` when its id is taken."""
        with self._lock, self._transaction():
            if task is not None:
                self._update_task(task)
            try:
                self._write(_EXECUTION_INSERT, _execution_to_row(execution))
            except sqlite3.IntegrityError as e:
                if _is_foreign_key_violation(e):
                    raise TaskNotFound(execution.task_id) from None
                if _is_unique_violation(e, "executions.id"):
                    raise ValueError(f"execution {execution.id!r} exists") from None
                raise

    def record_skip(self, skip: Execution, *, task: Task) -> Execution:
        """Add a skipped occurrence to the task's latest execution when that is a skipped
        record, else store ``skip`` as a new one; update ``task`` in the same transaction.
        Returns the record as stored. Raises ``TaskNotFound`` and ``ValueError``."""
        _check_skip(skip, task)
        with self._lock, self._transaction():
            self._update_task(task)
            row = self._one(_LATEST_EXECUTION_OF_TASK, (task.id,))
            latest = None if row is None else _execution_from_row(row)
            if latest is None or latest.status is not ExecutionStatus.SKIPPED:
                try:
                    self._write(_EXECUTION_INSERT, _execution_to_row(skip))
                except sqlite3.IntegrityError as e:
                    if _is_unique_violation(e, "executions.id"):
                        raise ValueError(f"execution {skip.id!r} exists") from None
                    raise
                return _execution_from_row(_execution_to_row(skip))
            latest.skip_count += skip.skip_count
            latest.last_skipped_at = skip.last_skipped_at
            latest.end_time = skip.end_time
            self._update_execution(latest)
            return latest

    def _update_execution(self, execution: Execution) -> None:
        try:
            self._write(_EXECUTION_UPDATE, _execution_to_row(execution))
        except sqlite3.IntegrityError as e:
            if _is_foreign_key_violation(e):
                raise TaskNotFound(execution.task_id) from None
            raise

    def update_execution(self, execution: Execution) -> None:
        """Replace a stored execution's fields. An unknown (e.g. pruned) one is ignored."""
        with self._lock:
            self._update_execution(execution)

    def save_run_state(self, task: Task, execution: Execution) -> None:
        """Update a task and one of its executions in one transaction. Raises ``TaskNotFound``
        (and ``TaskExists``) with nothing changed."""
        if execution.task_id != task.id:
            raise ValueError(f"execution {execution.id!r} is not of task {task.id}")
        with self._lock, self._transaction():
            self._update_execution(execution)
            self._update_task(task)

    def get_execution(self, execution_id: str) -> Execution | None:
        with self._lock:
            row = self._one("SELECT * FROM executions WHERE id = ?", (execution_id,))
        return None if row is None else _execution_from_row(row)

    def list_executions(self, task_id: int) -> list[Execution]:
        """A task's executions, newest first: not yet started ones first, then by start time,
        then by scheduled time (unscheduled first), then the latest stored first."""
        return self._executions(_EXECUTIONS_OF_TASK, (task_id,))

    def executions_since(self, since: datetime) -> list[Execution]:
        """Every execution that started at or after ``since``, newest first."""
        return self._executions(_EXECUTIONS_SINCE, (_dt_out(since),))

    def all_finished_executions(self) -> list[Execution]:
        """Every execution whose status is completed, failed or stopped, newest first."""
        return self._executions(_EXECUTIONS_WITH_STATUS, (_FINISHED,))

    def unfinished_executions(self) -> list[Execution]:
        """Executions left ``queued`` or ``running``, newest first."""
        return self._executions(_EXECUTIONS_WITH_STATUS, (_UNFINISHED,))

    def prune_executions(self, before: datetime) -> list[str]:
        """Delete finished or skipped executions that ended before ``before``; return their log
        paths."""
        params = {"statuses": _PRUNABLE, "before": _dt_out(before)}
        with self._lock, self._transaction():
            rows = self._rows(_PRUNABLE_LOGS, params)
            self._write(_PRUNE, params)
        return [str(r["log_path"]) for r in rows if r["log_path"] is not None]
