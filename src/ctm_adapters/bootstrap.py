"""The one composition root: settings in, adapters and use cases out, started and stopped.

The HTTP app's lifespan, the ``ctm`` command, the library facade (``ctm.Ctm``) and the tests
all build ctm here. Every port can be replaced by keyword (``repo=``, ``clock=``, ``backend=``,
``runner=``, ``files=``, ``hasher=``): a misspelt keyword is a ``TypeError``, and mypy checks
that what is given implements the port.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, TypedDict, Unpack
from zoneinfo import ZoneInfo

import attrs

from ctm_adapters._sqlite_store import DatabaseUnusable as DatabaseUnusable  # for ctm_http
from ctm_adapters.settings import Settings, run_policy
from ctm_core.audit import AuditLog
from ctm_core.auth import Authenticator, AuthPolicy
from ctm_core.environments import EnvironmentService, KeyedLocks
from ctm_core.ports import (
    Clock,
    EnvironmentBackend,
    FileStore,
    PasswordHasher,
    ProcessRunner,
    Repository,
)
from ctm_core.runs import RunCoordinator
from ctm_core.scheduler import Scheduler
from ctm_core.tasks import TaskService
from ctm_core.tokens import TokenService
from ctm_core.users import UserAdmin

if TYPE_CHECKING:
    from ctm_adapters._sandbox import Identities, Installer, Sandbox
    from ctm_adapters._sqlite_store import DatabaseReport

log = logging.getLogger("ctm")


@attrs.frozen(kw_only=True)
class Containment:
    """How runs are contained on this server (admins see it in ``GET /api/me``)."""

    contained: bool
    mode: str
    reason: str
    identity: str
    limits: str

    def as_json(self) -> dict[str, object]:
        return attrs.asdict(self)


NOT_CONTAINED_BY_US = Containment(
    contained=False, mode="off", reason="a runner given by the caller", identity="", limits=""
)


@attrs.define
class Services:
    """Every adapter and use case of one ctm, built by ``build_services``."""

    settings: Settings
    tz: tzinfo
    repo: Repository
    clock: Clock
    backend: EnvironmentBackend
    runner: ProcessRunner
    files: FileStore
    auth: Authenticator
    users: UserAdmin
    audit: AuditLog
    tokens: TokenService
    environments: EnvironmentService
    tasks: TaskService
    coordinator: RunCoordinator
    scheduler: Scheduler
    containment: Containment = NOT_CONTAINED_BY_US


class Ports(TypedDict, total=False):
    """The adapters a caller may give instead of those the settings choose."""

    repo: Repository
    clock: Clock
    backend: EnvironmentBackend
    runner: ProcessRunner
    files: FileStore
    hasher: PasswordHasher


def build_services(settings: Settings, **ports: Unpack[Ports]) -> Services:
    """Build every adapter the caller did not give, and the use cases over them. Nothing starts
    yet: ``start_services`` recovers earlier runs, the caller runs ``scheduler.run()``, and
    ``stop_services`` ends it all."""
    unknown = set(ports) - set(Ports.__annotations__)
    if unknown:  # mypy says so too; this is for callers without it
        raise TypeError(f"not a port of ctm: {', '.join(sorted(unknown))}")
    tz = _timezone(settings.timezone)
    clock = ports.get("clock") or _system_clock()
    repo = ports.get("repo") or _sqlite_repo(settings)
    hasher = ports.get("hasher") or _argon2()
    backend, runner = ports.get("backend"), ports.get("runner")
    containment = attrs.evolve(NOT_CONTAINED_BY_US, mode=settings.sandbox)
    sandbox = identities = None
    if runner is None or backend is None:
        sandbox, identities, found = containment_of(settings)
        if runner is None:
            containment = found
    backend = backend or choose_backend(
        settings, sandbox=sandbox, installer=None if identities is None else identities.installer()
    )
    runner = runner or _process_runner(settings, sandbox, identities)
    files = ports.get("files") or _file_store(settings)
    env_locks = KeyedLocks()
    run_limits = run_policy(settings)
    policy = AuthPolicy(
        idle_timeout=timedelta(minutes=settings.session_idle_minutes),
        absolute_lifetime=timedelta(hours=settings.session_max_hours),
        max_sessions=settings.max_sessions_per_user,
    )
    audit = AuditLog(
        repo, clock, on_error=lambda exc: log.error("audit event not recorded: %s", exc)
    )
    auth = Authenticator(repo, hasher, clock, policy, audit)
    users = UserAdmin(repo, hasher, audit)
    tokens = TokenService(repo, clock, audit)
    coordinator = RunCoordinator(
        repo=repo,
        backend=backend,
        runner=runner,
        files=files,
        clock=clock,
        env_locks=env_locks,
        max_concurrent=settings.max_concurrent_runs,
        stop_grace=settings.stop_grace_seconds,
        policy=run_limits,
        report=lambda message: log.warning("ctm: %s", message),
    )
    # The backends apply settings.default_python themselves (a version, or for venv a path).
    environments = EnvironmentService(
        backend, repo, env_locks, is_task_active=coordinator.is_active, audit=audit
    )
    scheduler = Scheduler(
        repo=repo,
        clock=clock,
        coordinator=coordinator,
        files=files,
        tz=tz,
        retention_days=settings.retention_days,
        zones=zone_named,
        on_maintenance=lambda: (
            auth.purge_sessions(),
            audit.prune(settings.retention_days),
        ),
        on_error=lambda exc: log.error("scheduler tick failed", exc_info=exc),
    )
    tasks = TaskService(
        repo=repo,
        backend=backend,
        environments=environments,
        coordinator=coordinator,
        files=files,
        clock=clock,
        tz=tz,
        env_locks=env_locks,
        script_roots=settings.script_roots,
        on_change=scheduler.wake,
        retention_days=settings.retention_days,
        policy=run_limits,
        audit=audit,
        zones=zone_named,
    )
    return Services(
        settings=settings,
        tz=tz,
        repo=repo,
        clock=clock,
        backend=backend,
        runner=runner,
        files=files,
        auth=auth,
        users=users,
        audit=audit,
        tokens=tokens,
        environments=environments,
        tasks=tasks,
        coordinator=coordinator,
        scheduler=scheduler,
        containment=containment,
    )


def start_services(svc: Services) -> None:
    """Resolve what an earlier process left: follow the runs that still go on, stop what
    cannot be followed, mark the rest failed, queue again what was queued."""

    def kill_stale() -> None:  # after adoption: what is left cannot be followed
        stale = svc.runner.kill_stale_runs(min(svc.settings.stop_grace_seconds, 5.0))
        if stale:
            log.warning("ctm: stopped %d processes left by runs of a previous server", stale)

    svc.scheduler.recover(kill_stale)


def stop_services(svc: Services) -> None:
    """Stop every run (TERM, then KILL after the grace), then release the runner and the
    repository. Call it after the scheduler loop has ended."""
    try:
        svc.coordinator.stop_all(min(svc.settings.stop_grace_seconds, 5.0))
    finally:
        try:
            svc.runner.close()
        finally:
            svc.repo.close()


def write_admin_password(data_dir: str, password: str) -> str:
    """Keep a generated admin password where only the server's user can read it."""
    path = os.path.join(data_dir, "initial-admin-password")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.chmod(path, 0o600)
    return path


# --- the adapters ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def zone_named(name: str) -> tzinfo:
    """An IANA zone from the system's (or the tzdata package's) database. Raises
    ``ZoneInfoNotFoundError`` (a ``KeyError``) or ``ValueError``."""
    return ZoneInfo(name)


def _timezone(name: str | None) -> tzinfo:
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo  # noqa: DTZ005 - the machine's own zone
    assert local is not None
    return local


def _system_clock() -> Clock:
    from ctm_adapters.clock import SystemClock

    return SystemClock()


def database_path(settings: Settings) -> str:
    """The SQLite file of the data directory."""
    return os.path.join(settings.data_dir, "ctm.sqlite3")


def check_database(settings: Settings) -> None:
    """Refuse to start on a database file that would lose or hide ctm's state: raise
    ``DatabaseUnusable`` (its message names the file and what to do) when it is empty (0 bytes),
    not ctm's, or fails ``PRAGMA quick_check``. A missing file is fine: the start creates it.
    ``build_services`` calls it; ``ctm serve`` also calls it before starting the server, to
    refuse without a traceback."""
    from ctm_adapters.sqlite import check_database_file

    check_database_file(database_path(settings))


# ``ctm db``: the database file as a whole. Each raises ``DatabaseUnusable``.


def describe_database(settings: Settings) -> DatabaseReport:
    """``ctm db check``: ``PRAGMA integrity_check`` and the counts of rows."""
    from ctm_adapters.sqlite import describe_database as describe

    return describe(database_path(settings))


def backup_database(settings: Settings, target: str) -> DatabaseReport:
    """``ctm db backup``: a consistent copy at ``target``, a new 0600 file, also while a server
    writes (``FileExistsError`` when ``target`` exists)."""
    from ctm_adapters.sqlite import backup_database as backup

    return backup(database_path(settings), target)


def init_database(settings: Settings) -> bool:
    """``ctm db init``: create the database where there is none or an empty file (True); False
    when it is a ctm database already. Any other file is never overwritten."""
    from ctm_adapters.sqlite import init_database as init

    os.makedirs(settings.data_dir, mode=0o700, exist_ok=True)
    return init(database_path(settings))


def _sqlite_repo(settings: Settings) -> Repository:
    from ctm_adapters.sqlite import SqliteRepository

    os.makedirs(settings.data_dir, mode=0o700, exist_ok=True)
    check_database(settings)
    return SqliteRepository(database_path(settings))


def _argon2() -> PasswordHasher:
    from ctm_adapters.passwords import Argon2PasswordHasher

    return Argon2PasswordHasher()


def containment_of(settings: Settings) -> tuple[Sandbox | None, Identities, Containment]:
    """The sandbox (None when runs are not contained), the identities of runs, and what to tell
    the operator. ``CTM_SANDBOX=required`` without a working sandbox stops the start."""
    from ctm_adapters._sandbox import Identities, Sandbox, SandboxUnavailable

    homes = settings.effective_homes_dir
    identities = Identities(homes_dir=homes, uid_range=settings.run_uids)
    lo, hi = settings.run_uids
    identity = (
        f"per-user uids {lo}+<user id> (up to {hi})"
        if identities.per_user_uids
        else f"the server's uid {os.geteuid()}"
    )

    def told(box: Sandbox | None, reason: str) -> Containment:
        processes = "prlimit --nproc in the run's own user namespace" if box else "the monitor"
        return Containment(
            contained=box is not None,
            mode=settings.sandbox,
            reason=reason,
            identity=identity,
            limits="memory: the monitor ends a run whose process tree passes its limit "
            f"(sampled every {settings.sample_interval:g} s); processes: {processes}; cpu: the "
            "run is paused (SIGSTOP/SIGCONT) while over its share, checked every 0.1 s",
        )

    if settings.sandbox == "off":
        return None, identities, told(None, "CTM_SANDBOX=off")
    box = Sandbox.find(hidden=(settings.data_dir, homes))
    if box is None:
        reason = "bubblewrap (bwrap) is not installed"
    else:
        try:
            box.check(identities.trial())
        except (SandboxUnavailable, ValueError) as exc:
            box, reason = None, str(exc)
    if box is None:
        if settings.sandbox == "required":
            raise SystemExit(f"ctm: CTM_SANDBOX=required but runs cannot be contained: {reason}")
        return None, identities, told(None, reason)
    return box, identities, told(box, f"bubblewrap {box.bwrap}")


def _process_runner(
    settings: Settings, sandbox: Sandbox | None, identities: Identities | None
) -> ProcessRunner:
    """Supervised runs (default) outlive a server restart; in-process runs start a little
    faster but are stopped when the server goes."""
    from ctm_adapters.process import PsutilProcessRunner
    from ctm_adapters.supervised import SupervisedProcessRunner

    # Runs carry this id, so a restarted server finds the processes of its earlier life.
    instance = hashlib.sha256(os.path.abspath(settings.data_dir).encode()).hexdigest()[:16]
    runner_class = SupervisedProcessRunner if settings.supervised_runs else PsutilProcessRunner
    return runner_class(
        sample_interval=settings.sample_interval,
        log_cap_bytes=settings.log_max_bytes,
        instance_id=f"ctm-{instance}",
        identities=identities,
        sandbox=sandbox,
    )


def _file_store(settings: Settings) -> FileStore:
    from ctm_adapters.files import LocalFileStore

    # Under root, runs have uids of their own: they must cross (not list) the data directory
    # to reach their environment; the database, scripts and logs stay private.
    return LocalFileStore(settings.data_dir, crossable=os.geteuid() == 0)


def choose_backend(
    settings: Settings, *, sandbox: Sandbox | None = None, installer: Installer | None = None
) -> EnvironmentBackend:
    """``conda``: the conda adapter (fails without conda); ``venv``: venvs under the data
    directory; ``auto``: conda when one is found, venv otherwise. With a ``sandbox``, venv
    changes run in it as ``installer`` (conda's do not yet: see docs/security.md)."""
    from ctm_adapters.conda import CondaEnvironmentBackend, find_conda_executable
    from ctm_adapters.venv import VenvEnvironmentBackend

    if settings.backend in ("auto", "conda"):
        exe = find_conda_executable(settings.conda_exe, os.environ)
        if exe is not None:
            return CondaEnvironmentBackend(
                exe,
                default_python=settings.default_python,
                only_binary=settings.install_only_binary,
                command_timeout=settings.install_timeout_seconds,
            )
        if settings.backend == "conda":
            raise SystemExit("ctm: --backend conda but no conda, mamba or micromamba was found")
    envs = os.path.join(settings.data_dir, "envs")
    os.makedirs(envs, mode=0o755, exist_ok=True)
    return VenvEnvironmentBackend(
        envs,
        default_python=settings.default_python,
        only_binary=settings.install_only_binary,
        sandbox=sandbox,
        installer=installer,
        command_timeout=settings.install_timeout_seconds,
    )
