"""The Repository port on one SQLite file.

The repository owns atomicity: every change is one SQLite transaction, and where two actors can
race (two firings of one occurrence, a run recorded while its task is deleted) the change is a
compare-and-set in SQL, never a Python lock held across calls. Writes go through one connection
(SQLite has one writer at a time anyway) behind a short lock; reads use a small pool of their own
connections and never wait for a write (WAL journal mode: a reader sees the last commit). Foreign
keys on; a busy timeout for the rare writer in another process (an admin CLI). The schema, its
named migrations and the row conversions are in ``_sqlite_schema``. See ``docs/storage.md``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ctm_adapters._sqlite_accounts import SqliteAccounts
from ctm_adapters._sqlite_schema import (
    EXECUTION_COLUMNS,
    EXECUTION_INSERT,
    EXECUTION_UPDATE,
    EXECUTIONS_OF_TASK,
    LATEST_EXECUTION_OF_TASK,
    LATEST_STARTED,
    LONGEST,
    MIGRATIONS,
    OUTCOME_SLOTS,
    OUTCOMES_BETWEEN,
    PRUNABLE,
    PRUNABLE_LOGS,
    PRUNE,
    SHORTEST,
    STARTED,
    SUMMARY,
    SUMMARY_OF_ENVIRONMENT,
    TASK_INSERT,
    TASK_UPDATE,
    TASKS_WITH_LATEST,
    UNFINISHED,
    UNFINISHED_EXECUTIONS,
    Row,
    dt_out,
    execution_from_row,
    execution_to_row,
    is_foreign_key_violation,
    is_unique_violation,
    opt_dt_in,
    opt_dt_out,
    opt_int,
    page_query,
    slot_ceil,
    slot_floor,
    slot_key,
    task_from_row,
    task_to_row,
    utc,
)
from ctm_adapters._sqlite_store import (
    DatabaseReport,
    DatabaseUnusable,
    backup_database,
    check_database_file,
    describe_database,
    init_database,
    rows_of,
)
from ctm_core.errors import (
    TaskExists,
    TaskLimitReached,
    TaskNotFound,
)
from ctm_core.models import (
    Execution,
    ExecutionStatus,
    Task,
    TaskStatus,
)
from ctm_core.ports import ExecutionSummary

__all__ = [
    "MIGRATIONS",
    "DatabaseReport",
    "DatabaseUnusable",
    "SqliteRepository",
    "backup_database",
    "check_database_file",
    "describe_database",
    "init_database",
]

_TASK_AFTER_RUN = (
    "UPDATE tasks SET status = :status, last_execution_id = :id, last_run_at = :start,"
    " last_run_duration = :duration WHERE id = :task_id"
)
_TASK_AFTER_LATEST_RUN = (
    _TASK_AFTER_RUN + " AND (last_execution_id IS NULL OR last_execution_id = :id)"
)


class SqliteRepository(SqliteAccounts):
    """The Repository port on the SQLite file at ``path`` (``":memory:"`` for a throwaway one,
    whose reads share the write connection).

    The file (and SQLite's ``-wal``/``-shm`` companions, which inherit its mode) is created 0600:
    it holds password and session hashes. Pending migrations are applied here. Thread-safe; call
    ``close()`` when done (or use it as a context manager).

    It opens any file it is given: a missing or empty one becomes a new database. Check an
    existing file with ``check_database_file`` first (ctm's start does, in ``bootstrap``): it
    refuses an empty file, one that is not ctm's, and a damaged one.
    """

    # --- environment owners --------------------------------------------------------------------

    def get_environment_owner(self, name: str) -> int | None:
        row = self._read_one("SELECT user_id FROM environment_owners WHERE name = ?", (name,))
        return None if row is None else opt_int(row["user_id"])

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
                if is_foreign_key_violation(e):
                    raise LookupError(f"no user with id {user_id}") from None
                raise

    def rename_environment(self, old: str, new: str) -> int:
        """Move the owner record and every task's ``conda_env`` from ``old`` to ``new`` in one
        transaction; return how many tasks changed. A record already under ``new`` is replaced
        by ``old``'s (or dropped when ``old`` has none)."""
        if old == new:
            return 0
        with self._transaction():
            self._write("DELETE FROM environment_owners WHERE name = ?", (new,))
            self._write("UPDATE environment_owners SET name = ? WHERE name = ?", (new, old))
            return self._write("UPDATE tasks SET conda_env = ? WHERE conda_env = ?", (new, old))

    def forget_environment(self, name: str) -> None:
        with self._lock:
            self._write("DELETE FROM environment_owners WHERE name = ?", (name,))

    # --- tasks ---------------------------------------------------------------------------------

    def add_task(self, task: Task, *, owner_limit: int | None = None) -> Task:
        """Store ``task`` (its ``id`` is ignored) and return it with the id given. Raises
        ``TaskExists`` when the name is taken, ``TaskLimitReached`` when ``owner_limit`` is given
        and the owner already owns that many (counted in the same transaction). Ids are never
        reused, even after a delete."""
        row = task_to_row(task)
        with self._transaction():
            if owner_limit is not None and task.owner_id is not None:
                count = self._one(
                    "SELECT count(*) AS n FROM tasks WHERE owner_id = ?", (task.owner_id,)
                )
                if count is not None and int(count["n"]) >= owner_limit:
                    raise TaskLimitReached(owner_limit)
            try:
                cursor = self._conn.execute(TASK_INSERT, row)
            except sqlite3.IntegrityError as e:
                if is_unique_violation(e, "tasks.name"):
                    raise TaskExists(task.name) from None
                raise
            assert cursor.lastrowid is not None
            stored = self._one("SELECT * FROM tasks WHERE id = ?", (cursor.lastrowid,))
        assert stored is not None
        return task_from_row(stored)

    def get_task(self, task_id: int) -> Task:
        """Raises ``TaskNotFound``."""
        row = self._read_one("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            raise TaskNotFound(task_id)
        return task_from_row(row)

    def get_task_by_name(self, name: str) -> Task | None:
        row = self._read_one("SELECT * FROM tasks WHERE name = ?", (name,))
        return None if row is None else task_from_row(row)

    def list_tasks(self) -> list[Task]:
        """All tasks by id."""
        return [task_from_row(r) for r in self._read("SELECT * FROM tasks ORDER BY id")]

    def task_names(self) -> dict[int, str]:
        return {int(r["id"]): str(r["name"]) for r in self._read("SELECT id, name FROM tasks")}

    def list_tasks_with_latest(self) -> list[tuple[Task, Execution | None]]:
        """All tasks by id with their latest execution, in one query."""
        out = []
        for row in self._read(TASKS_WITH_LATEST):
            latest = None
            if row["e_id"] is not None:
                latest = execution_from_row({c: row[f"e_{c}"] for c in EXECUTION_COLUMNS})
            out.append((task_from_row(row), latest))
        return out

    def due_tasks(self, now: datetime) -> list[Task]:
        """Tasks due at or before ``now``, earliest due first."""
        rows = self._read(
            "SELECT * FROM tasks WHERE next_run_at <= ? AND paused = 0 ORDER BY next_run_at, id",
            (dt_out(now),),
        )
        return [task_from_row(r) for r in rows]

    def earliest_next_run(self) -> datetime | None:
        row = self._read_one("SELECT min(next_run_at) AS due FROM tasks WHERE paused = 0")
        return None if row is None else opt_dt_in(row["due"])

    def set_task_script(self, task_id: int, *, name: str, script_path: str) -> None:
        """Raises ``TaskNotFound``, and ``TaskExists`` when ``name`` is taken."""
        with self._lock:
            try:
                changed = self._write(
                    "UPDATE tasks SET name = ?, script_path = ? WHERE id = ?",
                    (name, script_path, task_id),
                )
            except sqlite3.IntegrityError as e:
                if is_unique_violation(e, "tasks.name"):
                    raise TaskExists(name) from None
                raise
        if changed == 0:
            raise TaskNotFound(task_id)

    def set_task_paused(self, task_id: int, paused: bool, next_run_at: datetime | None) -> None:
        with self._lock:
            changed = self._write(
                "UPDATE tasks SET paused = ?, next_run_at = ? WHERE id = ?",
                (int(paused), opt_dt_out(next_run_at), task_id),
            )
        if changed == 0:
            raise TaskNotFound(task_id)

    def unschedule_task(self, task_id: int) -> None:
        """Raises ``TaskNotFound``."""
        with self._lock:
            changed = self._write(
                "UPDATE tasks SET next_run_at = NULL, cron_expression = NULL WHERE id = ?",
                (task_id,),
            )
        if changed == 0:
            raise TaskNotFound(task_id)

    def _update_task(self, task: Task) -> None:
        params = task_to_row(task)
        params["id"] = task.id
        try:
            changed = self._write(TASK_UPDATE, params)
        except sqlite3.IntegrityError as e:
            if is_unique_violation(e, "tasks.name"):
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
        with self._transaction():
            rows = rows_of(
                self._conn, "SELECT log_path FROM executions WHERE task_id = ?", (task_id,)
            )
            self._write("DELETE FROM executions WHERE task_id = ?", (task_id,))
            if self._write("DELETE FROM tasks WHERE id = ?", (task_id,)) == 0:
                raise TaskNotFound(task_id)
        return [str(r["log_path"]) for r in rows if r["log_path"] is not None]

    def tasks_using_environment(self, name: str) -> list[Task]:
        """Tasks whose ``conda_env`` is ``name``, by id."""
        rows = self._read("SELECT * FROM tasks WHERE conda_env = ? ORDER BY id", (name,))
        return [task_from_row(r) for r in rows]

    def count_tasks_owned_by(self, owner_id: int) -> int:
        row = self._read_one("SELECT count(*) AS n FROM tasks WHERE owner_id = ?", (owner_id,))
        return int(row["n"]) if row is not None else 0

    # --- executions: changes -------------------------------------------------------------------

    def _insert_execution(self, execution: Execution) -> None:
        try:
            self._write(EXECUTION_INSERT, execution_to_row(execution))
        except sqlite3.IntegrityError as e:
            if is_foreign_key_violation(e):
                raise TaskNotFound(execution.task_id) from None
            if is_unique_violation(e, "executions.id"):
                raise ValueError(f"execution {execution.id!r} exists") from None
            raise

    def add_execution(self, execution: Execution) -> None:
        """Store a new execution. Raises ``TaskNotFound`` when its task does not exist and
        ``ValueError`` when its id is taken."""
        with self._lock:
            self._insert_execution(execution)

    def claim_occurrence(
        self, execution: Execution, *, due: datetime, next_run_at: datetime | None
    ) -> Execution | None:
        """Move the task's schedule from ``due`` to ``next_run_at`` and store ``execution``, only
        if ``due`` is still the task's next run (see the port)."""
        skipped = execution.status is ExecutionStatus.SKIPPED
        if skipped:
            execution.check_skip_record()
        new_row = execution_to_row(execution)
        cas = (opt_dt_out(next_run_at), execution.task_id, dt_out(due))
        with self._transaction():
            claimed = self._write(
                "UPDATE tasks SET next_run_at = ? WHERE id = ? AND next_run_at = ?", cas
            )
            if claimed == 0:
                return None
            if skipped:
                row = self._one(LATEST_EXECUTION_OF_TASK, (execution.task_id,))
                latest = None if row is None else execution_from_row(row)
                if latest is not None and latest.status is ExecutionStatus.SKIPPED:
                    latest.skip_count += execution.skip_count
                    latest.last_skipped_at = execution.last_skipped_at
                    latest.end_time = execution.end_time
                    self._write(EXECUTION_UPDATE, execution_to_row(latest))
                    return latest
            self._insert_execution(execution)
        return execution_from_row(new_row)

    def record_run_start(self, execution: Execution) -> bool:
        """Store the started execution and mark its task running, in one transaction."""
        row = execution_to_row(execution)
        with self._transaction():
            if not self._update_execution_of_task(row):
                return False
            return (
                self._write(
                    "UPDATE tasks SET status = ?, last_run_at = ?, last_execution_id = ?"
                    " WHERE id = ?",
                    (
                        TaskStatus.RUNNING.value,
                        opt_dt_out(execution.start_time),
                        execution.id,
                        execution.task_id,
                    ),
                )
                == 1
            )

    def record_run_end(self, execution: Execution, *, only_if_latest: bool = False) -> bool:
        """Store the ended execution and set its task's state from it, in one transaction."""
        row = execution_to_row(execution)
        status = TaskStatus(execution.status.value).value  # ValueError before anything changes
        with self._transaction():
            if not self._update_execution_of_task(row):
                return False
            self._write(
                _TASK_AFTER_LATEST_RUN if only_if_latest else _TASK_AFTER_RUN,
                {
                    "status": status,
                    "id": execution.id,
                    "start": opt_dt_out(execution.start_time),
                    "duration": execution.duration,
                    "task_id": execution.task_id,
                },
            )
        return True

    def _update_execution_of_task(self, row: Row) -> bool:
        """Replace an execution's row; False when it, or the task it names, does not exist."""
        try:
            return self._write(EXECUTION_UPDATE, row) == 1
        except sqlite3.IntegrityError as e:
            if is_foreign_key_violation(e):
                return False
            raise

    def update_execution(self, execution: Execution) -> None:
        """Replace a stored execution's fields. An unknown (e.g. pruned) one is ignored."""
        with self._lock:
            self._write(EXECUTION_UPDATE, execution_to_row(execution))

    def prune_executions(self, before: datetime) -> list[str]:
        """Delete finished or skipped executions that ended before ``before``; return their log
        paths."""
        params = {"statuses": PRUNABLE, "before": dt_out(before)}
        with self._transaction():
            rows = rows_of(self._conn, PRUNABLE_LOGS, params)
            self._write(PRUNE, params)
        return [str(r["log_path"]) for r in rows if r["log_path"] is not None]

    # --- executions: reads ---------------------------------------------------------------------

    def get_execution(self, execution_id: str) -> Execution | None:
        row = self._read_one("SELECT * FROM executions WHERE id = ?", (execution_id,))
        return None if row is None else execution_from_row(row)

    def list_executions(self, task_id: int) -> list[Execution]:
        """A task's executions, newest first: not yet started ones first, then by start time,
        then by scheduled time (unscheduled first), then the latest stored first."""
        return self._executions(EXECUTIONS_OF_TASK, (task_id,))

    def execution_page(
        self,
        *,
        limit: int,
        task_id: int | None = None,
        started_since: datetime | None = None,
        before: str | None = None,
        include_skipped: bool = True,
    ) -> list[Execution]:
        """A page of executions in ``list_executions``'s order (see the port)."""
        sql = page_query(
            of_task=task_id is not None,
            since=started_since is not None,
            after=before is not None,
            skipped=include_skipped,
        )
        params: dict[str, Any] = {"limit": max(0, limit)}
        if task_id is not None:
            params["task_id"] = task_id
        if started_since is not None:
            params["since"] = dt_out(started_since)
        if before is not None:
            params["before"] = before
        return self._executions(sql, params)

    def latest_started(self, limit: int) -> list[Execution]:
        """The ``limit`` running or finished executions started last, newest first."""
        return self._executions(LATEST_STARTED, (STARTED, max(0, limit)))

    def summarize_executions(self, *, environment: str | None = None) -> ExecutionSummary:
        """Counts and durations of finished executions (of one environment's tasks): sums of
        ``run_totals``, and the shortest and longest from the ends of an index."""
        if environment is None:
            row = self._read_one(SUMMARY)
        else:
            row = self._read_one(SUMMARY_OF_ENVIRONMENT, (environment,))
        assert row is not None
        shortest = longest = None
        if environment is None:
            for status in ("completed", "failed", "stopped"):
                low = self._read_one(SHORTEST, (status,))
                high = self._read_one(LONGEST, (status,))
                if low is not None and low["d"] is not None:
                    shortest = low["d"] if shortest is None else min(shortest, low["d"])
                if high is not None and high["d"] is not None:
                    longest = high["d"] if longest is None else max(longest, high["d"])
        return ExecutionSummary(
            finished=int(row["finished"]),
            completed=int(row["completed"]),
            timed=int(row["timed"]),
            total_duration=float(row["total"]),
            min_duration=shortest,
            max_duration=longest,
        )

    def count_outcomes(self, boundaries: Sequence[datetime]) -> list[tuple[int, int]]:
        """(completed, failed) executions ended in each interval of ``boundaries``: whole
        15-minute slots from ``run_outcomes``, the parts of slots at the edges from the
        executions themselves (an index range each)."""
        edges = [utc(b) for b in boundaries]
        counts = [[0, 0] for _ in range(max(0, len(edges) - 1))]
        if not counts:
            return []
        slots: list[tuple[int, datetime, datetime]] = []  # (interval, first slot, end)
        direct: list[tuple[int, datetime, datetime]] = []
        for i, (start, end) in enumerate(zip(edges, edges[1:], strict=False)):
            first, last = slot_ceil(start), slot_floor(end)
            if first < last:
                slots.append((i, first, last))
                direct += [(i, start, first), (i, last, end)]
            elif start < end:
                direct.append((i, start, end))
        if slots:
            keyed = [(i, slot_key(first), slot_key(last)) for i, first, last in slots]
            low, high = min(k[1] for k in keyed), max(k[2] for k in keyed)
            for row in self._read(OUTCOME_SLOTS, (low, high)):
                for i, first_key, last_key in keyed:
                    if first_key <= row["slot"] < last_key:
                        counts[i][row["status"] != "completed"] += int(row["n"])
                        break
        for i, start, end in direct:
            if start < end:
                for row in self._read(OUTCOMES_BETWEEN, (dt_out(start), dt_out(end))):
                    counts[i][row["status"] != "completed"] += int(row["n"])
        return [(c, f) for c, f in counts]

    def unfinished_executions(self) -> list[Execution]:
        """Executions left ``queued`` or ``running``, newest first."""
        return self._executions(UNFINISHED_EXECUTIONS, (UNFINISHED,))
