"""The one table from domain error to HTTP status, and the handlers that render it."""

from __future__ import annotations

import logging
from typing import Any

import attrs
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
    e.UserNotFound: 404,
    e.LastAdmin: 409,
    e.UserOwnsTasks: 409,
    e.WrongPassword: 403,
    e.TokenNotFound: 404,
    e.StorageUnavailable: 503,
    e.EnvironmentNotFound: 404,
    e.EnvironmentExists: 400,
    e.EnvironmentInUse: 400,
    e.PackageOperationFailed: 400,
    e.BackendFailure: 502,
    e.TaskNotFound: 404,
    e.ExecutionNotFound: 404,
    e.TaskExists: 400,
    e.ReuseMissingEnvironment: 400,
    e.ScriptNotFound: 400,
    e.RequirementsFailed: 400,
    e.TaskNotRunning: 400,
    e.TaskAlreadyActive: 409,
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


@attrs.frozen
class HttpError:
    """An error the HTTP layer answers itself (request body, routing, unhandled exception):
    its status and message, for the handlers and the description alike."""

    name: str
    status: int
    message: str
    description: str = ""
    with_error: bool = False
    """Whether the body has an ``error`` (the details of a refused request body)."""

    def refuse(self, error: str) -> RequestError:
        """The exception that answers this error, with ``error`` as details."""
        return RequestError(self.status, self.message, error)


INVALID_BODY = HttpError(
    "InvalidBody",
    400,
    "Request body must be a JSON object",
    "No body, invalid JSON, or JSON that is not an object",
    with_error=True,
)
BODY_TOO_LARGE = HttpError("BodyTooLarge", 413, "Request body too large", with_error=True)
UNSUPPORTED_MEDIA_TYPE = HttpError(
    "UnsupportedMediaType", 415, "Request body must be sent as application/json", with_error=True
)
ROUTE_NOT_FOUND = HttpError(
    "RouteNotFound", 404, "Not found", "No route for this path (e.g. a path parameter holding '/')"
)
METHOD_NOT_ALLOWED = HttpError("MethodNotAllowed", 405, "Method not allowed")
INTERNAL_ERROR = HttpError(
    "InternalError",
    500,
    "Internal server error",
    "The cause is in the server log, never in the body",
)
TOO_MANY_LOG_STREAMS = HttpError(
    "TooManyLogStreams",
    503,
    "Too many live log streams",
    "Every live log stream the server allows is open: try again later, or read the log as text",
    with_error=True,
)
HTTP_ERRORS = (
    INVALID_BODY,
    BODY_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    ROUTE_NOT_FOUND,
    METHOD_NOT_ALLOWED,
    INTERNAL_ERROR,
    TOO_MANY_LOG_STREAMS,
)


def status_of(cls: type[e.CtmError]) -> int:
    """The status of an error class: the table's entry for it or its nearest base."""
    for klass in cls.__mro__:
        if klass in STATUS:
            return STATUS[klass]
    return INTERNAL_ERROR.status


def error_body(exc: e.CtmError) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "message": exc.message}
    if exc.error is not None:
        body["error"] = exc.error
    body.update(exc.details)
    return body


async def ctm_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, e.CtmError)
    status = status_of(type(exc))
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
    messages = {x.status: x.message for x in (ROUTE_NOT_FOUND, METHOD_NOT_ALLOWED)}
    body = {"success": False, "message": messages.get(exc.status_code, str(exc.detail))}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"success": False, "message": INTERNAL_ERROR.message}, status_code=INTERNAL_ERROR.status
    )
