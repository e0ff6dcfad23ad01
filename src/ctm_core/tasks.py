"""Task use cases: create, list, detail, stop, delete, stats and history."""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

import attrs

from ctm_core.audit import AuditLog, recorded
from ctm_core.auth import require_owner, require_user
from ctm_core.commands import (
    DEFAULT_PAGE,
    MAX_CPU_LIMIT,
    MAX_MEMORY_LIMIT_MB,
    MAX_PROCESSES,
    NewEnvironment,
    NewTask,
    Page,
    check_limit,
)
from ctm_core.environments import EnvironmentService, KeyedLocks
from ctm_core.errors import (
    EnvironmentInUse,
    InvalidInput,
    PackageOperationFailed,
    RequirementsFailed,
    ReuseMissingEnvironment,
    ScriptNotFound,
    ScriptOutsideRoots,
    TaskAlreadyActive,
    TaskExists,
    TaskLimitReached,
    TaskNotRunning,
)
from ctm_core.logs import LogFollower, find_execution
from ctm_core.models import Execution, ExecutionStatus, Principal, RunPolicy, Task, TaskStatus
from ctm_core.ports import Clock, EnvironmentBackend, FileStore, Repository
from ctm_core.runs import RunCoordinator
from ctm_core.schedule import (
    Zones,
    first_run_time,
    next_cron_time,
    running_zone,
    task_zone,
)
from ctm_core.validation import printable_line

STATE_UNCHANGED = "Environment unchanged: no package was installed or changed"
STATE_INCONSISTENT = "Environment may be in an inconsistent state, consider restoring from backup"


def new_execution_id() -> str:
    return secrets.token_hex(8)


@attrs.frozen(kw_only=True)
class CreatedTask:
    task: Task
    environment_message: str


@attrs.frozen(kw_only=True)
class TaskDetail:
    task: Task
    executions: list[Execution]  # one page, newest first, skipped ones left out
    latest: Execution | None
    latest_log: str
    next_before: str | None = None
    """The ``before`` of the next page; None when this page is the last."""


@attrs.frozen(kw_only=True)
class HistoryPage:
    items: list[tuple[Execution, str]]
    """(execution, its task's name), newest first."""
    next_before: str | None


@attrs.frozen(kw_only=True)
class TaskStats:
    counts: dict[str, int]
    total: int
    avg_duration: float
    min_duration: float
    max_duration: float
    success_rate: float
    dates: list[str]
    success_counts: list[int]
    failed_counts: list[int]
    recent: list[tuple[Execution, str]]


@attrs.define
class TaskService:
    repo: Repository
    backend: EnvironmentBackend
    environments: EnvironmentService
    coordinator: RunCoordinator
    files: FileStore
    clock: Clock
    tz: tzinfo
    env_locks: KeyedLocks
    script_roots: Sequence[str] = ()
    on_change: Callable[[], None] = lambda: None
    retention_days: int = 30
    policy: RunPolicy = RunPolicy()
    """Maxima of the per-run limits a task may ask for; the per-user task limit."""
    audit: AuditLog | None = None
    zones: Zones | None = None
    """Resolves a task's own time zone (``NewTask.timezone``)."""

    # --- create --------------------------------------------------------------------------------

    def create_task(self, actor: Principal, command: NewTask) -> CreatedTask:
        """Check, prepare the environment, store the task and schedule it.

        Raises what ``NewTask.from_json`` raises, ``InvalidInput`` (a per-run limit above the
        server's maximum), ``TaskExists``, ``ReuseMissingEnvironment``, ``ScriptNotFound``,
        ``ScriptOutsideRoots``, ``NotOwner``, ``EnvironmentInUse``, ``RequirementsFailed`` and
        ``TaskLimitReached`` (a non-admin who owns ``policy.max_tasks_per_user`` tasks).
        Per-run limits (``memory_limit_mb``, ``max_processes``, ``cpu_limit``, ``network``) are
        stored as given; absent ones (None) take the server's default at run time, as does an
        absent ``timeout_seconds``.
        """
        command = command.checked()
        require_user(self.repo, actor)
        script, env_name, task_name = command.script, command.conda_env, command.task_name
        requirements, timeout = command.requirements, command.timeout_seconds
        cron, delay = command.cron_expression, command.delay_seconds
        memory_limit = check_limit(
            "memory_limit_mb",
            command.memory_limit_mb,
            self.policy.max_memory_limit_mb,
            MAX_MEMORY_LIMIT_MB,
        )
        max_processes = check_limit(
            "max_processes",
            command.max_processes,
            self.policy.max_max_processes,
            MAX_PROCESSES,
            whole=True,
        )
        cpu_limit = check_limit(
            "cpu_limit", command.cpu_limit, self.policy.max_cpu_limit, MAX_CPU_LIMIT
        )
        zone = task_zone(command.timezone, self.zones, self.tz)
        self._check_task_limit(actor)  # before anything changes (an environment created)

        script_path: str | None = None
        is_path = "\n" not in script.strip() and script.strip().endswith(".py")
        if is_path:
            script_path = self._check_script_path(actor, script.strip())
            if task_name is None:  # named after its file: the same rule as a given name
                task_name = printable_line("script", posixpath.basename(script_path))
        if task_name is not None and self.repo.get_task_by_name(task_name) is not None:
            raise TaskExists(task_name)

        env_exists = self.backend.exists(env_name)
        if command.reuse_env and not env_exists:
            raise ReuseMissingEnvironment(env_name)
        message = self._prepare_environment(actor, env_name, env_exists, requirements)

        now = self.clock.now()
        placeholder = task_name or f"task-pending-{secrets.token_hex(8)}"
        task = Task(
            id=0,
            name=placeholder,
            owner_id=actor.user_id,
            script_path=script_path or "",
            script_stored=script_path is None,
            conda_env=env_name,
            requirements=requirements,
            cron_expression=cron,
            delay_seconds=delay,
            timeout_seconds=timeout,
            status=TaskStatus.SCHEDULED,
            created_at=now,
            next_run_at=first_run_time(now, cron, delay, zone),
            memory_limit_mb=memory_limit,
            max_processes=int(max_processes) if max_processes is not None else None,
            cpu_limit=cpu_limit,
            network=command.network,
            timezone=command.timezone,
        )
        limit = None if actor.is_admin else self.policy.max_tasks_per_user
        # Counted again in the task's own transaction: a parallel create may take the last one.
        task = self.repo.add_task(task, owner_limit=limit)
        if script_path is None:
            try:
                self._store_script(task, script, named=task_name is not None)
            except BaseException:
                self.repo.delete_task(task.id)  # never leave a task without its script
                raise
        if self.audit is not None:
            self.audit.record(
                actor,
                "task.create",
                f"{task.id}:{task.name}",
                environment=env_name,
                schedule=cron or (f"delay {delay}s" if delay is not None else "now"),
            )
        self.on_change()
        return CreatedTask(task=task, environment_message=message)

    def _store_script(self, task: Task, script: str, *, named: bool) -> None:
        """Store a task's inline script as ``task_<id>.py``; a task without a name takes that
        name, or ``task_<id>_<n>.py`` when another task has it (retried if one takes it first)."""
        task.script_path = self.files.store_script(f"task_{task.id}.py", script)
        wanted = f"task_{task.id}.py"
        for n in range(1, 1000):
            if not named:
                task.name = wanted if n == 1 else f"task_{task.id}_{n}.py"
            try:
                self.repo.set_task_script(task.id, name=task.name, script_path=task.script_path)
                return
            except TaskExists:
                if named:
                    raise
        raise TaskExists(wanted)

    def _check_task_limit(self, actor: Principal) -> None:
        """Raise ``TaskLimitReached`` when a non-admin already owns the most tasks allowed."""
        limit = self.policy.max_tasks_per_user
        if limit is None or actor.is_admin:
            return
        if self.repo.count_tasks_owned_by(actor.user_id) >= limit:
            raise TaskLimitReached(limit)

    def _check_script_path(self, actor: Principal, path: str) -> str:
        if not posixpath.isabs(path):
            raise InvalidInput("script", "A script path must be absolute")
        real = self.files.resolve(path)
        if not actor.is_admin:  # before the existence check: others may not probe for files
            roots = [self.files.resolve(r) for r in self.script_roots]
            if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
                raise ScriptOutsideRoots(path)
        if not self.files.is_file(path):
            raise ScriptNotFound(path)
        return real

    def _prepare_environment(
        self, actor: Principal, env_name: str, exists: bool, requirements: str | None
    ) -> str:
        has_reqs = bool(requirements and requirements.strip())
        if not exists:
            self.environments.create(actor, NewEnvironment(name=env_name))
            if not has_reqs:
                return f"Created new environment '{env_name}'"
            try:
                with (
                    self.env_locks.hold(env_name),
                    recorded(self.audit, actor, "environment.requirements", env_name),
                ):
                    self.backend.install_requirements(env_name, requirements or "")
            except BaseException as exc:
                try:  # a new environment whose requirements failed is removed again
                    with self.env_locks.hold(env_name):
                        self.backend.delete(env_name)
                        self.repo.forget_environment(env_name)
                except Exception:  # noqa: S110 - the original failure is what the user needs
                    pass
                if not isinstance(exc, PackageOperationFailed):
                    raise
                raise RequirementsFailed(
                    new_environment=True,
                    failed_packages=exc.failed_packages,
                    error_details=exc.error_details,
                    output=exc.output,
                ) from None
            return f"Created new environment '{env_name}' and installed requirements"
        if not has_reqs:
            return f"Using existing environment '{env_name}'"
        with self.env_locks.hold(env_name):
            require_owner(
                actor,
                self.repo.get_environment_owner(env_name),
                "modify packages in this environment",
            )
            running = [
                t
                for t in self.repo.tasks_using_environment(env_name)
                if t.status is TaskStatus.RUNNING
            ]
            if running:
                raise EnvironmentInUse(
                    EnvironmentInUse.MODIFY,
                    [t.script_path for t in running],
                )
            before = self.backend.get_environment(env_name).packages
            try:
                with recorded(self.audit, actor, "environment.requirements", env_name):
                    self.backend.install_requirements(env_name, requirements or "")
            except PackageOperationFailed as exc:
                after = self.backend.get_environment(env_name).packages
                raise RequirementsFailed(
                    new_environment=False,
                    failed_packages=exc.failed_packages,
                    error_details=exc.error_details,
                    output=exc.output,
                    environment_state=(
                        STATE_UNCHANGED if set(before) == set(after) else STATE_INCONSISTENT
                    ),
                ) from None
        return f"Requirements installed in existing environment '{env_name}'"

    # --- reads ---------------------------------------------------------------------------------

    def list_tasks(self) -> list[Task]:
        return self.repo.list_tasks()

    def list_with_latest(self) -> list[tuple[Task, Execution | None]]:
        """Every task with its latest execution (one read of the store)."""
        return self.repo.list_tasks_with_latest()

    def get_task(self, task_id: int) -> Task:
        return self.repo.get_task(task_id)

    def detail(
        self,
        task_id: int,
        *,
        limit: int = DEFAULT_PAGE,
        before: str | None = None,
        log_bytes: int = 256 * 1024,
    ) -> TaskDetail:
        """The task, a page of its executions (newest first, skipped ones left out) after the
        execution ``before``, its latest execution and that one's log. Raises ``TaskNotFound``
        and ``InvalidInput`` (a bad ``limit`` or ``before``)."""
        task = self.repo.get_task(task_id)
        _check_page(limit, before, self.repo, task_id)
        page = self.repo.execution_page(
            task_id=task_id, before=before, limit=limit + 1, include_skipped=False
        )
        if before is None:
            latest = page[0] if page else None
        else:
            first = self.repo.execution_page(task_id=task_id, limit=1, include_skipped=False)
            latest = first[0] if first else None
        log = ""
        if latest is not None and latest.log_path:
            log = self.files.read_log(latest.log_path, log_bytes)
        more = len(page) > limit
        return TaskDetail(
            task=task,
            executions=page[:limit],
            latest=latest,
            latest_log=log,
            next_before=page[limit - 1].id if more else None,
        )

    def executions_of(self, task_id: int) -> list[Execution]:
        return self.repo.list_executions(task_id)

    def execution_log(self, task_id: int, execution_id: str, *, max_bytes: int) -> bytes:
        """The log of one execution of the task as it is kept (its first ``max_bytes``);
        ``b""`` when it has none (queued, skipped, or not started). Raises ``TaskNotFound`` and
        ``ExecutionNotFound`` (unknown, or another task's)."""
        execution = find_execution(self.repo, task_id, execution_id)
        if not execution.log_path:
            return b""
        return self.files.read_log_bytes(execution.log_path, 0, max_bytes)

    def follow_log(self, task_id: int, execution_id: str, *, offset: int = 0) -> LogFollower:
        """A follower of one execution's log, from byte ``offset``. Raises ``TaskNotFound``
        and ``ExecutionNotFound``."""
        execution = find_execution(self.repo, task_id, execution_id)
        return LogFollower(self.files, self.repo, execution, offset)

    # --- changes -------------------------------------------------------------------------------

    def stop_task(self, actor: Principal, task_id: int) -> Task:
        """Stop the running execution; return the task as it is after the stop (its status is
        the stopped run's). Raises ``TaskNotFound``, ``NotOwner`` and ``TaskNotRunning`` (also
        when the run ended on its own meanwhile: the error then names the status it ended
        with), and ``StorageUnavailable`` when the stop cannot be recorded yet (a full disk):
        the run's processes have ended, and it is recorded ``stopped`` once the store can be
        written."""
        task = self.repo.get_task(task_id)
        require_owner(actor, task.owner_id, "stop this task")
        if task.status is not TaskStatus.RUNNING:
            raise TaskNotRunning(task.status.value)
        if not self.coordinator.stop(task_id):  # it ended meanwhile: say how, as recorded now
            raise TaskNotRunning(self.repo.get_task(task_id).status.value)
        self._record(actor, "task.stop", task)
        return self.repo.get_task(task_id)

    def pause_task(self, actor: Principal, task_id: int) -> Task:
        """Pause: the task keeps its schedule and fires nothing until resumed (a run going on
        goes on). Idempotent. Raises ``TaskNotFound`` and ``NotOwner``."""
        task = self.repo.get_task(task_id)
        require_owner(actor, task.owner_id, "pause this task")
        self.repo.set_task_paused(task_id, True, task.next_run_at)
        self._record(actor, "task.pause", task)
        self.on_change()
        return self.repo.get_task(task_id)

    def resume_task(self, actor: Principal, task_id: int) -> Task:
        """Resume a paused task: a cron task continues with its first occurrence after now
        (those missed while paused are not made up); a one-shot whose time passed runs now.
        Idempotent. Raises ``TaskNotFound`` and ``NotOwner``."""
        task = self.repo.get_task(task_id)
        require_owner(actor, task.owner_id, "resume this task")
        now = self.clock.now()
        due = task.next_run_at
        if task.cron_expression is not None and (due is None or due < now):
            zone = running_zone(task.timezone, self.zones, self.tz)
            due = next_cron_time(task.cron_expression, now, zone)
        self.repo.set_task_paused(task_id, False, due)
        self._record(actor, "task.resume", task)
        self.on_change()
        return self.repo.get_task(task_id)

    def run_now(self, actor: Principal, task_id: int) -> Execution:
        """Start a run of the task now, outside its schedule (which is not changed; a paused
        task runs too). Raises ``TaskNotFound``, ``NotOwner`` and ``TaskAlreadyActive`` while
        a run of it is queued or running."""
        task = self.repo.get_task(task_id)
        require_owner(actor, task.owner_id, "run this task")
        if self.coordinator.is_active(task_id) or task.status is TaskStatus.RUNNING:
            raise TaskAlreadyActive(task_id)
        execution = Execution(
            id=new_execution_id(),
            task_id=task_id,
            status=ExecutionStatus.QUEUED,
            scheduled_for=self.clock.now(),
            note="run now",
        )
        self.repo.add_execution(execution)
        self.coordinator.launch(task_id, execution.id, owner_id=task.owner_id)
        self._record(actor, "task.run", task, execution=execution.id)
        return execution

    def _record(self, actor: Principal, action: str, task: Task, **detail: Any) -> None:
        if self.audit is not None:
            self.audit.record(actor, action, f"{task.id}:{task.name}", **detail)

    def delete_task(self, actor: Principal, task_id: int) -> None:
        """Stop any run, cancel the schedule, delete the task, its executions, logs and stored
        script. Raises ``TaskNotFound`` and ``NotOwner``."""
        task = self.repo.get_task(task_id)
        require_owner(actor, task.owner_id, "delete this task")
        self.repo.unschedule_task(task_id)  # no occurrence can be claimed after this
        self.coordinator.stop(task_id)
        paths = self.repo.delete_task(task_id)
        if task.script_stored:
            paths.append(task.script_path)
        self.files.delete(paths)
        self._record(actor, "task.delete", task)
        self.on_change()

    # --- stats ---------------------------------------------------------------------------------

    def stats(self) -> TaskStats:
        """Tasks by status, durations of every finished execution, completed and failed runs
        of the last 7 days (by end date in the server's time zone), the 5 latest runs: each an
        aggregate or a bounded read of the store."""
        tasks = self.repo.list_tasks()
        counts = {s.value: 0 for s in TaskStatus}
        for t in tasks:
            counts[t.status.value] += 1
        summary = self.repo.summarize_executions()
        done = counts["completed"] + counts["failed"]
        now = self.clock.now().astimezone(self.tz)
        today = now.date()
        days = [today - timedelta(days=i) for i in range(6, -1, -1)]
        edges = [_midnight(d, self.tz) for d in [*days, today + timedelta(days=1)]]
        outcomes = self.repo.count_outcomes(edges)
        names = {t.id: t.name for t in tasks}  # read already for the counts
        recent = self.repo.latest_started(5)
        return TaskStats(
            counts=counts,
            total=len(tasks),
            avg_duration=(round(summary.total_duration / summary.timed, 2) if summary.timed else 0),
            min_duration=round(summary.min_duration or 0, 2),
            max_duration=round(summary.max_duration or 0, 2),
            success_rate=round(100 * counts["completed"] / done, 1) if done else 0,
            dates=[d.isoformat() for d in days],
            success_counts=[c for c, _ in outcomes],
            failed_counts=[f for _, f in outcomes],
            recent=[(e, names.get(e.task_id, "")) for e in recent],
        )

    def running_executions(self) -> list[Execution]:
        return [e for e in self.repo.unfinished_executions() if e.status is ExecutionStatus.RUNNING]

    def history(self, *, limit: int = DEFAULT_PAGE, before: str | None = None) -> HistoryPage:
        """Executions started within the retention period (all when it is 0), newest first,
        skipped ones left out: a page of ``limit`` after the execution ``before``. Raises
        ``InvalidInput`` (a bad ``limit`` or ``before``)."""
        _check_page(limit, before, self.repo, None)
        since = (
            self.clock.now() - timedelta(days=self.retention_days)
            if self.retention_days > 0
            else None
        )
        page = self.repo.execution_page(
            started_since=since, before=before, limit=limit + 1, include_skipped=False
        )
        names = self.repo.task_names()
        more = len(page) > limit
        return HistoryPage(
            items=[(e, names.get(e.task_id, "")) for e in page[:limit]],
            next_before=page[limit - 1].id if more else None,
        )


def _midnight(day: date, tz: tzinfo) -> datetime:
    """The start of ``day`` in ``tz`` (the first instant of it, across DST changes)."""
    return datetime.combine(day, time(), tzinfo=tz)


def _check_page(limit: int, before: str | None, repo: Repository, task_id: int | None) -> None:
    Page(limit=limit, before=before).checked()
    if before is not None:
        anchor = repo.get_execution(before)
        if anchor is None or (task_id is not None and anchor.task_id != task_id):
            raise InvalidInput(
                "before", "'before' must be the execution_id of an execution in the list"
            )
