"""The Repository port in process memory: for fast tests and for library users.

Same contract as ``SqliteRepository``, checked by the same contract tests: the same errors, the
same orders, datetimes handed back in UTC. Entities are copied on the way in and on the way out,
so a caller changing an object it passed or got never changes what is stored. One lock makes
every method atomic, which also makes the multi-row changes all-or-nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs

from ctm_core.errors import (
    InvalidInput,
    LastAdmin,
    TaskExists,
    TaskLimitReached,
    TaskNotFound,
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
from ctm_core.ports import ExecutionSummary

__all__ = ["InMemoryRepository"]

_E = TypeVar("_E", User, Session, Task, Execution, ApiToken)
_UNFINISHED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


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


class InMemoryRepository:
    """The Repository port on dicts. Thread-safe. Nothing survives the object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[int, User] = {}
        self._sessions: dict[str, Session] = {}
        self._failures: list[tuple[str, str, datetime]] = []
        self._audit: list[AuditEvent] = []
        self._tokens: dict[int, ApiToken] = {}
        self._last_token_id = 0
        self._last_audit_id = 0
        self._owners: dict[str, int | None] = {}
        self._tasks: dict[int, Task] = {}
        self._executions: dict[str, _Stored] = {}
        self._last_user_id = 0
        self._last_task_id = 0
        self._last_seq = 0

    def close(self) -> None:
        """Nothing to release; here so both repositories can be closed alike."""

    # --- helpers (lock held) -------------------------------------------------------------------

    def _sorted(self, items: list[_Stored]) -> list[Execution]:
        return [_copy(s.execution) for s in sorted(items, key=_newest_first, reverse=True)]

    def _check_user(self, user_id: int) -> None:
        if user_id not in self._users:
            raise LookupError(f"no user with id {user_id}")

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
