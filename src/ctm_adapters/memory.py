"""The Repository port in process memory: for fast tests and for library users.

Same contract as ``SqliteRepository``, checked by the same contract tests: the same errors, the
same orders, datetimes handed back in UTC. Entities are copied on the way in and on the way out,
so a caller changing an object it passed or got never changes what is stored. One lock makes
every method atomic, which also makes the multi-row changes all-or-nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

from ctm_adapters._memory_accounts import MemoryAccounts, _copy, _utc
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

__all__ = ["InMemoryRepository"]

_UNFINISHED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


@attrs.define
class _Stored:
    seq: int
    execution: Execution


def _newest_first(item: _Stored) -> tuple[bool, datetime, bool, datetime, int]:
    """Sort key (reversed): not yet started first, then start time, then scheduled time
    (unscheduled first), then the latest stored first."""
    ex = item.execution
    return (
        ex.start_time is None,
        ex.start_time or _EARLIEST,
        ex.scheduled_for is None,
        ex.scheduled_for or _EARLIEST,
        item.seq,
    )


class InMemoryRepository(MemoryAccounts):
    """The Repository port on dicts. Thread-safe. Nothing survives the object."""

    def __init__(self) -> None:
        super().__init__()
        self._owners: dict[str, int | None] = {}
        self._tasks: dict[int, Task] = {}
        self._executions: dict[str, _Stored] = {}
        self._last_task_id = 0
        self._last_seq = 0

    def close(self) -> None:
        """Nothing to release; here so both repositories can be closed alike."""

    # --- helpers (lock held) -------------------------------------------------------------------

    def _sorted(self, items: list[_Stored]) -> list[Execution]:
        return [_copy(s.execution) for s in sorted(items, key=_newest_first, reverse=True)]

    def _check_task_name(self, task: Task) -> None:
        for other in self._tasks.values():
            if other.name == task.name and other.id != task.id:
                raise TaskExists(task.name)

    def _check_task_update(self, task: Task) -> None:
        if task.id not in self._tasks:
            raise TaskNotFound(task.id)
        self._check_task_name(task)

    def _check_execution(self, execution: Execution) -> None:
        if execution.task_id not in self._tasks:
            raise TaskNotFound(execution.task_id)

    def _put_execution(self, execution: Execution) -> None:
        stored = self._executions.get(execution.id)
        if stored is not None:
            stored.execution = _copy(execution)

    # --- environment owners --------------------------------------------------------------------

    def get_environment_owner(self, name: str) -> int | None:
        with self._lock:
            return self._owners.get(name)

    def set_environment_owner(self, name: str, user_id: int | None) -> None:
        """Record (or replace) the owner. Raises ``LookupError`` for an unknown user."""
        with self._lock:
            if user_id is not None:
                self._check_user(user_id)
            self._owners[name] = user_id

    def rename_environment(self, old: str, new: str) -> int:
        """Move the owner record and every task's ``conda_env`` from ``old`` to ``new`` in one
        transaction; return how many tasks changed. A record already under ``new`` is replaced
        by ``old``'s (or dropped when ``old`` has none)."""
        with self._lock:
            if old == new:
                return 0
            self._owners.pop(new, None)
            if old in self._owners:
                self._owners[new] = self._owners.pop(old)
            changed = 0
            for task in self._tasks.values():
                if task.conda_env == old:
                    task.conda_env = new
                    changed += 1
            return changed

    def forget_environment(self, name: str) -> None:
        with self._lock:
            self._owners.pop(name, None)

    # --- tasks ---------------------------------------------------------------------------------

    def add_task(self, task: Task, *, owner_limit: int | None = None) -> Task:
        """Store ``task`` (its ``id`` is ignored) and return it with the id given. Raises
        ``TaskExists`` when the name is taken, ``TaskLimitReached`` when ``owner_limit`` is given
        and the owner already owns that many. Ids are never reused, even after a delete."""
        with self._lock:
            if owner_limit is not None and task.owner_id is not None:
                owned = sum(1 for t in self._tasks.values() if t.owner_id == task.owner_id)
                if owned >= owner_limit:
                    raise TaskLimitReached(owner_limit)
            if any(t.name == task.name for t in self._tasks.values()):
                raise TaskExists(task.name)
            stored = _copy(task)
            stored.id = self._last_task_id + 1
            self._last_task_id = stored.id
            self._tasks[stored.id] = stored
            return _copy(stored)

    def get_task(self, task_id: int) -> Task:
        """Raises ``TaskNotFound``."""
        with self._lock:
            return _copy(self._task(task_id))

    def _task(self, task_id: int) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    def get_task_by_name(self, name: str) -> Task | None:
        with self._lock:
            for task in self._tasks.values():
                if task.name == name:
                    return _copy(task)
            return None

    def list_tasks(self) -> list[Task]:
        """All tasks by id."""
        with self._lock:
            return [_copy(self._tasks[i]) for i in sorted(self._tasks)]

    def task_names(self) -> dict[int, str]:
        with self._lock:
            return {t.id: t.name for t in self._tasks.values()}

    def list_tasks_with_latest(self) -> list[tuple[Task, Execution | None]]:
        """All tasks by id with their latest execution."""
        with self._lock:
            out = []
            for i in sorted(self._tasks):
                task = self._tasks[i]
                stored = self._executions.get(task.last_execution_id or "")
                out.append((_copy(task), None if stored is None else _copy(stored.execution)))
            return out

    def due_tasks(self, now: datetime) -> list[Task]:
        """Tasks due at or before ``now``, earliest due first."""
        at = _utc(now)
        with self._lock:
            due = [t for t in self._tasks.values() if t.next_run_at is not None and not t.paused]
            return [
                _copy(t)
                for t in sorted(due, key=lambda t: (t.next_run_at, t.id))
                if t.next_run_at is not None and t.next_run_at <= at
            ]

    def earliest_next_run(self) -> datetime | None:
        with self._lock:
            return min(
                (
                    t.next_run_at
                    for t in self._tasks.values()
                    if t.next_run_at is not None and not t.paused
                ),
                default=None,
            )

    def set_task_script(self, task_id: int, *, name: str, script_path: str) -> None:
        """Raises ``TaskNotFound``, and ``TaskExists`` when ``name`` is taken."""
        with self._lock:
            task = self._task(task_id)
            if any(t.name == name and t.id != task_id for t in self._tasks.values()):
                raise TaskExists(name)
            task.name, task.script_path = name, script_path

    def set_task_paused(self, task_id: int, paused: bool, next_run_at: datetime | None) -> None:
        when = None if next_run_at is None else _utc(next_run_at)
        with self._lock:
            task = self._task(task_id)
            task.paused, task.next_run_at = paused, when

    def unschedule_task(self, task_id: int) -> None:
        """Raises ``TaskNotFound``."""
        with self._lock:
            task = self._task(task_id)
            task.next_run_at = task.cron_expression = None

    def update_task(self, task: Task) -> None:
        """Raises ``TaskNotFound``, and ``TaskExists`` when renamed to a name taken."""
        with self._lock:
            self._check_task_update(task)
            self._tasks[task.id] = _copy(task)

    def delete_task(self, task_id: int) -> list[str]:
        """Delete the task and its executions; return their log paths. Raises ``TaskNotFound``."""
        with self._lock:
            if task_id not in self._tasks:
                raise TaskNotFound(task_id)
            doomed = [s for s in self._executions.values() if s.execution.task_id == task_id]
            for stored in doomed:
                del self._executions[stored.execution.id]
            del self._tasks[task_id]
            return [ex.log_path for ex in self._sorted(doomed) if ex.log_path is not None]

    def count_tasks_owned_by(self, owner_id: int) -> int:
        with self._lock:
            return sum(1 for t in self._tasks.values() if t.owner_id == owner_id)

    def tasks_using_environment(self, name: str) -> list[Task]:
        """Tasks whose ``conda_env`` is ``name``, by id."""
        with self._lock:
            return [
                _copy(self._tasks[i])
                for i in sorted(self._tasks)
                if self._tasks[i].conda_env == name
            ]

    # --- executions: changes -------------------------------------------------------------------

    def _insert(self, execution: Execution) -> None:
        self._check_execution(execution)
        if execution.id in self._executions:
            raise ValueError(f"execution {execution.id!r} exists")
        self._last_seq += 1
        self._executions[execution.id] = _Stored(self._last_seq, _copy(execution))

    def add_execution(self, execution: Execution) -> None:
        """Store a new execution. Raises ``TaskNotFound`` when its task does not exist and
        ``ValueError`` when its id is taken."""
        with self._lock:
            self._insert(execution)

    def claim_occurrence(
        self, execution: Execution, *, due: datetime, next_run_at: datetime | None
    ) -> Execution | None:
        """Move the task's schedule from ``due`` to ``next_run_at`` and store ``execution``, only
        if ``due`` is still the task's next run (see the port)."""
        skipped = ExecutionStatus(execution.status) is ExecutionStatus.SKIPPED
        if skipped:
            execution.check_skip_record()
        due, following = _utc(due), None if next_run_at is None else _utc(next_run_at)
        stored = _copy(execution)  # checked (times, status) before anything changes
        with self._lock:
            task = self._tasks.get(execution.task_id)
            if task is None or task.next_run_at is None or task.next_run_at != due:
                return None
            if skipped:
                own = [s for s in self._executions.values() if s.execution.task_id == task.id]
                latest = max(own, key=lambda s: s.seq, default=None)
                if latest is not None and latest.execution.status is ExecutionStatus.SKIPPED:
                    merged = latest.execution
                    merged.skip_count += execution.skip_count
                    merged.last_skipped_at = execution.last_skipped_at
                    merged.end_time = execution.end_time
                    latest.execution = _copy(merged)
                    task.next_run_at = following
                    return _copy(merged)
            self._insert(stored)
            task.next_run_at = following
            return _copy(stored)

    def record_run_start(self, execution: Execution) -> bool:
        """Store the started execution and mark its task running, in one step."""
        stored = _copy(execution)
        with self._lock:
            task = self._tasks.get(execution.task_id)
            if task is None or execution.id not in self._executions:
                return False
            self._put_execution(stored)
            task.status = TaskStatus.RUNNING
            task.last_run_at = stored.start_time
            task.last_execution_id = stored.id
            return True

    def record_run_end(self, execution: Execution, *, only_if_latest: bool = False) -> bool:
        """Store the ended execution and set its task's state from it, in one step."""
        stored = _copy(execution)
        status = TaskStatus(stored.status.value)  # ValueError for a status no task can have
        with self._lock:
            task = self._tasks.get(execution.task_id)
            if task is None or execution.id not in self._executions:
                return False
            self._put_execution(stored)
            if only_if_latest and task.last_execution_id not in (None, execution.id):
                return True
            task.status = status
            task.last_execution_id = stored.id
            task.last_run_at = stored.start_time
            task.last_run_duration = stored.duration
            return True

    def update_execution(self, execution: Execution) -> None:
        """Replace a stored execution's fields. An unknown (e.g. pruned) one is ignored."""
        with self._lock:
            if execution.id in self._executions:
                self._check_execution(execution)
            self._put_execution(execution)

    def prune_executions(self, before: datetime) -> list[str]:
        """Delete finished or skipped executions that ended before ``before``; return their log
        paths."""
        end = _utc(before)
        with self._lock:
            doomed = [
                s
                for s in self._executions.values()
                if (s.execution.status.finished or s.execution.status is ExecutionStatus.SKIPPED)
                and s.execution.end_time is not None
                and s.execution.end_time < end
            ]
            for stored in doomed:
                del self._executions[stored.execution.id]
            return [s.execution.log_path for s in doomed if s.execution.log_path is not None]

    # --- executions: reads ---------------------------------------------------------------------

    def get_execution(self, execution_id: str) -> Execution | None:
        with self._lock:
            stored = self._executions.get(execution_id)
            return None if stored is None else _copy(stored.execution)

    def list_executions(self, task_id: int) -> list[Execution]:
        """A task's executions, newest first: not yet started ones first, then by start time,
        then by scheduled time (unscheduled first), then the latest stored first."""
        with self._lock:
            return self._sorted(
                [s for s in self._executions.values() if s.execution.task_id == task_id]
            )

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
        since = None if started_since is None else _utc(started_since)
        with self._lock:
            chosen = [
                s
                for s in self._executions.values()
                if (task_id is None or s.execution.task_id == task_id)
                and (
                    since is None
                    or (s.execution.start_time is not None and s.execution.start_time >= since)
                )
                and (include_skipped or s.execution.status is not ExecutionStatus.SKIPPED)
            ]
            if before is not None:
                anchor = self._executions.get(before)
                if anchor is None:
                    return []
                key = _newest_first(anchor)
                chosen = [s for s in chosen if _newest_first(s) < key]
            return self._sorted(chosen)[: max(0, limit)]

    def latest_started(self, limit: int) -> list[Execution]:
        """The ``limit`` running or finished executions started last, newest first."""
        with self._lock:
            started = [
                s
                for s in self._executions.values()
                if s.execution.start_time is not None
                and (s.execution.status.finished or s.execution.status is ExecutionStatus.RUNNING)
            ]
            return self._sorted(started)[: max(0, limit)]

    def summarize_executions(self, *, environment: str | None = None) -> ExecutionSummary:
        """Counts and durations of finished executions (of one environment's tasks)."""
        with self._lock:
            in_env = {t.id for t in self._tasks.values() if t.conda_env == environment}
            finished = [
                s.execution
                for s in self._executions.values()
                if s.execution.status.finished
                and (environment is None or s.execution.task_id in in_env)
            ]
        durations = [e.duration for e in finished if e.duration is not None]
        return ExecutionSummary(
            finished=len(finished),
            completed=sum(1 for e in finished if e.status is ExecutionStatus.COMPLETED),
            timed=len(durations),
            total_duration=float(sum(durations)),
            min_duration=None if environment is not None else min(durations, default=None),
            max_duration=None if environment is not None else max(durations, default=None),
        )

    def count_outcomes(self, boundaries: Sequence[datetime]) -> list[tuple[int, int]]:
        """(completed, failed) executions ended in each interval of ``boundaries``."""
        edges = [_utc(b) for b in boundaries]
        counts = [[0, 0] for _ in range(max(0, len(edges) - 1))]
        with self._lock:
            ended = [s.execution for s in self._executions.values()]
        for e in ended:
            if e.end_time is None or e.status not in (
                ExecutionStatus.COMPLETED,
                ExecutionStatus.FAILED,
            ):
                continue
            for i in range(len(counts)):
                if edges[i] <= e.end_time < edges[i + 1]:
                    counts[i][0 if e.status is ExecutionStatus.COMPLETED else 1] += 1
                    break
        return [(c, f) for c, f in counts]

    def unfinished_executions(self) -> list[Execution]:
        """Executions left ``queued`` or ``running``, newest first."""
        with self._lock:
            return self._sorted(
                [s for s in self._executions.values() if s.execution.status in _UNFINISHED]
            )
