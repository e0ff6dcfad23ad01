"""The one table from domain error to HTTP status, and the handlers that render it."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from ctm_core import errors as e

log = logging.getLogger("ctm.http")

# Looked up along each error's MRO, so a subclass inherits its base's status.
STATUS: dict[type[e.CtmError], int] = {
    e.InvalidInput: 400,
    e.ScheduleConflict: 400,
    e.InvalidCronExpression: 400,
    e.InvalidDelay: 400,
    e.AuthenticationRequired: 401,
    e.InvalidCredentials: 401,
    e.TooManyLoginAttempts: 429,
    e.AdminRequired: 403,
    e.NotOwner: 403,
    e.CrossSiteRequest: 403,
    e.ScriptOutsideRoots: 403,
    e.UserExists: 400,
    e.EnvironmentNotFound: 404,
    e.EnvironmentExists: 400,
    e.EnvironmentInUse: 400,
    e.PackageOperationFailed: 400,
    e.BackendFailure: 502,
    e.TaskNotFound: 404,
    e.TaskExists: 400,
    e.ReuseMissingEnvironment: 400,
    e.ScriptNotFound: 400,
    e.RequirementsFailed: 400,
    e.TaskNotRunning: 400,
    e.TaskLimitReached: 403,
}


class RequestError(Exception):
    """An HTTP-level refusal (bad body, too large, wrong content type)."""

    def __init__(self, status: int, message: str, error: str | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"success": False, "message": message, **extra}
        if error is not None:
            self.body["error"] = error


def status_for(exc: e.CtmError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(exc: e.CtmError) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "message": exc.message}
    if exc.error is not None:
        body["error"] = exc.error
    body.update(exc.details)
    return body


async def ctm_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, e.CtmError)
    status = status_for(exc)
    if status >= 500:
        log.error("backend failure on %s %s: %s", request.method, request.url.path, exc)
    headers = {}
    if isinstance(exc, e.TooManyLoginAttempts):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


async def request_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse(exc.body, status_code=exc.status)


def allowed_methods(request: Request) -> str:
    """Every method any route serves at this path (routes here are one per method)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return ", ".join(sorted(methods))


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    body = {"success": False, "message": messages.get(exc.status_code, str(exc.detail))}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"success": False, "message": "Internal server error"}, status_code=500)
