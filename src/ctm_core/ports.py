"""The ports: what the core needs from the world, as ``typing.Protocol``s.

Each method's docstring is its contract, including the domain errors it raises. Adapters do not
inherit from these; mypy checks conformance where the composition root annotates its variables.
All methods are blocking unless marked ``async``: callers in an event loop run them in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import attrs

from ctm_core.models import (
    ApiToken,
    AuditEvent,
    DiskUsage,
    Environment,
    Execution,
    RunEnvironment,
    Session,
    Task,
    User,
    UserChange,
)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time as an aware datetime (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards (durations, deadlines)."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once ``now() >= when`` (at once if already past). Cancellable."""
        ...


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str:
        """A salted, slow hash of ``password`` (argon2id in production). Never the clear text."""
        ...

    def verify(self, password_hash: str, password: str) -> bool:
        """True when ``password`` matches ``password_hash``; False otherwise, never raises."""
        ...

    def dummy_verify(self, password: str) -> None:
        """Spend the time of one ``verify`` (for unknown users, so login timing tells nothing)."""
        ...


class EnvironmentBackend(Protocol):
    """conda/mamba/micromamba or venv environments, addressed by name.

    The base/root environment is never listed nor changed. Names and specs reaching the backend
    have already been validated by the core; the backend still never passes them to a shell, and
    never lets one be read as an option.
    """

    kind: str
    """Which tool serves: ``conda``, ``mamba``, ``micromamba`` or ``venv``."""

    def list_environments(self) -> list[Environment]:
        """Every environment except base/root, sorted by name."""
        ...

    def get_environment(self, name: str) -> Environment:
        """One environment with every installed package. Raises ``EnvironmentNotFound``."""
        ...

    def exists(self, name: str) -> bool:
        """True when an environment of that name exists."""
        ...

    def create(self, name: str, python_version: str | None, specs: Sequence[str]) -> Environment:
        """Create an environment with python (``python_version`` or the default) and ``specs``.

        Raises ``EnvironmentExists`` (checked first: it never replaces an existing one) and
        ``PackageOperationFailed("Failed to create environment", ...)``; after a failure nothing of
        the new environment is left behind.
        """
        ...

    def install(self, name: str, specs: Sequence[str]) -> None:
        """Install ``specs``. Raises ``EnvironmentNotFound`` and
        ``PackageOperationFailed("Failed to install packages", ...)``."""
        ...

    def remove(self, name: str, packages: Sequence[str]) -> None:
        """Remove installed packages by name. Raises ``EnvironmentNotFound`` and
        ``PackageOperationFailed("Failed to remove packages", ...)`` (e.g. not installed)."""
        ...

    def rename(self, old: str, new: str) -> None:
        """Rename an environment. Raises ``EnvironmentNotFound`` and ``EnvironmentExists``
        (checked first: it never overwrites)."""
        ...

    def delete(self, name: str) -> None:
        """Delete an environment and its directory. Raises ``EnvironmentNotFound``."""
        ...

    def disk_usage(self) -> DiskUsage:
        """Bytes on disk per environment and in total, a hard-linked file counted once."""
        ...

    def run_environment(self, name: str) -> RunEnvironment:
        """The interpreter and variables for running a script in ``name``.
        Raises ``EnvironmentNotFound``."""
        ...

    def install_requirements(self, name: str, requirements: str) -> None:
        """Install requirements.txt text with the environment's own pip. Raises
        ``EnvironmentNotFound`` and ``PackageOperationFailed("Failed to install requirements",
        ...)`` with the failed requirement names."""
        ...


@attrs.frozen(kw_only=True)
class RunLimits:
    """What one run may use (None: no limit). Memory counts the whole process tree; processes
    count every process of the run at once; CPU is in cores."""

    memory_mb: float | None = None
    max_processes: int | None = None
    cpu_cores: float | None = None


@attrs.frozen(kw_only=True)
class RunSpec:
    """What to start: ``argv`` without a shell, in ``cwd``, its output to ``log_path``.

    A containing runner (the sandbox) shows the run only ``prefix`` and ``readonly_paths``
    (read-only), ``cwd`` (writable, private to the run), a private ``/tmp`` and the HOME of
    ``owner``; it runs it as ``owner``'s own uid when the server is root.
    """

    argv: tuple[str, ...]
    cwd: str
    log_path: str
    env_add: dict[str, str]
    path_prepend: tuple[str, ...] = ()
    timeout_seconds: float | None = None
    limits: RunLimits = RunLimits()
    network: bool = True
    owner: str | None = None
    """The ctm username the run belongs to (its HOME and, under root, its uid)."""
    owner_id: int | None = None
    prefix: str | None = None
    """The environment's prefix."""
    readonly_paths: tuple[str, ...] = ()
    """Files or folders the run reads besides the prefix (its script)."""


@attrs.frozen(kw_only=True)
class RunResult:
    """How a run ended. Memory in bytes, duration in seconds (monotonic)."""

    exit_code: int
    duration: float
    peak_memory: int
    avg_memory: int
    timed_out: bool = False
    start_failed: str | None = None
    limit_exceeded: str | None = None
    """Set when a limit of ``RunLimits`` ended the run: which one, e.g.
    ``"memory limit 256 MB exceeded (peak 260.1 MB)"``."""


class RunHandle(Protocol):
    pid: int


class ProcessRunner(Protocol):
    runs_survive_restart: bool
    """True when runs go on while the server is down and ``adopt`` can follow them afterwards;
    then the server leaves its runs going when it shuts down."""

    def start(self, spec: RunSpec) -> RunHandle:
        """Start ``spec.argv`` in a new session/process group with the server's environment less
        ctm's secrets, plus ``env_add`` and ``path_prepend``; stdout and stderr merged in order into
        the capped log. Memory sampling of the whole process tree begins at once.
        Raises ``OSError`` when the program cannot be started."""
        ...

    def wait(self, handle: RunHandle) -> RunResult:
        """Block until the run ends (or its timeout ends it) and return its result. The exit code
        is negative (minus the signal number) when a signal ended it; ``peak_memory`` is never
        below the OS's own peak for the main process. (One known exception: the in-process
        ``PsutilProcessRunner`` cannot tell a run's own peak from the server's when the run ends
        before its first sample and stayed below the server's size: docs/runs.md.)"""
        ...

    def stop(self, handle: RunHandle, grace_seconds: float) -> None:
        """SIGTERM to the group, SIGKILL after ``grace_seconds``, then kill any descendant that
        escaped the group. Returns once no process of the run is alive."""
        ...

    def adopt(self, pid: int, log_path: str) -> RunHandle | None:
        """At start-up: follow a run that an earlier life of this server started (``pid`` and
        ``log_path`` as recorded). Returns a handle for ``wait`` and ``stop`` (``wait`` returns
        at once when the run ended while the server was down), or None when the run cannot be
        followed (its end is unknown)."""
        ...

    def kill_stale_runs(self, grace_seconds: float) -> int:
        """At start-up, after every adoption: stop every process left by runs of an earlier
        life of this server that were not adopted; return how many processes were stopped."""
        ...

    def close(self) -> None:
        """At shutdown, after every run was stopped: release threads and helper processes.
        Supervised runs that were left going keep going (a restart adopts them)."""
        ...


@attrs.frozen(kw_only=True)
class ExecutionSummary:
    """Counts and durations of finished (completed, failed or stopped) executions."""

    finished: int
    completed: int
    timed: int
    """How many of them have a duration."""
    total_duration: float
    min_duration: float | None
    max_duration: float | None


class Repository(Protocol):
    """All state: users, sessions, API tokens, login failures, the audit log, environment
    owners, tasks, executions.

    Methods that change several rows do it in one transaction. A change the store cannot write
    (a full disk, a read-only or failing file) raises ``StorageUnavailable`` and changes
    nothing; reads go on working meanwhile.
    """

    # users
    def add_user(
        self, *, username: str, password_hash: str, is_admin: bool, created_at: datetime
    ) -> User:
        """Store a new user. Raises ``UserExists``."""
        ...

    def get_user(self, user_id: int) -> User | None: ...

    def get_user_by_name(self, username: str) -> User | None: ...

    def count_users(self) -> int: ...

    def list_users(self) -> list[User]:
        """Every user, by id."""
        ...

    def update_user(
        self, user_id: int, change: UserChange, *, keep_session: str | None = None
    ) -> tuple[User, int]:
        """Apply ``change`` and, when it ``revokes_sessions``, delete every session of the user
        but ``keep_session`` (a token hash) and every API token of theirs, in one transaction;
        return the user as stored and how many sessions ended. Raises ``UserNotFound``, and
        ``LastAdmin`` (nothing changed) when no enabled admin would be left."""
        ...

    def delete_user(self, user_id: int) -> None:
        """Delete the user, their sessions and API tokens, leaving the environments they own
        to no owner, in one transaction. Raises ``UserNotFound``; ``LastAdmin`` when they are
        the only enabled admin; ``UserOwnsTasks`` when they own tasks (nothing deleted)."""
        ...

    # sessions
    def add_session(self, session: Session, *, max_per_user: int | None = None) -> int:
        """Store a session; with ``max_per_user``, delete the user's oldest sessions beyond that
        many, in the same transaction; return how many were deleted. Raises ``LookupError``
        for an unknown user, ``ValueError`` for a token hash already stored."""
        ...

    def get_session(self, token_hash: str) -> Session | None: ...

    def touch_session(self, token_hash: str, last_seen_at: datetime) -> None: ...

    def delete_session(self, token_hash: str) -> None: ...

    def delete_sessions_before(self, *, idle_before: datetime, created_before: datetime) -> int:
        """Delete sessions idle since before ``idle_before`` or created before
        ``created_before``."""
        ...

    def count_sessions_by_user(self) -> dict[int, int]:
        """Live sessions per user id (users with none are left out)."""
        ...

    # API tokens
    def add_token(self, token: ApiToken, *, max_per_user: int | None = None) -> ApiToken:
        """Store a token (its ``id`` is ignored) and return it with its id. Raises
        ``InvalidInput`` when its user already has ``max_per_user`` tokens (counted in the same
        transaction), ``LookupError`` for an unknown user."""
        ...

    def get_token(self, token_id: int) -> ApiToken | None: ...

    def get_token_by_hash(self, token_hash: str) -> ApiToken | None: ...

    def list_tokens(self, user_id: int | None = None) -> list[ApiToken]:
        """One user's tokens (every user's with None), by id."""
        ...

    def touch_token(self, token_id: int, last_used_at: datetime) -> None: ...

    def delete_token(self, token_id: int) -> None:
        """Delete a token. Idempotent."""
        ...

    # login throttling
    def add_login_failure(self, *, username: str, client: str, at: datetime) -> None: ...

    def login_failures_of_client(
        self, *, client: str, since: datetime
    ) -> list[tuple[datetime, str]]:
        """(time, username) of the failures from ``client`` since ``since``, oldest first."""
        ...

    def clear_login_failures(self, *, username: str, client: str) -> None:
        """Forget the failures of this (username, client) pair."""
        ...

    def delete_login_failures_before(self, before: datetime) -> int:
        """Forget failures older than ``before``; return how many."""
        ...

    # audit
    def add_audit_event(self, event: AuditEvent) -> None:
        """Store an event (its ``id`` is ignored: ids grow with each event)."""
        ...

    def audit_page(self, *, limit: int, before: int | None = None) -> list[AuditEvent]:
        """At most ``limit`` events, newest (highest id) first, of ids below ``before``."""
        ...

    def prune_audit(self, before: datetime) -> int:
        """Delete events older than ``before``; return how many."""
        ...

    # environment owners
    def get_environment_owner(self, name: str) -> int | None: ...

    def set_environment_owner(self, name: str, user_id: int | None) -> None: ...

    def rename_environment(self, old: str, new: str) -> int:
        """Move the owner record and every task's ``conda_env`` from ``old`` to ``new`` in one
        transaction; return how many tasks changed."""
        ...

    def forget_environment(self, name: str) -> None: ...

    # tasks
    def add_task(self, task: Task, *, owner_limit: int | None = None) -> Task:
        """Store ``task`` (its ``id`` is ignored) and return it with the id given. Raises
        ``TaskExists`` when the name is taken, and ``TaskLimitReached`` when ``owner_limit`` is
        given and the task's owner already owns that many (counted in the same transaction)."""
        ...

    def get_task(self, task_id: int) -> Task:
        """Raises ``TaskNotFound``."""
        ...

    def get_task_by_name(self, name: str) -> Task | None: ...

    def list_tasks(self) -> list[Task]:
        """All tasks by id."""
        ...

    def task_names(self) -> dict[int, str]:
        """Every task's name by id (the history's and the stats' labels)."""
        ...

    def list_tasks_with_latest(self) -> list[tuple[Task, Execution | None]]:
        """All tasks by id, each with its ``last_execution_id`` execution (None when it has none
        or it was pruned), read together."""
        ...

    def due_tasks(self, now: datetime) -> list[Task]:
        """Tasks not paused whose ``next_run_at`` is at or before ``now``, earliest due
        first."""
        ...

    def earliest_next_run(self) -> datetime | None:
        """The earliest ``next_run_at`` of any task not paused; None when none is
        scheduled."""
        ...

    def set_task_script(self, task_id: int, *, name: str, script_path: str) -> None:
        """Set a task's name and script path (nothing else). Raises ``TaskNotFound``, and
        ``TaskExists`` when the name is taken."""
        ...

    def set_task_paused(self, task_id: int, paused: bool, next_run_at: datetime | None) -> None:
        """Pause or resume a task and set its ``next_run_at``. A paused task is never in
        ``due_tasks`` nor ``earliest_next_run``. Raises ``TaskNotFound``."""
        ...

    def unschedule_task(self, task_id: int) -> None:
        """Clear the task's ``next_run_at`` and ``cron_expression``: once this returns, no
        occurrence of it can be claimed. Raises ``TaskNotFound``."""
        ...

    def update_task(self, task: Task) -> None:
        """Replace every stored field of ``task``. Raises ``TaskNotFound``, and ``TaskExists``
        when renamed to a name taken. Overwrites what another actor changed meanwhile: the core
        uses the targeted changes above."""
        ...

    def delete_task(self, task_id: int) -> list[str]:
        """Delete the task and its executions; return their log paths. Raises ``TaskNotFound``."""
        ...

    def tasks_using_environment(self, name: str) -> list[Task]: ...

    def count_tasks_owned_by(self, owner_id: int) -> int:
        """How many tasks ``owner_id`` owns."""
        ...

    # executions
    def add_execution(self, execution: Execution) -> None:
        """Store a new execution. Raises ``TaskNotFound`` when its task does not exist and
        ``ValueError`` when the id is taken."""
        ...

    def claim_occurrence(
        self, execution: Execution, *, due: datetime, next_run_at: datetime | None
    ) -> Execution | None:
        """Fire the occurrence ``due`` of ``execution.task_id``, in one transaction: only when the
        task's ``next_run_at`` still is ``due`` (compare-and-set: two firings of one occurrence
        cannot both succeed, nor a firing of a task deleted or unscheduled meanwhile), set it to
        ``next_run_at`` and store ``execution``. A ``queued`` execution is a new record. A
        ``skipped`` one (``skip_count`` 1 and ``first_skipped_at`` = ``last_skipped_at`` = the
        occurrence) is absorbed by the task's latest stored execution when that is a skipped
        record (nothing ran or was queued since: its ``skip_count`` grows, its
        ``last_skipped_at`` and ``end_time`` become the new one's), else stored as a new record.
        Returns the record as stored, or None when nothing was claimed. Raises ``ValueError``
        when a new record's id is taken or a skipped ``execution`` is malformed."""
        ...

    def record_run_start(self, execution: Execution) -> bool:
        """Store a started execution (every field) and mark its task ``running`` with this as its
        latest run (``last_run_at``, ``last_execution_id``), in one transaction. False, with
        nothing stored, when the execution or its task no longer exists."""
        ...

    def record_run_end(self, execution: Execution, *, only_if_latest: bool = False) -> bool:
        """Store an ended execution (every field) and set its task's ``status`` (the execution's),
        ``last_execution_id``, ``last_run_at`` (its start) and ``last_run_duration``, in one
        transaction. With ``only_if_latest`` the task changes only when its
        ``last_execution_id`` is this execution or none. False, with nothing stored, when the
        execution no longer exists."""
        ...

    def update_execution(self, execution: Execution) -> None:
        """Replace a stored execution's fields. An unknown (e.g. pruned) one is ignored."""
        ...

    def get_execution(self, execution_id: str) -> Execution | None: ...

    def list_executions(self, task_id: int) -> list[Execution]:
        """A task's executions, newest first: not yet started ones first, then by start time,
        then scheduled time (unscheduled first), then the latest stored first."""
        ...

    def execution_page(
        self,
        *,
        limit: int,
        task_id: int | None = None,
        started_since: datetime | None = None,
        before: str | None = None,
        include_skipped: bool = True,
    ) -> list[Execution]:
        """At most ``limit`` executions in ``list_executions``'s order: of one task, or (with
        ``started_since``) those started at or after it, and only those that come after the
        execution ``before`` in that order (none when ``before`` is unknown)."""
        ...

    def latest_started(self, limit: int) -> list[Execution]:
        """The ``limit`` executions started last that are running or finished, newest first."""
        ...

    def summarize_executions(self, *, environment: str | None = None) -> ExecutionSummary:
        """Counts and durations of every finished execution (of the tasks using
        ``environment``, when given), computed by the store; the shortest and longest duration
        only over every execution (None when ``environment`` is given)."""
        ...

    def count_outcomes(self, boundaries: Sequence[datetime]) -> list[tuple[int, int]]:
        """(completed, failed) executions that ended in each interval ``[b[i], b[i + 1])`` of
        the ascending ``boundaries``: one pair fewer than there are boundaries."""
        ...

    def unfinished_executions(self) -> list[Execution]:
        """Executions left ``queued`` or ``running`` (after a restart: to resolve)."""
        ...

    def prune_executions(self, before: datetime) -> list[str]:
        """Delete finished or skipped executions that ended before ``before``; return their
        log paths."""
        ...

    def close(self) -> None:
        """Release connections; nothing may be called after."""
        ...


class FileStore(Protocol):
    """Files in the data directory: stored scripts, per-execution folders and logs."""

    def store_script(self, name: str, content: str) -> str:
        """Write a script's content under a server-chosen file name; return its absolute path.
        Raises ``StorageUnavailable`` when the disk is full (nothing is left behind)."""
        ...

    def is_file(self, path: str) -> bool:
        """True when ``path`` names an existing regular file (after following links)."""
        ...

    def resolve(self, path: str) -> str:
        """The absolute, symlink-free form of ``path`` (for the script-root check)."""
        ...

    def run_dir(self, execution_id: str) -> str:
        """Create and return a working folder for one execution of a stored script."""
        ...

    def log_path(self, execution_id: str) -> str:
        """Where an execution's log goes (the folder exists)."""
        ...

    def read_log(self, path: str, max_bytes: int) -> str:
        """The last ``max_bytes`` of a log (with a marker when cut); ``""`` when missing."""
        ...

    def read_log_bytes(self, path: str, offset: int, max_bytes: int) -> bytes:
        """At most ``max_bytes`` of a log as stored, from byte ``offset``; ``b""`` when missing
        or at its end. Past its cap a log is rewritten in place (head, marker, tail: see
        docs/runs.md), so a reader that follows one checks that what it read is still there."""
        ...

    def append_log(self, path: str, line: str) -> None:
        """Add a line of ctm's own to a log (why a run failed or was interrupted)."""
        ...

    def delete(self, paths: list[str]) -> None:
        """Delete files and per-execution folders; missing ones are ignored."""
        ...
