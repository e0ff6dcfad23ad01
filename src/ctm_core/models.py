"""Entities and values of the ctm domain.

Times are aware datetimes handed in by the caller (from the Clock port); nothing here reads the
wall clock. Serialization to the API's JSON lives in ``ctm_http``, not on these classes.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, TypeVar

import attrs

_N = TypeVar("_N", int, float)


class TaskStatus(enum.StrEnum):
    """Status of a task: ``scheduled`` until its first run starts, then its latest run's state."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


class ExecutionStatus(enum.StrEnum):
    """Status of one execution (one run of a task's script).

    ``queued``: waiting for a run slot or for a change of its environment to finish.
    ``skipped``: a cron occurrence that came while the same task still ran (recorded, not run).
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self in (
            ExecutionStatus.COMPLETED,
            ExecutionStatus.FAILED,
            ExecutionStatus.STOPPED,
        )


def _aware(_instance: object, attribute: attrs.Attribute[Any], value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be an aware datetime")


@attrs.define(kw_only=True)
class User:
    id: int
    username: str
    password_hash: str = attrs.field(repr=False)
    is_admin: bool
    created_at: datetime = attrs.field(validator=_aware)
    disabled: bool = False
    """A disabled user cannot log in and has no sessions; their tasks and environments stay."""


@attrs.frozen(kw_only=True)
class UserChange:
    """What an admin changes of a user (None: unchanged). ``password_hash`` is already hashed."""

    is_admin: bool | None = None
    disabled: bool | None = None
    password_hash: str | None = attrs.field(default=None, repr=False)

    @property
    def revokes_sessions(self) -> bool:
        """Disabling or a new password ends every session and API token of the user."""
        return bool(self.disabled) or self.password_hash is not None


@attrs.define(kw_only=True)
class ApiToken:
    """An API token (``Authorization: Bearer``): acts as its user. Only its hash is stored."""

    id: int
    user_id: int
    name: str
    token_hash: str = attrs.field(repr=False)
    created_at: datetime = attrs.field(validator=_aware)
    expires_at: datetime | None = attrs.field(validator=_aware)
    last_used_at: datetime | None = attrs.field(default=None, validator=_aware)


@attrs.define(kw_only=True)
class Session:
    """A server-side session. Only the hash of the cookie token is ever stored."""

    token_hash: str
    user_id: int
    created_at: datetime = attrs.field(validator=_aware)
    last_seen_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class Principal:
    """The authenticated caller of a use case."""

    user_id: int
    username: str
    is_admin: bool
    address: str | None = attrs.field(default=None, eq=False)
    """The client address the request came from, when known (for the audit log)."""


@attrs.frozen(kw_only=True)
class AuditEvent:
    """One recorded action: who (``actor``, None for nobody logged in), from where, what, on
    what, and whether it was done (``outcome`` ``ok``, or ``refused`` for a failed login)."""

    id: int
    at: datetime = attrs.field(validator=_aware)
    actor: str | None
    address: str | None
    action: str
    target: str
    outcome: str = "ok"
    detail: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Package:
    name: str
    version: str


@attrs.frozen(kw_only=True)
class Environment:
    """An environment as the backend sees it (owner lives in the repository)."""

    name: str
    prefix: str
    python_version: str | None
    packages: tuple[Package, ...]
    created_at: datetime | None = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class DiskUsage:
    """Bytes per environment, and the total with hard-linked files counted once."""

    per_environment: dict[str, int]
    total: int


@attrs.frozen(kw_only=True)
class RunEnvironment:
    """What a run needs from the backend: the interpreter and the variables to add."""

    python: str
    prefix: str
    variables: dict[str, str]
    path_prepend: tuple[str, ...]


@attrs.define(kw_only=True)
class Task:
    id: int
    name: str
    owner_id: int | None
    script_path: str
    script_stored: bool
    conda_env: str
    requirements: str | None
    cron_expression: str | None
    delay_seconds: float | None
    timeout_seconds: float | None
    status: TaskStatus
    created_at: datetime = attrs.field(validator=_aware)
    next_run_at: datetime | None = attrs.field(default=None, validator=_aware)
    last_run_at: datetime | None = attrs.field(default=None, validator=_aware)
    last_run_duration: float | None = None
    last_execution_id: str | None = None
    # Per-run limits asked for by the task (None: the server's default applies at run time).
    memory_limit_mb: float | None = None
    max_processes: int | None = None
    cpu_limit: float | None = None
    network: bool | None = None
    """False cuts the run's network; None follows the server's setting."""
    timezone: str | None = None
    """The IANA time zone its cron expression is read in; None: the server's."""
    paused: bool = False
    """A paused task keeps its schedule and fires nothing (a run now still runs)."""


@attrs.define(kw_only=True)
class Execution:
    id: str
    task_id: int
    status: ExecutionStatus
    scheduled_for: datetime | None = attrs.field(default=None, validator=_aware)
    start_time: datetime | None = attrs.field(default=None, validator=_aware)
    end_time: datetime | None = attrs.field(default=None, validator=_aware)
    duration: float | None = None
    peak_memory_mb: float | None = None
    avg_memory_mb: float | None = None
    exit_code: int | None = None
    log_path: str | None = None
    pid: int | None = None
    note: str | None = None
    # A ``skipped`` record stands for consecutive skipped occurrences of one task.
    skip_count: int = 0
    first_skipped_at: datetime | None = attrs.field(default=None, validator=_aware)
    last_skipped_at: datetime | None = attrs.field(default=None, validator=_aware)

    def check_skip_record(self) -> None:
        """Raise ``ValueError`` unless this is a skipped record of at least one occurrence."""
        if (
            ExecutionStatus(self.status) is not ExecutionStatus.SKIPPED
            or self.skip_count < 1
            or self.first_skipped_at is None
            or self.last_skipped_at is None
        ):
            raise ValueError(f"execution {self.id!r} is not a skipped record of an occurrence")


@attrs.frozen(kw_only=True)
class RunPolicy:
    """The server's defaults and maxima for per-run limits (None: no default / no maximum).

    A task's own value must not exceed the maximum; a task without one gets the default.
    """

    default_memory_limit_mb: float | None = None
    max_memory_limit_mb: float | None = None
    default_max_processes: int | None = None
    max_max_processes: int | None = None
    default_cpu_limit: float | None = None
    max_cpu_limit: float | None = None
    default_timeout_seconds: float | None = None
    network: bool = True
    """The server's network setting: False (``CTM_RUN_NETWORK=off``) cuts every run's network."""
    max_runs_per_user: int | None = None
    max_tasks_per_user: int | None = None
    """For non-admins."""

    def memory_limit_for(self, task: Task) -> float | None:
        """The task's memory limit (MB), or the default; never above the maximum (which may
        have been lowered since the task was stored)."""
        own = task.memory_limit_mb
        return _capped(
            own if own is not None else self.default_memory_limit_mb, self.max_memory_limit_mb
        )

    def max_processes_for(self, task: Task) -> int | None:
        """The task's process limit, or the default; never above the maximum."""
        own = task.max_processes
        return _capped(
            own if own is not None else self.default_max_processes, self.max_max_processes
        )

    def cpu_limit_for(self, task: Task) -> float | None:
        """The task's CPU limit (cores), or the default; never above the maximum."""
        own = task.cpu_limit
        return _capped(own if own is not None else self.default_cpu_limit, self.max_cpu_limit)

    def timeout_for(self, task: Task) -> float | None:
        """The task's timeout (seconds), or the default."""
        return (
            task.timeout_seconds
            if task.timeout_seconds is not None
            else (self.default_timeout_seconds)
        )

    def network_for(self, task: Task) -> bool:
        """Whether the task's runs have network: the server's setting, unless the task cut it."""
        return self.network and task.network is not False


def _capped(value: _N | None, maximum: _N | None) -> _N | None:
    if value is None or maximum is None:
        return value
    return min(value, maximum)
