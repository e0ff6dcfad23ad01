"""The SQLite repository's schema, its migrations, and the conversion of rows to entities.

Datetimes are stored as fixed-width ISO-8601 UTC text (``2024-05-01T12:00:00.000000+00:00``), so
text order is time order in SQL, and come back as aware UTC datetimes. Enums are stored as their
string value, booleans as 0/1. Rows become entities field by field in the ``*_from_row``
functions; nothing does ``Task(**row)``. See ``docs/storage.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlite_utils import Database, Migrations

from ctm_core.models import (
    ApiToken,
    AuditEvent,
    Execution,
    ExecutionStatus,
    Session,
    Task,
    TaskStatus,
    User,
)

# Status sets as JSON arrays, bound as one parameter and read with json_each().
PRUNABLE = json.dumps(
    [s.value for s in ExecutionStatus if s.finished or s is ExecutionStatus.SKIPPED]
)
UNFINISHED = json.dumps([ExecutionStatus.QUEUED.value, ExecutionStatus.RUNNING.value])
STARTED = json.dumps(
    [s.value for s in ExecutionStatus if s.finished or s is ExecutionStatus.RUNNING]
)

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


@MIGRATIONS(name="0003_indexes_for_paged_reads")
def _indexes_for_paged_reads(db: Database) -> None:
    for statement in (
        # A task's page and the history's page, read in their order straight off an index.
        "DROP INDEX executions_task_id_start_time",
        "CREATE INDEX executions_task_newest ON executions"
        " (task_id, coalesce(start_time, '~'), coalesce(scheduled_for, '~'))",
        "DROP INDEX executions_start_time",
        "CREATE INDEX executions_newest ON executions"
        " (coalesce(start_time, '~'), coalesce(scheduled_for, '~'))",
        # Durations of finished executions, summed without reading the table.
        "CREATE INDEX executions_status_duration ON executions (status, duration)",
        "CREATE INDEX tasks_owner_id ON tasks (owner_id)",
        "CREATE INDEX tasks_next_run_at ON tasks (next_run_at)",
    ):
        db.execute(statement)


_FINISHED_SQL = "('completed', 'failed', 'stopped')"
_OUTCOME_SQL = "('completed', 'failed')"


def _slot(row: str) -> str:
    """SQL of the 15-minute slot (``YYYY-MM-DDTHH:MM``, UTC) that ``row``'s end time is in."""
    return (
        f"substr({row}.end_time, 1, 14) || CASE"
        f" WHEN CAST(substr({row}.end_time, 15, 2) AS INTEGER) < 15 THEN '00'"
        f" WHEN CAST(substr({row}.end_time, 15, 2) AS INTEGER) < 30 THEN '15'"
        f" WHEN CAST(substr({row}.end_time, 15, 2) AS INTEGER) < 45 THEN '30' ELSE '45' END"
    )


def _add(row: str) -> str:
    """Statements adding ``row``'s part (``NEW``) to the aggregates, where it has one."""
    return f"""
        INSERT INTO run_totals (task_id, finished, completed, timed, total_duration)
        SELECT {row}.task_id, 1, {row}.status = 'completed', {row}.duration IS NOT NULL,
               coalesce({row}.duration, 0.0)
        WHERE {row}.status IN {_FINISHED_SQL}
        ON CONFLICT (task_id) DO UPDATE SET
            finished = finished + 1, completed = completed + excluded.completed,
            timed = timed + excluded.timed,
            total_duration = total_duration + excluded.total_duration;
        INSERT INTO run_outcomes (slot, status, n)
        SELECT {_slot(row)}, {row}.status, 1
        WHERE {row}.status IN {_OUTCOME_SQL} AND {row}.end_time IS NOT NULL
        ON CONFLICT (slot, status) DO UPDATE SET n = n + 1;
    """  # noqa: S608


def _remove(row: str) -> str:
    """Statements taking ``row``'s part (``OLD``) out of the aggregates."""
    return f"""
        UPDATE run_totals SET
            finished = finished - 1, completed = completed - ({row}.status = 'completed'),
            timed = timed - ({row}.duration IS NOT NULL),
            total_duration = total_duration - coalesce({row}.duration, 0.0)
        WHERE task_id = {row}.task_id AND {row}.status IN {_FINISHED_SQL};
        UPDATE run_outcomes SET n = n - 1
        WHERE slot = {_slot(row)} AND status = {row}.status
          AND {row}.status IN {_OUTCOME_SQL} AND {row}.end_time IS NOT NULL;
    """  # noqa: S608


@MIGRATIONS(name="0004_run_aggregates")
def _run_aggregates(db: Database) -> None:
    """Counts and summed durations per task, and completed/failed runs per 15-minute slot of
    their end, kept by triggers in the transaction of every change to ``executions``: the stats
    read a few hundred rows whatever the number of executions."""
    for statement in (
        """
        CREATE TABLE run_totals (
            task_id        INTEGER PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
            finished       INTEGER NOT NULL,
            completed      INTEGER NOT NULL,
            timed          INTEGER NOT NULL,
            total_duration REAL    NOT NULL
        ) STRICT
        """,
        """
        CREATE TABLE run_outcomes (
            slot   TEXT    NOT NULL,
            status TEXT    NOT NULL,
            n      INTEGER NOT NULL,
            PRIMARY KEY (slot, status)
        ) STRICT, WITHOUT ROWID
        """,
        f"CREATE TRIGGER executions_aggregate_insert AFTER INSERT ON executions"
        f" BEGIN {_add('NEW')} END",
        f"CREATE TRIGGER executions_aggregate_delete AFTER DELETE ON executions"
        f" BEGIN {_remove('OLD')} END",
        "CREATE TRIGGER executions_aggregate_update"
        " AFTER UPDATE OF task_id, status, end_time, duration ON executions"
        f" BEGIN {_remove('OLD')} {_add('NEW')} END",
        # Runs of before this migration.
        f"""
        INSERT INTO run_totals (task_id, finished, completed, timed, total_duration)
        SELECT task_id, count(*), sum(status = 'completed'), count(duration), total(duration)
        FROM executions WHERE status IN {_FINISHED_SQL} GROUP BY task_id
        """,  # noqa: S608
        f"""
        INSERT INTO run_outcomes (slot, status, n)
        SELECT {_slot("executions")}, status, count(*) FROM executions
        WHERE status IN {_OUTCOME_SQL} AND end_time IS NOT NULL GROUP BY 1, 2
        """,  # noqa: S608
    ):
        db.execute(statement)


@MIGRATIONS(name="0005_user_admin_and_audit")
def _user_admin_and_audit(db: Database) -> None:
    """Disabled users, the audit log, and login failures read by client address (the
    throttle counts per (username, address) pair and per address)."""
    for statement in (
        "ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0"
        " CHECK (disabled IN (0, 1))",
        """
        CREATE TABLE audit_events (
            id      INTEGER PRIMARY KEY AUTOINCREMENT,
            at      TEXT    NOT NULL,
            actor   TEXT,
            address TEXT,
            action  TEXT    NOT NULL,
            target  TEXT    NOT NULL,
            outcome TEXT    NOT NULL,
            detail  TEXT    NOT NULL
        ) STRICT
        """,
        "CREATE INDEX audit_events_at ON audit_events (at)",
        "DROP INDEX login_failures_username_at",
        "CREATE INDEX login_failures_username_client ON login_failures (username, client)",
    ):
        db.execute(statement)


@MIGRATIONS(name="0006_api_tokens")
def _api_tokens(db: Database) -> None:
    """API tokens (``Authorization: Bearer``), only their hashes; they go with their user."""
    for statement in (
        """
        CREATE TABLE api_tokens (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            name         TEXT    NOT NULL,
            token_hash   TEXT    NOT NULL UNIQUE,
            created_at   TEXT    NOT NULL,
            expires_at   TEXT,
            last_used_at TEXT
        ) STRICT
        """,
        "CREATE INDEX api_tokens_user_id ON api_tokens (user_id)",
    ):
        db.execute(statement)


@MIGRATIONS(name="0007_task_time_zone")
def _task_time_zone(db: Database) -> None:
    """A task's own time zone for its cron expression (NULL: the server's)."""
    db.execute("ALTER TABLE tasks ADD COLUMN timezone TEXT")


@MIGRATIONS(name="0008_task_paused")
def _task_paused(db: Database) -> None:
    """Paused tasks keep their schedule and fire nothing."""
    db.execute(
        "ALTER TABLE tasks ADD COLUMN paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1))"
    )


# --- value conversion --------------------------------------------------------------------------


def utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the repository takes aware datetimes only")
    return value.astimezone(UTC)


def dt_out(value: datetime) -> str:
    """Fixed-width ISO-8601 UTC text: its text order is its time order."""
    return utc(value).isoformat(timespec="microseconds")


def opt_dt_out(value: datetime | None) -> str | None:
    return None if value is None else dt_out(value)


def dt_in(value: Any) -> datetime:
    stored = datetime.fromisoformat(str(value))
    # dt_out writes UTC ("+00:00"), read back as UTC already; other text is converted.
    return stored if stored.tzinfo is UTC else stored.astimezone(UTC)


def opt_dt_in(value: Any) -> datetime | None:
    return None if value is None else dt_in(value)


SLOT = timedelta(minutes=15)
"""The width of ``run_outcomes``' slots: every time zone's midnight is on a slot's edge."""


def slot_floor(value: datetime) -> datetime:
    """The start of the 15-minute slot ``value`` (UTC) is in."""
    return value.replace(minute=value.minute - value.minute % 15, second=0, microsecond=0)


def slot_ceil(value: datetime) -> datetime:
    """``value`` when it starts a slot, else the start of the next."""
    floor = slot_floor(value)
    return floor if floor == value else floor + SLOT


def slot_key(value: datetime) -> str:
    """A slot's text in ``run_outcomes``: ``YYYY-MM-DDTHH:MM`` in UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


# --- rows <-> entities -------------------------------------------------------------------------

Row = dict[str, Any]


def user_from_row(row: Row) -> User:
    return User(
        id=int(row["id"]),
        username=str(row["username"]),
        password_hash=str(row["password_hash"]),
        is_admin=bool(row["is_admin"]),
        created_at=dt_in(row["created_at"]),
        disabled=bool(row["disabled"]),
    )


def token_from_row(row: Row) -> ApiToken:
    return ApiToken(
        id=int(row["id"]),
        user_id=int(row["user_id"]),
        name=str(row["name"]),
        token_hash=str(row["token_hash"]),
        created_at=dt_in(row["created_at"]),
        expires_at=opt_dt_in(row["expires_at"]),
        last_used_at=opt_dt_in(row["last_used_at"]),
    )


def audit_from_row(row: Row) -> AuditEvent:
    return AuditEvent(
        id=int(row["id"]),
        at=dt_in(row["at"]),
        actor=opt_str(row["actor"]),
        address=opt_str(row["address"]),
        action=str(row["action"]),
        target=str(row["target"]),
        outcome=str(row["outcome"]),
        detail=json.loads(row["detail"]),
    )


def session_from_row(row: Row) -> Session:
    return Session(
        token_hash=str(row["token_hash"]),
        user_id=int(row["user_id"]),
        created_at=dt_in(row["created_at"]),
        last_seen_at=dt_in(row["last_seen_at"]),
    )


TASK_COLUMNS = (
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
    "timezone",
    "paused",
)


def task_to_row(task: Task) -> Row:
    """Every column but ``id``, in ``TASK_COLUMNS`` order."""
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
        "created_at": dt_out(task.created_at),
        "next_run_at": opt_dt_out(task.next_run_at),
        "last_run_at": opt_dt_out(task.last_run_at),
        "last_run_duration": task.last_run_duration,
        "last_execution_id": task.last_execution_id,
        "memory_limit_mb": task.memory_limit_mb,
        "max_processes": task.max_processes,
        "cpu_limit": task.cpu_limit,
        "network": None if task.network is None else int(task.network),
        "timezone": task.timezone,
        "paused": int(task.paused),
    }


def task_from_row(row: Row) -> Task:
    return Task(
        id=int(row["id"]),
        name=str(row["name"]),
        owner_id=opt_int(row["owner_id"]),
        script_path=str(row["script_path"]),
        script_stored=bool(row["script_stored"]),
        conda_env=str(row["conda_env"]),
        requirements=opt_str(row["requirements"]),
        cron_expression=opt_str(row["cron_expression"]),
        delay_seconds=opt_float(row["delay_seconds"]),
        timeout_seconds=opt_float(row["timeout_seconds"]),
        status=TaskStatus(row["status"]),
        created_at=dt_in(row["created_at"]),
        next_run_at=opt_dt_in(row["next_run_at"]),
        last_run_at=opt_dt_in(row["last_run_at"]),
        last_run_duration=opt_float(row["last_run_duration"]),
        last_execution_id=opt_str(row["last_execution_id"]),
        memory_limit_mb=opt_float(row["memory_limit_mb"]),
        max_processes=opt_int(row["max_processes"]),
        cpu_limit=opt_float(row["cpu_limit"]),
        network=None if row["network"] is None else bool(row["network"]),
        timezone=opt_str(row["timezone"]),
        paused=bool(row["paused"]),
    )


EXECUTION_COLUMNS = (
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


def execution_to_row(execution: Execution) -> Row:
    return {
        "id": execution.id,
        "task_id": execution.task_id,
        "status": ExecutionStatus(execution.status).value,
        "scheduled_for": opt_dt_out(execution.scheduled_for),
        "start_time": opt_dt_out(execution.start_time),
        "end_time": opt_dt_out(execution.end_time),
        "duration": execution.duration,
        "peak_memory_mb": execution.peak_memory_mb,
        "avg_memory_mb": execution.avg_memory_mb,
        "exit_code": execution.exit_code,
        "log_path": execution.log_path,
        "pid": execution.pid,
        "note": execution.note,
        "skip_count": execution.skip_count,
        "first_skipped_at": opt_dt_out(execution.first_skipped_at),
        "last_skipped_at": opt_dt_out(execution.last_skipped_at),
    }


def execution_from_row(row: Row) -> Execution:
    # The table is STRICT: REAL, INTEGER and TEXT columns come back as float, int and str (or
    # None) already, so only times and the status are converted (pages have 500 rows).
    return Execution(
        id=row["id"],
        task_id=row["task_id"],
        status=ExecutionStatus(row["status"]),
        scheduled_for=opt_dt_in(row["scheduled_for"]),
        start_time=opt_dt_in(row["start_time"]),
        end_time=opt_dt_in(row["end_time"]),
        duration=row["duration"],
        peak_memory_mb=row["peak_memory_mb"],
        avg_memory_mb=row["avg_memory_mb"],
        exit_code=row["exit_code"],
        log_path=row["log_path"],
        pid=row["pid"],
        note=row["note"],
        skip_count=row["skip_count"] or 0,
        first_skipped_at=opt_dt_in(row["first_skipped_at"]),
        last_skipped_at=opt_dt_in(row["last_skipped_at"]),
    )


# Built once at import from the constant column tuples above, never from input.
def _insert(table: str, columns: Sequence[str]) -> str:
    names, values = ", ".join(columns), ", ".join(":" + c for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"  # noqa: S608


def _update(table: str, columns: Sequence[str]) -> str:
    sets = ", ".join(f"{c} = :{c}" for c in columns if c != "id")
    return f"UPDATE {table} SET {sets} WHERE id = :id"  # noqa: S608


TASK_INSERT = _insert("tasks", TASK_COLUMNS)
TASK_UPDATE = _update("tasks", TASK_COLUMNS)
EXECUTION_INSERT = _insert("executions", EXECUTION_COLUMNS)
EXECUTION_UPDATE = _update("executions", EXECUTION_COLUMNS)
# Newest first: not yet started first (a queued run is the newest thing a task has), then by start
# time, then by scheduled time (unscheduled first), then the latest inserted first. '~' sorts
# after every stored time; the same expressions are indexed (executions_task_newest,
# executions_newest), so a page is read straight off an index, at any depth.
NEWEST_FIRST = "coalesce(start_time, '~') DESC, coalesce(scheduled_for, '~') DESC, rowid DESC"
ORDER_KEY = "(coalesce(start_time, '~'), coalesce(scheduled_for, '~'), rowid)"
EXECUTIONS_OF_TASK = f"SELECT * FROM executions WHERE task_id = ? ORDER BY {NEWEST_FIRST}"  # noqa: S608
# The latest stored (not the latest started): only firings add executions, in order.
LATEST_EXECUTION_OF_TASK = """
    SELECT * FROM executions
    WHERE rowid = (SELECT MAX(rowid) FROM executions WHERE task_id = ?)
"""
UNFINISHED_EXECUTIONS = (
    "SELECT * FROM executions WHERE status IN (SELECT value FROM json_each(?))"  # noqa: S608
    f" ORDER BY {NEWEST_FIRST}"
)
# "+status": the status filter must not pick the status index, or every started row is sorted.
LATEST_STARTED = (
    "SELECT * FROM executions"  # noqa: S608
    " WHERE coalesce(start_time, '~') < '~' AND +status IN (SELECT value FROM json_each(?))"
    f" ORDER BY {NEWEST_FIRST} LIMIT ?"
)
SUMMARY = (
    "SELECT total(finished) AS finished, total(completed) AS completed, total(timed) AS timed,"
    " total(total_duration) AS total FROM run_totals"
)
SUMMARY_OF_ENVIRONMENT = (
    SUMMARY + " WHERE task_id IN (SELECT id FROM tasks WHERE conda_env = ?)"  # noqa: S608
)
# One status at a time: SQLite then reads the end of executions_status_duration, O(log n).
SHORTEST = "SELECT min(duration) AS d FROM executions WHERE status = ?"
LONGEST = "SELECT max(duration) AS d FROM executions WHERE status = ?"
OUTCOME_SLOTS = "SELECT slot, status, n FROM run_outcomes WHERE slot >= ? AND slot < ? AND n > 0"
OUTCOMES_BETWEEN = (
    "SELECT status, count(*) AS n FROM executions"
    " WHERE status IN ('completed', 'failed') AND end_time >= ? AND end_time < ? GROUP BY status"
)
PRUNABLE_LOGS = """
    SELECT log_path FROM executions
    WHERE status IN (SELECT value FROM json_each(:statuses)) AND end_time < :before
"""
PRUNE = """
    DELETE FROM executions
    WHERE status IN (SELECT value FROM json_each(:statuses)) AND end_time < :before
"""


def page_query(*, of_task: bool, since: bool, after: bool, skipped: bool) -> str:
    """The SQL of ``execution_page`` for one combination of filters (fixed fragments only)."""
    where = ["task_id = :task_id" if of_task else "1"]
    if since:
        where.append("coalesce(start_time, '~') >= :since AND start_time IS NOT NULL")
    if after:
        # The first term bounds the index range; the second orders ties exactly.
        bound = (
            "coalesce(start_time, '~') <= (SELECT coalesce(start_time, '~') FROM executions"
            " WHERE id = :before)"
        )
        tie = (
            f"{ORDER_KEY} < (SELECT"  # noqa: S608
            " coalesce(start_time, '~'), coalesce(scheduled_for, '~'),"
            " rowid FROM executions WHERE id = :before)"
        )
        where.append(f"{bound} AND {tie}")
    if not skipped:
        where.append("status != 'skipped'")
    return (
        f"SELECT * FROM executions WHERE {' AND '.join(where)}"  # noqa: S608 - fixed fragments
        f" ORDER BY {NEWEST_FIRST} LIMIT :limit"
    )


LATEST_COLUMNS = ", ".join(f"e.{c} AS e_{c}" for c in EXECUTION_COLUMNS)
TASKS_WITH_LATEST = (
    f"SELECT t.*, {LATEST_COLUMNS} FROM tasks t"  # noqa: S608
    " LEFT JOIN executions e ON e.id = t.last_execution_id ORDER BY t.id"
)


def is_unique_violation(error: sqlite3.IntegrityError, column: str) -> bool:
    return "UNIQUE constraint failed" in str(error) and column in str(error)


def is_foreign_key_violation(error: sqlite3.IntegrityError) -> bool:
    return "FOREIGN KEY constraint failed" in str(error)


def create_private_file(path: str) -> None:
    """Create ``path`` mode 0600 if missing; take group/other access away if present."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            with contextlib.suppress(PermissionError):  # not ours: leave it to its owner
                os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
