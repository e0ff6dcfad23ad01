"""The routes, and the Starlette app over the composition root (``ctm_adapters.bootstrap``).
Nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Unpack

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ctm_adapters.bootstrap import (
    Ports,
    build_services,
    start_services,
    stop_services,
    write_admin_password,
)
from ctm_adapters.settings import Settings
from ctm_core.commands import (
    Credentials,
    NewEnvironment,
    NewTask,
    NewUser,
    PackageChange,
    Page,
    RenameEnvironment,
)
from ctm_core.errors import CtmError
from ctm_core.models import Principal, TaskStatus
from ctm_http import _log_routes as log_routes
from ctm_http import _serialize as ser
from ctm_http import _user_routes as user_routes
from ctm_http._errors import (
    RequestError,
    ctm_error_handler,
    http_exception_handler,
    internal_error_handler,
    request_error_handler,
)
from ctm_http._request import (
    QUICK_CALLS,
    SLOW_CALLS,
    authenticated,
    call,
    call_login,
    call_slow,
    check_same_site,
    client_of,
    cookie_header,
    ok,
    read_json,
    services,
    session_token,
    set_session_cookie,
    task_id_of,
)

log = logging.getLogger("ctm")


# --- auth routes -------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    check_same_site(request)
    body = await read_json(request)
    svc = services(request)
    credentials = Credentials.from_json(body)
    token, user = await call_login(request, svc.auth.login, credentials, client_of(request))
    response = ok(ser.logged_in(user))
    set_session_cookie(response, request, token)
    return response


async def logout(request: Request) -> Response:
    check_same_site(request)
    secure = services(request).settings.secure_cookies
    await call(services(request).auth.logout, session_token(request), client_of(request))
    response = ok(ser.logged_out())
    response.headers.append("set-cookie", cookie_header("", 0, secure))
    return response


@authenticated
async def create_user(request: Request, actor: Principal) -> Response:
    from ctm_core.auth import require_admin

    require_admin(actor)
    body = await read_json(request)
    user = await call(services(request).auth.create_user, actor, NewUser.from_json(body))
    return ok(ser.user_created(user), 201)


@authenticated
async def whoami(request: Request, actor: Principal) -> Response:
    return ok(ser.me(actor, services(request).containment.as_json()))


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
    env = await call_slow(request, svc.environments.create, actor, NewEnvironment.from_json(body))
    return ok(ser.environment_created(env, svc.tz), 201)


@authenticated
async def rename_environment(request: Request, actor: Principal) -> Response:
    svc = services(request)
    name = request.path_params["name"]
    body = await read_json(request)
    command = RenameEnvironment.from_json(name, body)
    count = await call_slow(request, svc.environments.rename, actor, command)
    return ok(ser.environment_renamed(name, command.new_name, count))


@authenticated
async def delete_environment(request: Request, actor: Principal) -> Response:
    name = request.path_params["name"]
    await call_slow(request, services(request).environments.delete, actor, name)
    return Response(status_code=204)


@authenticated
async def install_packages(request: Request, actor: Principal) -> Response:
    name = request.path_params["name"]
    body = await read_json(request)
    change = PackageChange.from_json(name, body)
    specs = await call_slow(request, services(request).environments.install, actor, change)
    return ok(ser.packages_installed(name, specs))


@authenticated
async def remove_packages(request: Request, actor: Principal) -> Response:
    name = request.path_params["name"]
    body = await read_json(request)
    change = PackageChange.from_json(name, body, names_only=True)
    names = await call_slow(request, services(request).environments.remove, actor, change)
    return ok(ser.packages_removed(name, names))


# --- task routes -------------------------------------------------------------------------------


@authenticated
async def create_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    body = await read_json(request)
    created = await call_slow(request, svc.tasks.create_task, actor, NewTask.from_json(body))
    return ok(ser.task_created(created, svc.tz, svc.tasks.policy), 201)


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


@authenticated
async def get_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    limit = request.query_params.get("limit")
    before = request.query_params.get("before")
    legacy = request.query_params.get("history_limit")  # the older name of limit
    if limit is None and legacy is not None:
        page = Page.from_query(legacy, before, name="history_limit")
    else:
        page = Page.from_query(limit, before)
    detail = await call(svc.tasks.detail, task_id_of(request), limit=page.limit, before=page.before)
    return ok(ser.task_detail(detail, svc.tz, svc.tasks.policy))


@authenticated
async def stop_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    task_id = task_id_of(request)
    task = await call_slow(request, svc.tasks.stop_task, actor, task_id)
    return ok(ser.task_stopped(task, TaskStatus.RUNNING))  # only a running task stops


@authenticated
async def pause_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    task = await call(svc.tasks.pause_task, actor, task_id_of(request))
    return ok(ser.task_paused(task, svc.tz, svc.tasks.policy))


@authenticated
async def resume_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    task = await call(svc.tasks.resume_task, actor, task_id_of(request))
    return ok(ser.task_paused(task, svc.tz, svc.tasks.policy))


@authenticated
async def run_task(request: Request, actor: Principal) -> Response:
    svc = services(request)
    execution = await call(svc.tasks.run_now, actor, task_id_of(request))
    return ok(ser.run_queued(execution), 201)


@authenticated
async def delete_task(request: Request, actor: Principal) -> Response:
    await call_slow(request, services(request).tasks.delete_task, actor, task_id_of(request))
    return Response(status_code=204)


@authenticated
async def task_stats(request: Request, actor: Principal) -> Response:
    svc = services(request)
    stats = await call(svc.tasks.stats)
    return ok(ser.task_stats(stats, svc.tz))


@authenticated
async def task_history(request: Request, actor: Principal) -> Response:
    svc = services(request)
    paging = Page.from_query(request.query_params.get("limit"), request.query_params.get("before"))
    page = await call(svc.tasks.history, limit=paging.limit, before=paging.before)
    return ok(ser.history_page(page, svc.tz))


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
    Route("/api/tasks/{task_id:int}/pause", pause_task, methods=["POST"]),
    Route("/api/tasks/{task_id:int}/resume", resume_task, methods=["POST"]),
    Route("/api/tasks/{task_id:int}/run", run_task, methods=["POST"]),
    *user_routes.ROUTES,
    *log_routes.ROUTES,
]


def create_app(settings: Settings, **ports: Unpack[Ports]) -> Starlette:
    """The HTTP service over ``ctm_adapters.bootstrap``. Adapters are built in the lifespan,
    not here; ``ports`` replace adapters by port name, as tests do."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        svc = await anyio.to_thread.run_sync(partial(build_services, settings, **ports))
        if svc.containment.contained:
            log.info(
                "ctm: runs are contained (%s; identity: %s; limits: %s)",
                svc.containment.reason,
                svc.containment.identity,
                svc.containment.limits,
            )
        elif "runner" not in ports:
            log.warning(
                "ctm: runs are NOT contained: %s. Any user's script can read and change the "
                "data directory (database, sessions, other users' scripts and logs). "
                "Install bubblewrap or see docs/security.md.",
                svc.containment.reason,
            )
        generated = await call(svc.auth.bootstrap_admin, settings.admin_password)
        if generated is not None:
            path = write_admin_password(settings.data_dir, generated)
            print(  # noqa: T201 - printed once, on purpose, for the operator
                f"ctm: created user 'admin' with password {generated} (also in {path})",
                flush=True,
            )
        await call(start_services, svc)
        app.state.services = svc
        app.state.slow_limiter = anyio.CapacityLimiter(SLOW_CALLS)
        app.state.login_limiter = anyio.CapacityLimiter(settings.login_checks)
        anyio.to_thread.current_default_thread_limiter().total_tokens = QUICK_CALLS
        tool = getattr(svc.backend, "tool", None)  # venv: uv or pip, and why
        log.info(
            "ctm listening on http://%s:%s, data directory %s, backend %s%s",
            settings.host,
            settings.port,
            os.path.abspath(settings.data_dir),
            svc.backend.kind,
            f" ({tool})" if tool else "",
        )
        loop_task = asyncio.create_task(svc.scheduler.run(), name="ctm-scheduler")
        try:
            yield
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            await call(stop_services, svc)

    from ctm_http import _hosts, dashboard, openapi

    app = Starlette(
        routes=[*ROUTES, *openapi.routes(), *dashboard.routes()],
        middleware=[_hosts.middleware(settings)],
        lifespan=lifespan,
        exception_handlers={
            CtmError: ctm_error_handler,
            RequestError: request_error_handler,
            HTTPException: http_exception_handler,
            Exception: internal_error_handler,
        },
    )
    return app
