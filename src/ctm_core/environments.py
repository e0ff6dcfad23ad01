"""Environment use cases: list, detail, stats, create, rename, install, remove, delete."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import attrs

from ctm_core.audit import AuditLog, recorded
from ctm_core.auth import require_owner, require_user
from ctm_core.commands import NewEnvironment, PackageChange, RenameEnvironment
from ctm_core.errors import EnvironmentExists, EnvironmentInUse, EnvironmentNotFound
from ctm_core.models import DiskUsage, Environment, Principal, Task, TaskStatus
from ctm_core.ports import EnvironmentBackend, Repository
from ctm_core.validation import validate_environment_name

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _SharedLock:
    """One key's lock: any number of shared holders, or one exclusive holder. A waiting
    exclusive holder goes first: new shared holders wait behind it (no starvation)."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.shared = 0
        self.exclusive = False
        self.waiting = 0

    def free(self) -> bool:
        """Nobody holds it (``cond`` held)."""
        return not self.exclusive and not self.shared


class KeyedLocks:
    """One lock per key, created on demand: serializes changes to one environment (``hold``)
    while run starts, which may go on side by side, share it (``hold_shared``)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, _SharedLock] = {}

    def _lock(self, key: str) -> _SharedLock:
        with self._guard:
            return self._locks.setdefault(key, _SharedLock())

    @contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        """Hold every key exclusively (taken in sorted order: no deadlock between holders)."""
        locks = [self._lock(k) for k in sorted(set(keys))]
        taken: list[_SharedLock] = []
        try:
            for lock in locks:
                with lock.cond:
                    lock.waiting += 1
                    try:
                        lock.cond.wait_for(lock.free)
                    finally:
                        lock.waiting -= 1
                    lock.exclusive = True
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                with lock.cond:
                    lock.exclusive = False
                    lock.cond.notify_all()

    @contextmanager
    def hold_shared(self, key: str) -> Iterator[None]:
        """Hold ``key`` beside other shared holders; not while it is (or waits to be) held
        exclusively."""
        lock = self._lock(key)
        with lock.cond:
            lock.cond.wait_for(lambda: not lock.exclusive and not lock.waiting)
            lock.shared += 1
        try:
            yield
        finally:
            with lock.cond:
                lock.shared -= 1
                if not lock.shared:
                    lock.cond.notify_all()


@attrs.frozen(kw_only=True)
class UsageStats:
    total_tasks: int
    success_rate: float
    avg_execution_time: float
    disk_usage_bytes: int


@attrs.frozen(kw_only=True)
class EnvironmentDetail:
    environment: Environment
    usage: UsageStats


@attrs.frozen(kw_only=True)
class EnvironmentStats:
    total_environments: int
    active_environments: int
    total_disk_usage_bytes: int
    latest_created: Environment | None
    environment_usage: list[tuple[str, int]]
    package_stats: list[tuple[str, int]]


def integer_shares(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Integer percents of each key's share, adding up to exactly 100 (largest remainder).

    Keys with a zero count are left out; an empty or all-zero input gives an empty list.
    """
    total = sum(counts.values())
    items = [(k, v) for k, v in counts.items() if v > 0]
    if total <= 0:
        return []
    exact = [(k, v * 100 / total) for k, v in items]
    floors = {k: int(x) for k, x in exact}
    short = 100 - sum(floors.values())
    by_remainder = sorted(exact, key=lambda kx: (-(kx[1] - int(kx[1])), kx[0]))
    for k, _ in by_remainder[:short]:
        floors[k] += 1
    return sorted(floors.items(), key=lambda kv: (-kv[1], kv[0]))


def _running(tasks: list[Task]) -> list[Task]:
    return [t for t in tasks if t.status is TaskStatus.RUNNING]


@attrs.define
class EnvironmentService:
    """Every environment use case; permission is checked here, not only in the routes."""

    backend: EnvironmentBackend
    repo: Repository
    locks: KeyedLocks = attrs.field(factory=KeyedLocks)
    default_python: str | None = None
    is_task_active: Callable[[int], bool] = lambda _task_id: False
    """True while a task has a run queued or running (``RunCoordinator.is_active``)."""
    audit: AuditLog | None = None

    # --- reads ---------------------------------------------------------------------------------

    def list_environments(self) -> list[Environment]:
        return self.backend.list_environments()

    def disk_usage(self) -> DiskUsage:
        return self.backend.disk_usage()

    def get_environment(self, name: str) -> Environment:
        validate_environment_name(name)
        return self.backend.get_environment(name)

    def detail(self, name: str) -> EnvironmentDetail:
        env = self.get_environment(name)
        tasks = self.repo.tasks_using_environment(name)
        summary = self.repo.summarize_executions(environment=name)
        usage = UsageStats(
            total_tasks=len(tasks),
            success_rate=(
                round(100 * summary.completed / summary.finished, 1) if summary.finished else 0
            ),
            avg_execution_time=(
                round(summary.total_duration / summary.timed, 2) if summary.timed else 0
            ),
            disk_usage_bytes=self.backend.disk_usage().per_environment.get(name, 0),
        )
        return EnvironmentDetail(environment=env, usage=usage)

    def stats(self) -> EnvironmentStats:
        envs = self.backend.list_environments()
        names = {e.name for e in envs}
        task_counts: dict[str, int] = {}
        for task in self.repo.list_tasks():
            if task.conda_env in names:
                task_counts[task.conda_env] = task_counts.get(task.conda_env, 0) + 1
        dated = [e for e in envs if e.created_at is not None]
        latest = max(dated, key=lambda e: e.created_at or _EPOCH) if dated else None
        return EnvironmentStats(
            total_environments=len(envs),
            active_environments=len(task_counts),
            total_disk_usage_bytes=self.backend.disk_usage().total,
            latest_created=latest,
            environment_usage=integer_shares(task_counts),
            package_stats=[(e.name, len(e.packages)) for e in envs],
        )

    # --- changes -------------------------------------------------------------------------------

    def create(self, actor: Principal, command: NewEnvironment) -> Environment:
        """Create an environment owned by ``actor``. Raises what ``NewEnvironment.from_json``
        raises, ``EnvironmentExists`` and ``PackageOperationFailed``."""
        command = command.checked()
        require_user(self.repo, actor)  # before anything exists that it would own
        name = command.name
        python = command.python_version or self.default_python
        with self.locks.hold(name):
            if self.backend.exists(name):
                raise EnvironmentExists(name)
            with recorded(
                self.audit,
                actor,
                "environment.create",
                name,
                python_version=python,
                packages=list(command.packages),
            ):
                env = self.backend.create(name, python, list(command.packages))
                self.repo.set_environment_owner(name, actor.user_id)
        return env

    def rename(self, actor: Principal, command: RenameEnvironment) -> int:
        """Rename; return how many tasks now use the new name. Raises ``EnvironmentNotFound``,
        ``NotOwner``, ``EnvironmentInUse`` (running tasks) and ``EnvironmentExists``."""
        command = command.checked()
        name, target = command.environment, command.new_name
        with self.locks.hold(name, target):
            self._require_existing(name)
            require_owner(actor, self.repo.get_environment_owner(name), "modify this environment")
            running = _running(self.repo.tasks_using_environment(name))
            if running:
                raise EnvironmentInUse(
                    EnvironmentInUse.RENAME,
                    [t.script_path for t in running],
                )
            if target == name or self.backend.exists(target):
                raise EnvironmentExists(target, "Cannot rename environment to an existing name")
            with recorded(self.audit, actor, "environment.rename", name, new_name=target):
                self.backend.rename(name, target)
                return self.repo.rename_environment(name, target)

    def install(self, actor: Principal, change: PackageChange) -> list[str]:
        """Install specs; return them. Raises ``InvalidPackageSpec``, ``EnvironmentNotFound``,
        ``NotOwner``, ``EnvironmentInUse`` and ``PackageOperationFailed``."""
        change = change.checked()
        specs = list(change.packages)
        self._change_packages(
            actor,
            change.environment,
            "modify packages in this environment",
            EnvironmentInUse.MODIFY,
            lambda: self.backend.install(change.environment, specs),
            ("environment.install", specs),
        )
        return specs

    def remove(self, actor: Principal, change: PackageChange) -> list[str]:
        """Remove packages by name; return them. Raises as ``install`` does."""
        change = change.checked(names_only=True)
        names = list(change.packages)
        self._change_packages(
            actor,
            change.environment,
            "remove packages from this environment",
            EnvironmentInUse.REMOVE,
            lambda: self.backend.remove(change.environment, names),
            ("environment.remove", names),
        )
        return names

    def _change_packages(
        self,
        actor: Principal,
        name: str,
        action: str,
        in_use: str,
        change: Callable[[], None],
        audited: tuple[str, list[str]],
    ) -> None:
        validate_environment_name(name)
        with self.locks.hold(name):
            self._require_existing(name)
            require_owner(actor, self.repo.get_environment_owner(name), action)
            running = _running(self.repo.tasks_using_environment(name))
            if running:
                raise EnvironmentInUse(in_use, [t.script_path for t in running])
            with recorded(self.audit, actor, audited[0], name, packages=audited[1]):
                change()

    def delete(self, actor: Principal, name: str) -> None:
        """Delete an environment; the tasks that use it stay (their later runs fail). Raises
        ``EnvironmentNotFound``, ``NotOwner`` and ``EnvironmentInUse`` while one of its tasks has
        a run queued or running (another user's tasks cannot pin it)."""
        validate_environment_name(name)
        with self.locks.hold(name):  # a run launched meanwhile starts after: finds it gone
            self._require_existing(name)
            require_owner(actor, self.repo.get_environment_owner(name), "delete this environment")
            active = [
                t
                for t in self.repo.tasks_using_environment(name)
                if t.status is TaskStatus.RUNNING or self.is_task_active(t.id)
            ]
            if active:
                raise EnvironmentInUse(
                    EnvironmentInUse.DELETE,
                    [t.script_path for t in active],
                )
            with recorded(self.audit, actor, "environment.delete", name):
                self.backend.delete(name)
                self.repo.forget_environment(name)

    # --- helpers -------------------------------------------------------------------------------

    def _require_existing(self, name: str) -> None:
        if not self.backend.exists(name):
            raise EnvironmentNotFound(name)
