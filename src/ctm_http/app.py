"""The composition root and the routes. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, tzinfo
from functools import partial
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import anyio.to_thread
import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ctm_core.auth import Authenticator, AuthPolicy
from ctm_core.environments import EnvironmentService, KeyedLocks
from ctm_core.errors import CrossSiteRequest, CtmError, InvalidInput, TaskNotFound
from ctm_core.models import Principal
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
from ctm_core.tasks import MAX_PAGE, TaskService
from ctm_http import _serialize as ser
from ctm_http._errors import (
    RequestError,
    ctm_error_handler,
    http_exception_handler,
    internal_error_handler,
    request_error_handler,
)
from ctm_http.settings import Settings, run_policy

log = logging.getLogger("ctm")
T = TypeVar("T")
COOKIE = "session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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


@attrs.define
class Services:
    """What the routes use, built once per app start by ``create_app``'s lifespan."""

    settings: Settings
    tz: tzinfo
    repo: Repository
    clock: Clock
    backend: EnvironmentBackend
    runner: ProcessRunner
    files: FileStore
    auth: Authenticator
    environments: EnvironmentService
    tasks: TaskService
    coordinator: RunCoordinator
    scheduler: Scheduler
    containment: Containment = Containment(
        contained=False, mode="off", reason="a runner given by the caller", identity="", limits=""
    )


def _timezone(name: str | None) -> tzinfo:
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo  # noqa: DTZ005 - the machine's own zone
    assert local is not None
    return local


def build_services(settings: Settings, **overrides: Any) -> Services:
    """Build every adapter and use case. ``overrides`` replace adapters by port name:
    ``repo``, ``clock``, ``backend``, ``runner``, ``files``, ``hasher``."""
    tz = _timezone(settings.timezone)
    clock: Clock = overrides.get("clock") or _system_clock()
    repo: Repository = overrides.get("repo") or _sqlite_repo(settings)
    hasher: PasswordHasher = overrides.get("hasher") or _argon2()
    containment = Containment(
        contained=False, mode=settings.sandbox, reason="a runner given by the caller",
        identity="", limits="",
    )
    sandbox = identities = None
    if "runner" not in overrides or "backend" not in overrides:
        sandbox, identities, found = _containment(settings)
        if "runner" not in overrides:
            containment = found
    backend: EnvironmentBackend = overrides.get("backend") or choose_backend(
        settings, sandbox=sandbox, installer=None if identities is None else identities.installer()
    )
    runner: ProcessRunner = overrides.get("runner") or _process_runner(
        settings, sandbox, identities
    )
    files: FileStore = overrides.get("files") or _file_store(settings)
    env_locks = KeyedLocks()
    run_limits = run_policy(settings)
    policy = AuthPolicy(
        idle_timeout=timedelta(minutes=settings.session_idle_minutes),
        absolute_lifetime=timedelta(hours=settings.session_max_hours),
    )
    auth = Authenticator(repo, hasher, clock, policy)
    coordinator = RunCoordinator(
        repo=repo, backend=backend, runner=runner, files=files, clock=clock,
        env_locks=env_locks,
        max_concurrent=settings.max_concurrent_runs, stop_grace=settings.stop_grace_seconds,
        policy=run_limits,
    )
    # The backends apply settings.default_python themselves (a version, or for venv a path).
    environments = EnvironmentService(
        backend, repo, env_locks, is_task_active=coordinator.is_active
    )
    scheduler = Scheduler(
        repo=repo, clock=clock, coordinator=coordinator, files=files, tz=tz,
        retention_days=settings.retention_days,
        on_maintenance=auth.purge_sessions,
        on_error=lambda exc: log.error("scheduler tick failed", exc_info=exc),
    )
    tasks = TaskService(
        repo=repo, backend=backend, environments=environments, coordinator=coordinator,
        files=files, clock=clock, tz=tz, env_locks=env_locks,
        script_roots=settings.script_roots, on_change=scheduler.wake,
        retention_days=settings.retention_days, policy=run_limits,
    )
    return Services(
        settings=settings, tz=tz, repo=repo, clock=clock, backend=backend, runner=runner,
        files=files, auth=auth, environments=environments, tasks=tasks,
        coordinator=coordinator, scheduler=scheduler, containment=containment,
    )


def _system_clock() -> Clock:
    from ctm_adapters.clock import SystemClock

    return SystemClock()


def _sqlite_repo(settings: Settings) -> Repository:
    from ctm_adapters.sqlite import SqliteRepository

    os.makedirs(settings.data_dir, mode=0o700, exist_ok=True)
    return SqliteRepository(os.path.join(settings.data_dir, "ctm.sqlite3"))


def _argon2() -> PasswordHasher:
    from ctm_adapters.passwords import Argon2PasswordHasher

    return Argon2PasswordHasher()


def _containment(settings: Settings) -> tuple[Any, Any, Containment]:
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
        processes = (
            "prlimit --nproc in the run's own user namespace" if box else "the monitor"
        )
        return Containment(
            contained=box is not None, mode=settings.sandbox, reason=reason, identity=identity,
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


def _process_runner(settings: Settings, sandbox: Any, identities: Any) -> ProcessRunner:
    """Supervised runs (default) outlive a server restart and cost ~60 ms more to start;
    in-process runs start in a few ms but are stopped when the server goes."""
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
    settings: Settings, *, sandbox: Any = None, installer: Any = None
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
                exe, default_python=settings.default_python,
                only_binary=settings.install_only_binary,
            )
        if settings.backend == "conda":
            raise SystemExit("ctm: --backend conda but no conda, mamba or micromamba was found")
    envs = os.path.join(settings.data_dir, "envs")
    os.makedirs(envs, mode=0o755, exist_ok=True)
    return VenvEnvironmentBackend(
        envs, default_python=settings.default_python, only_binary=settings.install_only_binary,
        sandbox=sandbox, installer=installer,
    )


def _write_admin_password(data_dir: str, password: str) -> str:
    path = os.path.join(data_dir, "initial-admin-password")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.chmod(path, 0o600)
    return path


# --- request helpers ---------------------------------------------------------------------------


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a quick blocking use case (a read, a login) off the event loop."""
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


SLOW_CALLS = 32
QUICK_CALLS = 16
"""Threads for quick calls (``call``: reads, logins, each request's authentication) instead of
anyio's default 40: more only queue for the GIL and SQLite, and each holds a stack and malloc
memory (benchmarks/bench_serve_memory.py: ~38 threads at most under load.py instead of ~76)."""


async def call_slow(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a use case that may take long (conda, pip, stopping a run) with threads of its own
    budget, so that however many are waiting, reads and logins still get a thread."""
    limiter: anyio.CapacityLimiter = request.app.state.slow_limiter
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter)


async def read_json(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413/415 ``RequestError``."""
    limit = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "Request body too large", f"At most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "Request body too large", f"At most {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if not required:
            return {}
        raise RequestError(400, "Request body must be a JSON object", "The body is empty")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(
            415, "Request body must be sent as application/json",
            f"Content-Type was {ctype or 'missing'!r}",
        )
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestError(
            400, "Request body must be a JSON object", f"Invalid JSON: {exc}"[:300]
        ) from None
    if not isinstance(data, dict):
        raise RequestError(
            400, "Request body must be a JSON object", f"Got a JSON {type(data).__name__}"
        )
    try:  # JSON admits lone surrogates ("\ud800"), which no file, database or tool takes
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(
            400, "Request body must be a JSON object", "Strings must be valid Unicode text"
        ) from None
    return data


def _cookie_header(token: str, max_age: int, secure: bool) -> str:
    parts = [f"{COOKIE}={token}", "Path=/", "HttpOnly", "SameSite=Lax", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    s = services(request).settings
    max_age = int(s.session_idle_minutes * 60)
    response.headers.append("set-cookie", _cookie_header(token, max_age, s.secure_cookies))


def check_same_site(request: Request) -> None:
    """Refuse a state-changing request that a browser marks as cross-site."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise CrossSiteRequest()
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin.lower() not in {f"http://{host}".lower(), f"https://{host}".lower()}:
            raise CrossSiteRequest()


Handler = Callable[[Request, Principal], Awaitable[Response]]


def authenticated(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Require a valid session, renew it, and hand the caller to the route."""

    async def route(request: Request) -> Response:
        check_same_site(request)
        token = request.cookies.get(COOKIE)
        principal = await call(services(request).auth.authenticate, token)
        try:
            response = await handler(request, principal)
        except CtmError as exc:  # an error answer renews the session too
            response = await ctm_error_handler(request, exc)
        except RequestError as exc:
            response = await request_error_handler(request, exc)
        assert token is not None
        set_session_cookie(response, request, token)
        return response

    route.__name__ = handler.__name__
    return route


def ok(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


# --- auth routes -------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    check_same_site(request)
    body = await read_json(request)
    svc = services(request)
    client = request.client.host if request.client else "unknown"
    token, user = await call(
        svc.auth.login, body.get("username"), body.get("password"), client
    )
    response = ok(
        {
            "success": True,
            "message": "Login successful",
            "user": {"username": user.username, "is_admin": user.is_admin},
        }
    )
    set_session_cookie(response, request, token)
    return response


async def logout(request: Request) -> Response:
    check_same_site(request)
    await call(services(request).auth.logout, request.cookies.get(COOKIE))
    response = ok({"success": True, "message": "Logout successful"})
    secure = services(request).settings.secure_cookies
    response.headers.append("set-cookie", _cookie_header("", 0, secure))
    return response


@authenticated
async def create_user(request: Request, actor: Principal) -> Response:
    from ctm_core.auth import require_admin

    require_admin(actor)
    body = await read_json(request)
    user = await call(
        services(request).auth.create_user,
        actor, body.get("username"), body.get("password"), body.get("is_admin", False),
    )
    return ok(
        {
            "success": True,
            "message": "User created successfully",
            "user": {"username": user.username, "is_admin": user.is_admin},
        },
        201,
    )


@authenticated
async def whoami(request: Request, actor: Principal) -> Response:
    body: dict[str, object] = {
        "success": True, "user": {"username": actor.username, "is_admin": actor.is_admin}
    }
    if actor.is_admin:
        body["containment"] = services(request).containment.as_json()
    return ok(body)


# --- environment routes ------------------------------------------------------------------------


@authenticated
async def list_environments(request: Request, actor: Principal) -> Response:
    svc = services(request)

    def load() -> list[dict[str, Any]]:
        envs = svc.environments.list_environments()
        disk = svc.environments.disk_usage().per_environment
        return [ser.environment_summary(e, disk.get(e.name), svc.tz) for e in envs]

    return ok(await call(load))


@authenticated
async def environment_stats(request: Request, actor: Principal) -> Response:
    svc = services(request)
    stats = await call(svc.environments.stats)
    return ok(ser.environment_stats(stats, svc.tz))


@authenticated
async def get_environment(request: Request, actor: Principal) -> Response:
    svc = services(request)
    detail = await call(svc.environments.detail, request.path_params["name"])
    return ok(ser.environment_detail(detail, svc.tz))


@authenticated
async def create_environment(request: Request, actor: Principal) -> Response:
    svc = services(request)
    body = await read_json(request)
    env = await call_slow(
        request, svc.environments.create,
        actor, body.get("name"), body.get("python_version"), body.get("packages"),
    )
    return ok(
        {
            "success": True,
            "message": "Environment created successfully",
            "environment": {
                "name": env.name,
                "created_at": ser.fmt_time(env.created_at, svc.tz),
                "python_version": env.python_version,
            },
        },
        201,
    )


@authenticated
async def rename_environment(request: Request, actor: Principal) -> Response:
    svc = services(request)
    name = request.path_params["name"]
    body = await read_json(request)
    if "new_name" not in body:
        raise InvalidInput("new_name", "'new_name' is required")
    count = await call_slow(request, svc.environments.rename, actor, name, body.get("new_name"))
    return ok(
        {
            "success": True,
            "message": "Environment renamed successfully",
            "old_name": name,
            "new_name": body["new_name"],
            "updated_tasks_count": count,
        }
    )


@authenticated
async def delete_environment(request: Request, actor: Principal) -> Response:
    name = request.path_params["name"]
    await call_slow(request, services(request).environments.delete, actor, name)
    return Response(status_code=204)


@authenticated
async def install_packages(request: Request, actor: Principal) -> Response:
    name = request.path_params["name"]
    body = await read_json(request)
    specs = await call_slow(
        request, services(request).environments.install, actor, name, body.get("packages")
    )
    return ok(
        {
            "success": True,
            "message": "Packages installed successfully",
            "environment": name,
            "installed_packages": specs,
        }
    )


@authenticated
async def remove_packages(request: Request, actor: Principal) -> Response:
    name = request.path_params["name"]
    body = await read_json(request)
    names = await call_slow(
        request, services(request).environments.remove, actor, name, body.get("packages")
    )
    return ok(
        {
            "success": True,
            "message": "Packages removed successfully",
            "environment": name,
            "removed_packages": names,
        }
    )


# --- task routes -------------------------------------------------------------------------------


def _task_id(request: Request) -> int:
    """Task ids are digits only (so /api/tasks/stats is never an id); huge ones exist nowhere."""
    value: int = request.path_params["task_id"]
    if value >= 2**63:
        raise TaskNotFound(value)
    return value


@authenticated
async def create_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    body = await read_json(request)
    created = await call_slow(request, svc.tasks.create_task, actor, body)
    return ok(
        {
            "success": True,
            "message": "Task scheduled successfully",
            "task": ser.task_body(created.task, svc.tz, svc.tasks.policy),
            "environment_message": created.environment_message,
        },
        201,
    )


@authenticated
async def list_tasks(request: Request, actor: Principal) -> Response:
    svc = services(request)

    def load() -> list[dict[str, Any]]:
        policy = svc.tasks.policy
        return [
            ser.task_list_item(task, last, svc.tz, policy)
            for task, last in svc.tasks.list_with_latest()
        ]

    return ok(await call(load))


def _page(limit: str | None, before: str | None, *, name: str = "limit") -> dict[str, Any]:
    """The keywords of a paged read from its query parameters."""
    page: dict[str, Any] = {}
    if limit is not None:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
            raise InvalidInput(name, f"'{name}' must be a whole number from 1 to {MAX_PAGE}")
        page["limit"] = int(limit)
    if before is not None:
        page["before"] = before
    return page


@authenticated
async def get_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    limit = request.query_params.get("limit")
    before = request.query_params.get("before")
    legacy = request.query_params.get("history_limit")  # the older name of limit
    if limit is None and legacy is not None:
        page = _page(legacy, before, name="history_limit")
    else:
        page = _page(limit, before)
    detail = await call(svc.tasks.detail, _task_id(request), **page)
    return ok(ser.task_detail(detail, svc.tz, svc.tasks.policy))


@authenticated
async def stop_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    task_id = _task_id(request)
    previous = await call_slow(request, svc.tasks.stop_task, actor, task_id)
    task = await call(svc.tasks.get_task, task_id)
    return ok(
        {
            "success": True,
            "message": "Task stopped successfully",
            "task": {
                "task_id": task.id,
                "task_name": task.name,
                "status": task.status.value,
                "previous_status": previous.value,
            },
        }
    )


@authenticated
async def delete_task(request: Request, actor: Principal) -> Response:
    await call_slow(request, services(request).tasks.delete_task, actor, _task_id(request))
    return Response(status_code=204)


@authenticated
async def task_stats(request: Request, actor: Principal) -> Response:
    svc = services(request)
    stats = await call(svc.tasks.stats)
    return ok(ser.task_stats(stats, svc.tz))


@authenticated
async def task_history(request: Request, actor: Principal) -> Response:
    svc = services(request)
    paging = _page(request.query_params.get("limit"), request.query_params.get("before"))
    page = await call(svc.tasks.history, **paging)
    return ok(
        {
            "status": "success",
            "data": [ser.history_item(e, n, svc.tz) for e, n in page.items],
            "next_before": page.next_before,
        }
    )


ROUTES = [
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/create_user", create_user, methods=["POST"]),
    Route("/api/me", whoami, methods=["GET"]),
    Route("/api/conda/environments", list_environments, methods=["GET"]),
    Route("/api/conda/stats", environment_stats, methods=["GET"]),
    Route("/api/conda/environment", create_environment, methods=["POST"]),
    Route("/api/conda/environment/{name}", get_environment, methods=["GET"]),
    Route("/api/conda/environment/{name}", rename_environment, methods=["PUT"]),
    Route("/api/conda/environment/{name}", delete_environment, methods=["DELETE"]),
    Route("/api/conda/environment/{name}/packages", install_packages, methods=["POST"]),
    Route("/api/conda/environment/{name}/packages", remove_packages, methods=["DELETE"]),
    Route("/api/tasks", create_task, methods=["POST"]),
    Route("/api/tasks", list_tasks, methods=["GET"]),
    Route("/api/tasks/stats", task_stats, methods=["GET"]),
    Route("/api/tasks/history", task_history, methods=["GET"]),
    Route("/api/tasks/{task_id:int}", get_task, methods=["GET"]),
    Route("/api/tasks/{task_id:int}", delete_task, methods=["DELETE"]),
    Route("/api/tasks/{task_id:int}/stop", stop_task, methods=["POST"]),
]


def create_app(settings: Settings, **overrides: Any) -> Starlette:
    """The one composition root. Adapters are built in the lifespan, not here; ``overrides``
    replace adapters by port name (``repo``, ``clock``, ``backend``, ``runner``, ``files``,
    ``hasher``), as tests and library users do."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        svc = await anyio.to_thread.run_sync(partial(build_services, settings, **overrides))
        if svc.containment.contained:
            log.info(
                "ctm: runs are contained (%s; identity: %s; limits: %s)",
                svc.containment.reason, svc.containment.identity, svc.containment.limits,
            )
        elif "runner" not in overrides:
            log.warning(
                "ctm: runs are NOT contained: %s. Any user's script can read and change the "
                "data directory (database, sessions, other users' scripts and logs). "
                "Install bubblewrap or see docs/security.md.", svc.containment.reason,
            )
        generated = await call(svc.auth.bootstrap_admin, settings.admin_password)
        if generated is not None:
            path = _write_admin_password(settings.data_dir, generated)
            print(  # noqa: T201 - printed once, on purpose, for the operator
                f"ctm: created user 'admin' with password {generated} (also in {path})",
                flush=True,
            )

        def kill_stale() -> None:  # after adoption: what is left cannot be followed
            stale = svc.runner.kill_stale_runs(min(settings.stop_grace_seconds, 5.0))
            if stale:
                log.warning("ctm: stopped %d processes left by runs of a previous server", stale)

        await call(svc.scheduler.recover, kill_stale)
        app.state.services = svc
        app.state.slow_limiter = anyio.CapacityLimiter(SLOW_CALLS)
        anyio.to_thread.current_default_thread_limiter().total_tokens = QUICK_CALLS
        tool = getattr(svc.backend, "tool", None)  # venv: uv or pip, and why
        log.info(
            "ctm listening on http://%s:%s, data directory %s, backend %s%s",
            settings.host, settings.port, os.path.abspath(settings.data_dir), svc.backend.kind,
            f" ({tool})" if tool else "",
        )
        loop_task = asyncio.create_task(svc.scheduler.run(), name="ctm-scheduler")
        try:
            yield
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            await call(svc.coordinator.stop_all, min(settings.stop_grace_seconds, 5.0))
            for part in (svc.runner, svc.repo):
                close = getattr(part, "close", None)
                if close is not None:
                    await call(close)

    from ctm_http import dashboard, openapi

    app = Starlette(
        routes=[*ROUTES, *openapi.routes(), *dashboard.routes()],
        lifespan=lifespan,
        exception_handlers={
            CtmError: ctm_error_handler,
            RequestError: request_error_handler,
            HTTPException: http_exception_handler,
            Exception: internal_error_handler,
        },
    )
    return app
