"""The API description: ``GET /openapi.json`` (OpenAPI 3.1) and ``GET /docs`` (plain HTML).

The description is Python data kept next to the routes: one ``_Op`` per route of ``app.ROUTES``
(and the dashboard's ``/``) names its bodies and the domain errors it can raise. Error
responses are derived from those classes through the one error table (``_errors.STATUS``), so a
change of a status there changes the description too; patterns come from the validators'
regexes. ``tests/unit/test_openapi.py`` checks that no route, method or reachable status is
missing (with a call graph of each handler) and that docs/api.md is generated from it:
``python -m ctm_http.openapi markdown > docs/api.md``.

Both routes answer without a session, on purpose: the description is the public contract of
the API (the same text as docs/api.md), it holds no data, and tools (schemathesis, client
generators, a liveness probe) can read it without logging in. Every route it describes still
needs its session.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ctm_core import errors as e
from ctm_core.models import ExecutionStatus, TaskStatus
from ctm_core.schedule import MAX_CRON_LENGTH, MAX_DELAY_SECONDS
from ctm_core.tasks import (
    DEFAULT_PAGE,
    MAX_CPU_LIMIT,
    MAX_MEMORY_LIMIT_MB,
    MAX_PAGE,
    MAX_PROCESSES,
    MAX_REQUIREMENTS_BYTES,
    MAX_SCRIPT_BYTES,
    MAX_TASK_NAME,
    MAX_TIMEOUT,
)
from ctm_core.validation import (
    ENV_NAME_RE,
    MAX_SPEC_LENGTH,
    MAX_SPECS,
    PACKAGE_NAME_RE,
    SPEC_RE,
    USERNAME_RE,
)
from ctm_http._errors import STATUS

Schema = dict[str, Any]

# --- schema helpers ----------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None,
         **extra: Any) -> Schema:
    """An object with these required and optional keys; other keys are allowed (contract.md:
    "Extra keys are allowed; renamed or missing keys are not")."""
    schema: Schema = {"type": "object", "properties": {**required, **(optional or {})}}
    if required:
        schema["required"] = list(required)
    schema.update(extra)
    return schema


def _null(schema: Schema) -> Schema:
    if set(schema) <= {"type", "pattern", "minimum", "format", "description", "examples"} and \
            isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _const(value: Any) -> Schema:
    return {"const": value}


def _pattern(regex: str) -> str:
    return f"^(?:{regex})$"


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TRUE: Schema = _const(True)
TIME: Schema = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
    "description": "YYYY-MM-DD HH:MM:SS in the server's time zone",
}
DATE: Schema = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
STR_LIST: Schema = {"type": "array", "items": STR}
ENV_NAME: Schema = {
    "type": "string",
    "pattern": _pattern(ENV_NAME_RE.pattern),
    "description": "1-64 characters of A-Z a-z 0-9 _ . -, not starting with '-' or '.', "
    "not 'base' or 'root'",
}
SPECS: Schema = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_SPECS,
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_SPEC_LENGTH,
              "pattern": _pattern(SPEC_RE.pattern)},
    "description": "Package specs: a name of A-Z a-z 0-9 _ . - starting with a letter or digit, "
    "optionally followed by version constraints (==1.2, >=3.4.0, =1.2.*, <2,>=1, !=1.0)",
}
PACKAGE_NAMES: Schema = {
    **SPECS,
    "items": {**SPECS["items"], "pattern": _pattern(PACKAGE_NAME_RE.pattern)},
    "description": "Package names (no version constraints)",
}

# --- component schemas -------------------------------------------------------------------------

_TASK_STATUS = [s.value for s in TaskStatus]
_EXECUTION_STATUS = [s.value for s in ExecutionStatus]

_TASK_FIELDS: dict[str, Schema] = {
    "task_id": INT,
    "task_name": STR,
    "script_path": {**STR, "description": "Path of the file that runs"},
    "conda_env": STR,
    "status": {"enum": _TASK_STATUS},
    "created_at": TIME,
    "cron_expression": _null(STR),
    "next_run_time": _null(TIME),
    "last_run_time": _null(TIME),
    "last_run_duration": _null(NUM),
    "requirements": _null(STR),
}
_TASK_EXTRA: dict[str, Schema] = {
    "delay_seconds": _null(NUM),
    "timeout_seconds": _null(NUM),
    "owner_id": _null(INT),
    "memory_limit_mb": _null({**NUM, "description": "Memory limit of a run's whole process "
                              "tree, MB: the task's own or the server's default; null: none"}),
    "max_processes": _null({**INT, "description": "Processes a run may have at once: the "
                            "task's own or the server's default; null: no limit"}),
    "cpu_limit": _null({**NUM, "description": "CPU cores a run may use: the task's own or the "
                        "server's default; null: no limit"}),
    "network": {**BOOL, "description": "Whether runs have network access (the server's "
                "setting, unless the task turned it off)"},
}

_EXECUTION = _obj(
    {
        "execution_id": STR,
        "start_time": _null(TIME),
        "end_time": _null(TIME),
        "status": {"enum": _EXECUTION_STATUS},
        "duration": _null(NUM),
        "peak_memory": _null({**NUM, "description": "MB"}),
        "avg_memory": _null({**NUM, "description": "MB"}),
        "exit_code": _null({**INT, "description": "Negative signal number when killed"}),
    },
    {
        "scheduled_time": _null(TIME),
        "note": _null(STR),
        # Only on ``skipped`` records, which stand for consecutive skipped occurrences.
        "skip_count": {**INT, "description": "Skipped records only: how many consecutive "
                       "occurrences were skipped while the task still ran"},
        "first_skipped_at": _null({**TIME, "description": "Skipped records only: the first "
                                   "skipped occurrence"}),
        "last_skipped_at": _null({**TIME, "description": "Skipped records only: the last "
                                  "skipped occurrence"}),
    },
)

COMPONENT_SCHEMAS: dict[str, Schema] = {
    "User": _obj({"username": STR, "is_admin": BOOL}),
    "LoginRequest": _obj({"username": STR, "password": STR}),
    "CreateUserRequest": _obj(
        {
            "username": {"type": "string", "pattern": _pattern(USERNAME_RE.pattern)},
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
        },
        {"is_admin": {**BOOL, "default": False}},
    ),
    "EnvironmentSummary": _obj(
        {"name": STR, "python_version": _null(STR), "packages": STR_LIST,
         "created_at": _null(TIME)},
        {"package_count": INT, "disk_usage": _null({**NUM, "description": "GB"})},
    ),
    "EnvironmentDetail": _obj({
        "name": STR,
        "python_version": _null(STR),
        "created_at": _null(TIME),
        "usage_stats": _obj({
            "total_tasks": INT,
            "success_rate": {**NUM, "description": "Percent of finished executions completed"},
            "avg_execution_time": {**NUM, "description": "Seconds"},
            "disk_usage": {**NUM, "description": "GB"},
        }),
        "packages": {"type": "array", "items": _obj({"name": STR, "version": STR})},
    }),
    "EnvironmentStats": _obj({
        "total_environments": INT,
        "active_environments": INT,
        "total_disk_usage": {**NUM, "description": "GB, a hard-linked file counted once"},
        "latest_created": _null(_obj({"name": STR, "created_at": _null(TIME)})),
        "environment_usage": {
            "type": "array",
            "items": _obj({"name": STR, "usage_percent": INT}),
            "description": "Share of all tasks per environment; integer percents adding up "
            "to 100; environments without a task left out",
        },
        "package_stats": {"type": "array", "items": _obj({"name": STR, "package_count": INT})},
    }),
    "CreateEnvironmentRequest": _obj(
        {"name": ENV_NAME},
        {
            "python_version": _null({"type": "string", "pattern": r"^\d+(\.\d+)*$",
                                     "maxLength": 16}),
            "packages": _null(SPECS),
        },
    ),
    "Task": _obj(_TASK_FIELDS, _TASK_EXTRA),
    "TaskListItem": _obj(
        {
            **_TASK_FIELDS,
            "next_run_time_formatted": _null(TIME),
            "last_run_time_formatted": _null(TIME),
            "last_run_duration_formatted": _null(NUM),
        },
        {**_TASK_EXTRA, "completed_at": _null(TIME)},
    ),
    "TaskWithExecutions": _obj(
        {**_TASK_FIELDS, "last_execution_id": _null(STR), "executions": STR_LIST},
        _TASK_EXTRA,
    ),
    "Execution": _EXECUTION,
    "ExecutionWithLogs": {
        "allOf": [_ref("Execution"), _obj({"logs": STR})],
    },
    "CreateTaskRequest": _obj(
        {
            "script": {
                "type": "string", "minLength": 1, "maxLength": MAX_SCRIPT_BYTES,
                "description": "A single line ending in .py is an absolute path to a file to "
                "run; anything else is the script's content (at most 1 MiB)",
            },
            "conda_env": ENV_NAME,
        },
        {
            "task_name": _null({"type": "string", "minLength": 1, "maxLength": MAX_TASK_NAME,
                                "description": "Unique; defaults to the script's file name"}),
            "requirements": _null({"type": "string", "maxLength": MAX_REQUIREMENTS_BYTES,
                                   "description": "requirements.txt text (at most 64 KiB)"}),
            "reuse_env": _null({**BOOL, "default": False}),
            "cron_expression": _null({
                "type": "string", "minLength": 1, "maxLength": MAX_CRON_LENGTH,
                "description": "5 fields, an @hourly-style macro, or 6 fields with seconds "
                "last, in the server's time zone. Not together with delay_seconds",
            }),
            "delay_seconds": _null({**NUM, "minimum": 0, "maximum": MAX_DELAY_SECONDS}),
            "timeout_seconds": _null({**NUM, "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT,
                                      "description": "Absent: the server's default"}),
            "memory_limit_mb": _null({
                **NUM, "exclusiveMinimum": 0, "maximum": MAX_MEMORY_LIMIT_MB,
                "description": "Memory limit of each run's whole process tree, MB (at most the "
                "server's maximum). Absent: the server's default"}),
            "max_processes": _null({
                **INT, "minimum": 1, "maximum": MAX_PROCESSES,
                "description": "Processes each run may have at once (at most the server's "
                "maximum). Absent: the server's default"}),
            "cpu_limit": _null({
                **NUM, "exclusiveMinimum": 0, "maximum": MAX_CPU_LIMIT,
                "description": "CPU cores each run may use (at most the server's maximum). "
                "Absent: the server's default"}),
            "network": _null({**BOOL, "description": "false cuts the runs' network; absent or "
                               "true: the server's setting"}),
        },
    ),
    "HistoryItem": _obj({
        "task_id": INT,
        "task_name": STR,
        "status": {"enum": _EXECUTION_STATUS},
        "execution_time": _null(TIME),
        "duration": _null(NUM),
        "peak_memory": _null(NUM),
        "avg_memory": _null(NUM),
        "exit_code": _null(INT),
        "execution_id": STR,
    }, {"end_time": _null(TIME)}),
}

# --- error bodies ------------------------------------------------------------------------------


def _error(message: Schema | str, error: Schema | str | None = None,
           extra: dict[str, Schema] | None = None, optional: dict[str, Schema] | None = None,
           description: str = "") -> Schema:
    """An error body: ``{"success": false, "message": ..., "error"?: ..., **extra}``."""
    required: dict[str, Schema] = {
        "success": _const(False),
        "message": _const(message) if isinstance(message, str) else message,
    }
    opt: dict[str, Schema] = {"error": STR, **(optional or {})}
    if error is not None:
        required["error"] = _const(error) if isinstance(error, str) else error
        del opt["error"]
    schema = _obj({**required, **(extra or {})}, opt)
    if description:
        schema["description"] = description
    return schema


def _starts(prefix: str) -> Schema:
    return {"type": "string", "pattern": "^" + "".join(
        "\\" + c if c in r"\.^$|?*+()[]{}" else c for c in prefix
    )}


_FAILURE_DETAILS = {"failed_packages": STR_LIST, "error_details": STR_LIST}


def _field(name: str) -> dict[str, Schema]:
    """The optional ``field`` key naming the request field an error is about."""
    return {"field": {**_const(name), "description": "The request field at fault"}}

# One schema per domain error class (the body ``_errors.error_body`` renders).
DOMAIN_ERRORS: dict[type[e.CtmError], tuple[str, Schema]] = {
    e.InvalidInput: ("InvalidInput", _error(
        STR, STR, {"field": STR},
        description="A field is missing, of the wrong type, out of range or too long",
    )),
    e.InvalidEnvironmentName: ("InvalidEnvironmentName", _error(
        "Invalid environment name", STR, {"field": _const("name")})),
    e.InvalidPackageSpec: ("InvalidPackageSpec", _error(
        "Invalid package specification", STR,
        {"field": STR, "invalid_packages": STR_LIST})),
    e.InvalidCredentialsFormat: ("InvalidCredentialsFormat", _error(
        "Invalid username or password format", STR, {"field": {"enum": ["username", "password"]}})),
    e.ScheduleConflict: ("ScheduleConflict", _error(
        e.ScheduleConflict.message, "Cannot specify both cron_expression and delay_seconds")),
    e.InvalidCronExpression: ("InvalidCronExpression", _error(
        e.InvalidCronExpression.message, _starts("Invalid cron expression: "),
        optional=_field("cron_expression"))),
    e.InvalidDelay: ("InvalidDelay", _error(
        e.InvalidDelay.message, "Delay seconds must be non-negative",
        optional=_field("delay_seconds"))),
    e.AuthenticationRequired: ("AuthenticationRequired", _error(
        e.AuthenticationRequired.message, "Please log in to perform this operation")),
    e.InvalidCredentials: ("InvalidCredentials", _error(e.InvalidCredentials.message)),
    e.TooManyLoginAttempts: ("TooManyLoginAttempts", _error(
        e.TooManyLoginAttempts.message, None,
        {"retry_after": {**INT, "minimum": 1, "description": "Seconds"}})),
    e.AdminRequired: ("AdminRequired", _error(e.AdminRequired.message)),
    e.NotOwner: ("NotOwner", _error(
        e.NotOwner.message, _starts("You do not have permission to "))),
    e.CrossSiteRequest: ("CrossSiteRequest", _error(
        e.CrossSiteRequest.message, "State-changing requests must come from this site",
        description="Sec-Fetch-Site: cross-site, or an Origin that is not the server's own")),
    e.ScriptOutsideRoots: ("ScriptOutsideRoots", _error(
        e.ScriptOutsideRoots.message, _starts("Script path "))),
    e.UserExists: ("UserExists", _error(e.UserExists.message, STR, optional=_field("username"))),
    e.EnvironmentNotFound: ("EnvironmentNotFound", _error(e.EnvironmentNotFound.message)),
    e.EnvironmentExists: ("EnvironmentExists", _error(e.EnvironmentExists.message, STR)),
    e.EnvironmentInUse: ("EnvironmentInUse", _error(
        {"enum": [
            "Cannot rename environment that is used by running tasks",
            "Cannot modify packages in environment that is referenced by running tasks",
            "Cannot remove packages from environment that is referenced by running tasks",
            "Cannot delete environment that is referenced by tasks",
        ]},
        "Environment is in use by tasks",
        {"referencing_tasks": {**STR_LIST, "description": "script_path of each task"}},
    )),
    e.PackageOperationFailed: ("PackageOperationFailed", _error(
        {"enum": ["Failed to create environment", "Failed to install packages",
                  "Failed to remove packages", "Failed to install requirements"]},
        {**STR, "description": "The tool's full output"}, _FAILURE_DETAILS,
    )),
    e.BackendFailure: ("BackendFailure", _error(
        STR, None, description="conda/pip failed in a way that is not the caller's fault")),
    e.TaskNotFound: ("TaskNotFound", _error({"type": "string",
                                              "pattern": "^Task with ID .* not found$"})),
    e.TaskExists: ("TaskExists", _error(e.TaskExists.message, _starts("Task with name "),
                                        optional=_field("task_name"))),
    e.ReuseMissingEnvironment: ("ReuseMissingEnvironment", _error(
        e.ReuseMissingEnvironment.message, _starts("Environment "),
        optional=_field("conda_env"))),
    e.ScriptNotFound: ("ScriptNotFound", _error(e.ScriptNotFound.message, STR,
                                                optional=_field("script"))),
    e.RequirementsFailed: ("RequirementsFailed", _error(
        {"enum": ["Failed to install requirements in new environment",
                  "Failed to install requirements in existing environment"]},
        STR, _FAILURE_DETAILS,
        {"environment_state": {
            **STR, "description": "Existing environment only: unchanged, or may be inconsistent"
        }, **_field("requirements")},
    )),
    e.TaskNotRunning: ("TaskNotRunning", _error(
        e.TaskNotRunning.message, _starts("Cannot stop a task with status: "),
        {"current_status": {"enum": _TASK_STATUS}})),
    e.TaskLimitReached: ("TaskLimitReached", _error(
        e.TaskLimitReached.message,
        {"type": "string", "pattern": "^At most [0-9]+ tasks per user$"},
        description="A non-admin already owns the most tasks one user may have")),
}


@attrs.frozen
class HttpError:
    """An error the HTTP layer answers itself (request body, routing, unhandled exception)."""

    name: str
    status: int
    schema: Schema


INVALID_BODY = HttpError("InvalidBody", 400, _error(
    "Request body must be a JSON object", STR,
    description="No body, invalid JSON, or JSON that is not an object"))
BODY_TOO_LARGE = HttpError("BodyTooLarge", 413, _error("Request body too large", STR))
UNSUPPORTED_MEDIA_TYPE = HttpError("UnsupportedMediaType", 415, _error(
    "Request body must be sent as application/json", STR))
ROUTE_NOT_FOUND = HttpError("RouteNotFound", 404, _error(
    "Not found", description="No route for this path (e.g. a path parameter holding '/')"))
METHOD_NOT_ALLOWED = HttpError("MethodNotAllowed", 405, _error("Method not allowed"))
INTERNAL_ERROR = HttpError("InternalError", 500, _error(
    "Internal server error", description="The cause is in the server log, never in the body"))
HTTP_ERRORS = (INVALID_BODY, BODY_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, ROUTE_NOT_FOUND,
               METHOD_NOT_ALLOWED, INTERNAL_ERROR)


def status_of(cls: type[e.CtmError]) -> int:
    """The status the error table gives this class (looked up along its MRO, as at run time)."""
    for klass in cls.__mro__:
        if klass in STATUS:
            return STATUS[klass]
    return 500


def error_schema_name(cls: type[e.CtmError]) -> str:
    for klass in cls.__mro__:
        if klass in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[klass][0]
    raise KeyError(f"no error schema for {cls.__name__}")


# --- operations --------------------------------------------------------------------------------

Example = tuple[str, Any]


@attrs.frozen(kw_only=True)
class _Op:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok_status: int = 200
    ok_schema: Schema | None = None
    ok_description: str = "Success"
    ok_examples: tuple[Example, ...] = ()
    body: str | None = None  # component name of the JSON request body
    body_examples: tuple[Example, ...] = ()
    errors: tuple[type[e.CtmError], ...] = ()
    error_examples: tuple[tuple[int, str, Any], ...] = ()
    query: tuple[Schema, ...] = ()  # query parameters
    auth: str = "required"  # required | none | optional
    description: str = ""
    sets_cookie: bool = False


_PAGE_QUERY = (
    {"name": "limit", "in": "query", "required": False,
     "description": f"Executions per page, newest first (default {DEFAULT_PAGE})",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
    {"name": "before", "in": "query", "required": False,
     "description": "The execution_id after which the page starts (the previous page's "
                    "`next_before`); 400 when it is not an execution of the list",
     "schema": {"type": "string"}},
)
_ENV = ("environments",)
_TASKS = ("tasks",)
_ENV_PARAM_ERRORS = (e.InvalidEnvironmentName, e.EnvironmentNotFound)

_AUTH_401 = {"success": False, "message": "Authentication required",
             "error": "Please log in to perform this operation"}
_IN_USE = {"success": False, "message": "Cannot delete environment that is referenced by tasks",
           "error": "Environment is in use by tasks",
           "referencing_tasks": ["/srv/ctm/scripts/task_1.py"]}

OPERATIONS: tuple[_Op, ...] = (
    _Op(
        method="POST", path="/login", operation_id="login", summary="Log in", tag="auth",
        auth="none", body="LoginRequest", sets_cookie=True,
        body_examples=(("admin", {"username": "admin", "password": "choose-a-long-one"}),),
        ok_schema=_obj({"success": TRUE, "message": _const("Login successful"),
                        "user": _ref("User")}),
        ok_examples=(("ok", {"success": True, "message": "Login successful",
                             "user": {"username": "admin", "is_admin": True}}),),
        errors=(e.InvalidCredentials, e.TooManyLoginAttempts),
        error_examples=(
            (401, "wrong", {"success": False, "message": "Invalid username or password"}),
            (429, "throttled", {"success": False, "message": "Too many failed login attempts",
                                "retry_after": 840}),
        ),
        description="Opens a server-side session and sets the `session` cookie "
        "(HttpOnly; SameSite=Lax; Max-Age=900). An unknown user and a wrong password get the "
        "same 401. After 5 failures in 15 minutes for one username or client address: 429 "
        "with `retry_after` and a Retry-After header.",
    ),
    _Op(
        method="POST", path="/logout", operation_id="logout", summary="Log out", tag="auth",
        auth="optional", sets_cookie=True,
        ok_schema=_obj({"success": TRUE, "message": _const("Logout successful")}),
        ok_examples=(("ok", {"success": True, "message": "Logout successful"}),),
        description="Ends the session and clears the cookie (Max-Age=0). Idempotent: 200 "
        "with or without a session.",
    ),
    _Op(
        method="POST", path="/create_user", operation_id="createUser",
        summary="Create a user (admins only)", tag="auth", ok_status=201,
        body="CreateUserRequest",
        body_examples=(("user", {"username": "alice", "password": "alice-password",
                                 "is_admin": False}),),
        ok_schema=_obj({"success": TRUE, "message": _const("User created successfully"),
                        "user": _ref("User")}),
        ok_examples=(("created", {"success": True, "message": "User created successfully",
                                  "user": {"username": "alice", "is_admin": False}}),),
        errors=(e.AdminRequired, e.InvalidCredentialsFormat, e.InvalidInput, e.UserExists),
        error_examples=(
            (400, "exists", {"success": False, "message": "User already exists",
                             "error": "User 'alice' already exists"}),
            (403, "not admin", {"success": False,
                                "message": "Unauthorized - Admin privileges required"}),
        ),
        description="Usernames: 1-64 characters of A-Z a-z 0-9 _ . -; passwords: 8-1024 "
        "characters.",
    ),
    _Op(
        method="GET", path="/api/me", operation_id="whoAmI", summary="The logged-in user",
        tag="auth",
        ok_schema=_obj({"success": TRUE, "user": _ref("User")}),
        ok_examples=(("me", {"success": True, "user": {"username": "admin", "is_admin": True}}),),
        description="Not in the original api.md; used by the dashboard.",
    ),
    _Op(
        method="GET", path="/api/conda/environments", operation_id="listEnvironments",
        summary="List environments", tag="environments",
        ok_schema={"type": "array", "items": _ref("EnvironmentSummary")},
        ok_examples=(("list", [{"name": "demo", "python_version": "3.11.7",
                                "packages": ["pip", "six"], "package_count": 2,
                                "created_at": "2025-05-01 14:30:00"}]),),
        description="Every environment the backend knows except base/root.",
    ),
    _Op(
        method="GET", path="/api/conda/stats", operation_id="environmentStats",
        summary="Environment statistics", tag="environments",
        ok_schema=_ref("EnvironmentStats"),
        ok_examples=(("stats", {
            "total_environments": 2, "active_environments": 1, "total_disk_usage": 0.05,
            "latest_created": {"name": "demo", "created_at": "2025-05-01 14:30:00"},
            "environment_usage": [{"name": "demo", "usage_percent": 100}],
            "package_stats": [{"name": "demo", "package_count": 2},
                              {"name": "other", "package_count": 1}],
        }),),
    ),
    _Op(
        method="POST", path="/api/conda/environment", operation_id="createEnvironment",
        summary="Create an environment", tag="environments", ok_status=201,
        body="CreateEnvironmentRequest",
        body_examples=(("plain", {"name": "demo"}),),
        ok_schema=_obj({
            "success": TRUE,
            "message": _const("Environment created successfully"),
            "environment": _obj({"name": STR, "created_at": _null(TIME)},
                                {"python_version": _null(STR)}),
        }),
        ok_examples=(("created", {"success": True, "message": "Environment created successfully",
                                  "environment": {"name": "demo",
                                                  "created_at": "2025-05-01 14:30:00",
                                                  "python_version": "3.11.7"}}),),
        errors=(e.InvalidEnvironmentName, e.InvalidPackageSpec, e.InvalidInput,
                e.EnvironmentExists, e.PackageOperationFailed, e.BackendFailure),
        error_examples=(
            (400, "exists", {"success": False,
                             "message": "Environment with this name already exists",
                             "error": "Environment 'demo' already exists"}),
        ),
        description="The environment belongs to the caller. A failed creation leaves nothing "
        "behind.",
    ),
    _Op(
        method="GET", path="/api/conda/environment/{name}", operation_id="getEnvironment",
        summary="Environment detail", tag="environments",
        ok_schema=_ref("EnvironmentDetail"),
        ok_examples=(("detail", {
            "name": "demo", "python_version": "3.11.7", "created_at": "2025-04-15 10:00:00",
            "usage_stats": {"total_tasks": 24, "success_rate": 92.0, "avg_execution_time": 45.0,
                            "disk_usage": 1.2},
            "packages": [{"name": "numpy", "version": "1.24.3"}],
        }),),
        errors=_ENV_PARAM_ERRORS,
        error_examples=((404, "missing", {"success": False, "message": "Environment not found",
                                          "error": "Environment 'demo' not found"}),),
    ),
    _Op(
        method="PUT", path="/api/conda/environment/{name}", operation_id="renameEnvironment",
        summary="Rename an environment", tag="environments",
        body="RenameEnvironmentRequest",
        body_examples=(("rename", {"new_name": "demo2"}),),
        ok_schema=_obj({
            "success": TRUE, "message": _const("Environment renamed successfully"),
            "old_name": STR, "new_name": STR, "updated_tasks_count": INT,
        }),
        ok_examples=(("renamed", {"success": True, "message": "Environment renamed successfully",
                                  "old_name": "demo", "new_name": "demo2",
                                  "updated_tasks_count": 2}),),
        errors=(*_ENV_PARAM_ERRORS, e.InvalidInput, e.NotOwner, e.EnvironmentInUse,
                e.EnvironmentExists, e.BackendFailure),
        error_examples=(
            (400, "exists", {"success": False,
                             "message": "Environment with this name already exists",
                             "error": "Cannot rename environment to an existing name"}),
            (403, "not owner", {"success": False,
                                "message": "Unauthorized - Insufficient privileges",
                                "error": "You do not have permission to modify this environment"}),
        ),
        description="Every task using the old name moves to the new one. 400 while a running "
        "task uses the environment.",
    ),
    _Op(
        method="DELETE", path="/api/conda/environment/{name}", operation_id="deleteEnvironment",
        summary="Delete an environment", tag="environments", ok_status=204,
        ok_description="Deleted",
        errors=(*_ENV_PARAM_ERRORS, e.NotOwner, e.EnvironmentInUse, e.BackendFailure),
        error_examples=((400, "in use", _IN_USE),),
        description="Its owner or an admin may delete it. 400 while one of its tasks has a run "
        "queued or running (`referencing_tasks` names them); otherwise the tasks that use it "
        "stay, with their history, and their later runs fail with a note that the "
        "environment was deleted.",
    ),
    _Op(
        method="POST", path="/api/conda/environment/{name}/packages",
        operation_id="installPackages", summary="Install packages", tag="environments",
        body="PackagesRequest",
        body_examples=(("specs", {"packages": ["six", "attrs>=23.1"]}),),
        ok_schema=_obj({"success": TRUE, "message": _const("Packages installed successfully"),
                        "environment": STR, "installed_packages": STR_LIST}),
        ok_examples=(("installed", {"success": True,
                                    "message": "Packages installed successfully",
                                    "environment": "demo",
                                    "installed_packages": ["six", "attrs>=23.1"]}),),
        errors=(*_ENV_PARAM_ERRORS, e.InvalidPackageSpec, e.NotOwner, e.EnvironmentInUse,
                e.PackageOperationFailed, e.BackendFailure),
        error_examples=((400, "failed", {
            "success": False, "message": "Failed to install packages",
            "failed_packages": ["nope-pkg"],
            "error_details": ["Package 'nope-pkg' not found in available channels"],
            "error": "ERROR: No matching distribution found for nope-pkg",
        }),),
    ),
    _Op(
        method="DELETE", path="/api/conda/environment/{name}/packages",
        operation_id="removePackages", summary="Remove packages", tag="environments",
        body="RemovePackagesRequest",
        body_examples=(("names", {"packages": ["six"]}),),
        ok_schema=_obj({"success": TRUE, "message": _const("Packages removed successfully"),
                        "environment": STR, "removed_packages": STR_LIST}),
        ok_examples=(("removed", {"success": True, "message": "Packages removed successfully",
                                  "environment": "demo", "removed_packages": ["six"]}),),
        errors=(*_ENV_PARAM_ERRORS, e.InvalidPackageSpec, e.NotOwner, e.EnvironmentInUse,
                e.PackageOperationFailed, e.BackendFailure),
        description="Package names only. A package that is not installed: 400 \"Failed to "
        "remove packages\" with failed_packages.",
    ),
    _Op(
        method="POST", path="/api/tasks", operation_id="createTask", summary="Create a task",
        tag="tasks", ok_status=201, body="CreateTaskRequest",
        body_examples=(("every 10 minutes", {"script": "print('hello')", "conda_env": "demo",
                                             "task_name": "hello",
                                             "cron_expression": "*/10 * * * *"}),),
        ok_schema=_obj({"success": TRUE, "message": _const("Task scheduled successfully"),
                        "task": _ref("Task"), "environment_message": STR}),
        ok_examples=(("scheduled", {
            "success": True, "message": "Task scheduled successfully",
            "task": {"task_id": 1, "task_name": "hello",
                     "script_path": "/srv/ctm/scripts/task_1.py", "conda_env": "demo",
                     "status": "scheduled", "created_at": "2025-05-02 15:20:00",
                     "cron_expression": "*/10 * * * *",
                     "next_run_time": "2025-05-02 15:30:00", "last_run_time": None,
                     "last_run_duration": None, "requirements": None},
            "environment_message": "Using existing environment 'demo'",
        }),),
        errors=(e.InvalidInput, e.InvalidEnvironmentName, e.ScheduleConflict,
                e.InvalidCronExpression, e.InvalidDelay, e.TaskExists,
                e.ReuseMissingEnvironment, e.ScriptNotFound, e.ScriptOutsideRoots, e.NotOwner,
                e.EnvironmentExists, e.EnvironmentInUse, e.PackageOperationFailed,
                e.RequirementsFailed, e.BackendFailure, e.EnvironmentNotFound,
                e.TaskLimitReached),
        error_examples=(
            (403, "task limit", {"success": False, "message": "Task limit reached",
                                 "error": "At most 200 tasks per user"}),
            (400, "both", {"success": False,
                           "message": "Please specify either cron expression or delay seconds, "
                           "not both",
                           "error": "Cannot specify both cron_expression and delay_seconds"}),
            (400, "reuse", {"success": False, "message": "Cannot reuse non-existing environment",
                            "error": "Environment 'env_name' not found"}),
        ),
        description="Neither cron_expression nor delay_seconds: runs once now. "
        "reuse_env false (default) creates a missing environment (with requirements). 404 "
        "only when the environment is deleted while its requirements are being installed. "
        "Per-run limits (timeout_seconds, memory_limit_mb, max_processes, cpu_limit) not "
        "given take the server's defaults at run time; values over the server's maxima are a "
        "400 naming the field. A non-admin who owns the most tasks allowed gets 403.",
    ),
    _Op(
        method="GET", path="/api/tasks", operation_id="listTasks", summary="List tasks",
        tag="tasks",
        ok_schema={"type": "array", "items": _ref("TaskListItem")},
    ),
    _Op(
        method="GET", path="/api/tasks/stats", operation_id="taskStats",
        summary="Task statistics", tag="tasks",
        ok_schema=_obj({
            "total": INT,
            **{s: INT for s in _TASK_STATUS},
            "avg_duration": NUM, "min_duration": NUM, "max_duration": NUM,
            "success_rate": {**NUM, "description": "completed / (completed + failed), percent"},
            "last_7_days": _obj({
                "dates": {"type": "array", "items": DATE, "minItems": 7, "maxItems": 7},
                "success_counts": {"type": "array", "items": INT, "minItems": 7, "maxItems": 7},
                "failed_counts": {"type": "array", "items": INT, "minItems": 7, "maxItems": 7},
            }),
            "recent_tasks": {"type": "array", "maxItems": 5, "items": _obj(
                {"task_id": INT, "name": STR, "status": {"enum": _EXECUTION_STATUS},
                 "start_time": _null(TIME), "end_time": _null(TIME), "duration": _null(NUM)},
                {"execution_id": STR},
            )},
        }),
    ),
    _Op(
        method="GET", path="/api/tasks/history", operation_id="taskHistory",
        summary="Executions of the retention period (default 30 days)", tag="tasks",
        ok_schema=_obj({"status": _const("success"),
                        "data": {"type": "array", "items": _ref("HistoryItem")},
                        "next_before": _null({**STR, "description": "The `before` of the "
                                              "next page; null on the last page"})}),
        description="Newest first, a page at a time (`limit`, `before`).",
        query=_PAGE_QUERY,
        errors=(e.InvalidInput,),
    ),
    _Op(
        method="GET", path="/api/tasks/{task_id}", operation_id="getTask",
        summary="Task detail with its executions", tag="tasks",
        ok_schema=_obj({
            "success": TRUE,
            "task": _ref("TaskWithExecutions"),
            "execution_history": {"type": "array", "items": _ref("Execution"),
                                  "description": "Newest first, without logs"},
            "performance_metrics": _obj({
                "durations": {"type": "array", "items": _null(NUM)},
                "timestamps": {"type": "array", "items": _null(TIME)},
                "peak_memories": {"type": "array", "items": _null(NUM)},
                "avg_memories": {"type": "array", "items": _null(NUM)},
            }, description="Finished executions, oldest first"),
            "latest_execution": _null(_ref("ExecutionWithLogs")),
            "execution_history_next_before": _null({**STR, "description": "The `before` of "
                                                    "the next page of execution_history; null "
                                                    "on the last page"}),
        }),
        query=(*_PAGE_QUERY,
               {"name": "history_limit", "in": "query", "required": False,
                "description": "The older name of `limit`",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}}),
        errors=(e.TaskNotFound, e.InvalidInput),
        error_examples=((404, "missing", {"success": False,
                                          "message": "Task with ID 1 not found"}),),
    ),
    _Op(
        method="DELETE", path="/api/tasks/{task_id}", operation_id="deleteTask",
        summary="Delete a task", tag="tasks", ok_status=204, ok_description="Deleted",
        errors=(e.TaskNotFound, e.NotOwner),
        description="Not in the original api.md: stops a running execution, cancels the "
        "schedule, deletes the task with its executions and logs.",
    ),
    _Op(
        method="POST", path="/api/tasks/{task_id}/stop", operation_id="stopTask",
        summary="Stop a running task", tag="tasks",
        ok_schema=_obj({
            "success": TRUE, "message": _const("Task stopped successfully"),
            "task": _obj({"task_id": INT, "task_name": STR, "status": {"enum": _TASK_STATUS},
                          "previous_status": _const("running")}),
        }),
        ok_examples=(("stopped", {"success": True, "message": "Task stopped successfully",
                                  "task": {"task_id": 1, "task_name": "hello",
                                           "status": "stopped",
                                           "previous_status": "running"}}),),
        errors=(e.TaskNotFound, e.NotOwner, e.TaskNotRunning),
        error_examples=((400, "not running", {
            "success": False, "message": "Task is not in a running state",
            "error": "Cannot stop a task with status: 'completed'",
            "current_status": "completed"}),),
        description="SIGTERM to the run's process group, SIGKILL after the grace period. A "
        "cron task keeps its schedule.",
    ),
    _Op(
        method="GET", path="/openapi.json", operation_id="openapi",
        summary="This description", tag="meta", auth="none",
        ok_schema=_obj({"openapi": STR, "info": {"type": "object"},
                        "paths": {"type": "object"}}),
        description="Public: the description is the API's published contract and holds no "
        "data.",
    ),
    _Op(
        method="GET", path="/docs", operation_id="docs", summary="The routes as an HTML page",
        tag="meta", auth="none",
    ),
    _Op(
        method="GET", path="/", operation_id="dashboard", summary="The web dashboard (HTML)",
        tag="meta", auth="none",
        description="Public: the page and its files under /static hold no data; everything it "
        "shows comes from the JSON API, which needs the session.",
    ),
)
_HTML_OPS = frozenset({"/docs", "/"})

COMPONENT_SCHEMAS["RenameEnvironmentRequest"] = _obj({"new_name": ENV_NAME})
COMPONENT_SCHEMAS["PackagesRequest"] = _obj({"packages": SPECS})
COMPONENT_SCHEMAS["RemovePackagesRequest"] = _obj({"packages": PACKAGE_NAMES})


# --- building the document ---------------------------------------------------------------------


def _path_params(path: str) -> list[Schema]:
    params = []
    if "{name}" in path:
        params.append({"name": "name", "in": "path", "required": True,
                       "description": "Environment name", "schema": ENV_NAME})
    if "{task_id}" in path:
        params.append({"name": "task_id", "in": "path", "required": True,
                       "schema": {"type": "integer", "minimum": 1}})
    return params


def error_sources(op: _Op) -> list[tuple[int, str]]:
    """(status, schema name) of every error ``op`` can answer: its domain errors, and what the
    HTTP layer adds (cross-site refusal, missing session, bad body, routing, 500)."""
    out: list[tuple[int, str]] = []
    domain: list[type[e.CtmError]] = list(op.errors)
    if op.method not in ("GET", "HEAD", "OPTIONS"):
        domain.append(e.CrossSiteRequest)
    if op.auth == "required":
        domain.append(e.AuthenticationRequired)
    for cls in domain:
        out.append((status_of(cls), error_schema_name(cls)))
    if op.body is not None:
        out += [(x.status, x.name) for x in (INVALID_BODY, BODY_TOO_LARGE,
                                              UNSUPPORTED_MEDIA_TYPE)]
    if "{" in op.path:
        out += [(x.status, x.name) for x in (ROUTE_NOT_FOUND, METHOD_NOT_ALLOWED)]
    out.append((INTERNAL_ERROR.status, INTERNAL_ERROR.name))
    return list(dict.fromkeys(out))


_COOKIE_HEADER = {"Set-Cookie": {
    "description": "session=<token>; Path=/; HttpOnly; SameSite=Lax; Max-Age=900 (renewed on "
    "every authenticated request; Max-Age=0 at logout)",
    "required": True,
    "schema": {"type": "string", "pattern": "^session="},
}}

_REASONS = {400: "Bad request", 401: "Authentication required or failed",
            403: "Forbidden", 404: "Not found", 405: "Method not allowed",
            413: "Request body too large", 415: "Unsupported media type",
            429: "Too many failed login attempts", 500: "Internal server error",
            502: "Environment backend failure"}


def _examples(pairs: Iterable[Example]) -> dict[str, Any]:
    return {name: {"value": value} for name, value in pairs}


def _operation(op: _Op) -> Schema:
    responses: dict[str, Any] = {}
    ok: Schema = {"description": op.ok_description}
    if op.path in _HTML_OPS:
        ok["content"] = {"text/html": {"schema": STR}}
    elif op.ok_schema is not None:
        media: Schema = {"schema": op.ok_schema}
        if op.ok_examples:
            media["examples"] = _examples(op.ok_examples)
        ok["content"] = {"application/json": media}
    if op.sets_cookie or op.auth == "required":
        ok["headers"] = _COOKIE_HEADER
    responses[str(op.ok_status)] = ok

    by_status: dict[int, list[str]] = {}
    for status, name in error_sources(op):
        by_status.setdefault(status, []).append(name)
    for status in sorted(by_status):
        names = by_status[status]
        schema = _ref(names[0]) if len(names) == 1 else {"anyOf": [_ref(n) for n in names]}
        media = {"schema": schema}
        examples = [(name, value) for s, name, value in op.error_examples if s == status]
        if status == 401 and op.auth == "required":
            examples.append(("no session", _AUTH_401))
        if examples:
            media["examples"] = _examples(examples)
        response: Schema = {
            "description": _REASONS.get(status, "Error") + ": " + ", ".join(names),
            "content": {"application/json": media},
        }
        if status == 429:
            response["headers"] = {"Retry-After": {"required": True, "schema": INT,
                                                   "description": "Seconds"}}
        if status == 405:
            response["headers"] = {"Allow": {"required": True, "schema": STR}}
        responses[str(status)] = response

    out: Schema = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                   "responses": responses}
    if op.description:
        out["description"] = op.description
    if op.auth == "none":
        out["security"] = []
    elif op.auth == "optional":
        out["security"] = [{}, {"session": []}]
    params = _path_params(op.path) + list(op.query)
    if params:
        out["parameters"] = params
    if op.body is not None:
        media = {"schema": _ref(op.body)}
        if op.body_examples:
            media["examples"] = _examples(op.body_examples)
        out["requestBody"] = {"required": True, "content": {"application/json": media}}
    return out


def _version() -> str:
    try:
        return metadata.version("ctm")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


@functools.cache
def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once, on first use). Treat it as read-only."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    schemas = dict(COMPONENT_SCHEMAS)
    schemas.update(dict(DOMAIN_ERRORS.values()))
    schemas.update({x.name: x.schema for x in HTTP_ERRORS})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ctm - Conda Task Manager",
            "version": _version(),
            "description": (
                "Conda environments and scheduled Python runs for a shared machine. "
                "Bodies are JSON. Every route but POST /login (and this description) needs the "
                "`session` cookie that login sets. State-changing requests must not be "
                "cross-site (403). Times are \"YYYY-MM-DD HH:MM:SS\" in the server's time zone; "
                "durations are seconds, memory MB, disk GB. Every error body has "
                "`\"success\": false` and `\"message\"`. Response objects may carry keys "
                "beyond the ones listed (additionalProperties is allowed); the listed "
                "required keys are always there."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "auth", "description": "Sessions and users"},
            {"name": "environments", "description": "conda (or venv) environments"},
            {"name": "tasks", "description": "Scripts run now, after a delay or on cron"},
            {"name": "meta", "description": "This description"},
        ],
        "security": [{"session": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"session": {
                "type": "apiKey", "in": "cookie", "name": "session",
                "description": "Set by POST /login; 15 minutes idle expiry, renewed by every "
                "authenticated request; 12 hours at most",
            }},
            "schemas": schemas,
        },
    }


def operation(method: str, path: str) -> dict[str, Any]:
    """The operation object of ``method path`` (``path`` a template: ``/api/tasks/{task_id}``)."""
    return spec()["paths"][path][method.lower()]  # type: ignore[no-any-return]


def response_schema(method: str, path: str, status: int) -> dict[str, Any] | None:
    """A self-contained JSON Schema (2020-12) for the body of ``method path`` answering
    ``status``: ``None`` when that response has no body; ``KeyError`` when it is undocumented.
    Any JSON Schema validator can use it as it is (its ``$ref``s point into itself)."""
    response = operation(method, path)["responses"][str(status)]
    media = response.get("content", {}).get("application/json")
    if media is None:
        return None
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **media["schema"],
        "components": spec()["components"],
    }


# --- routes ------------------------------------------------------------------------------------


async def openapi_json(request: Request) -> Response:
    return JSONResponse(spec())


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}: API</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 2rem; }}
th, td {{ text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #ddd;
          vertical-align: top; }}
code {{ font-size: 14px; }}
.m {{ font-weight: 600; font-family: monospace; }}
.muted {{ color: #666; font-size: 13px; }}
</style></head><body>
<h1>{title} <span class="muted">{version}</span></h1>
<p>{description}</p>
<p>The machine-readable description: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
{sections}
</body></html>
"""


def render_docs(document: dict[str, Any]) -> str:
    """The routes of ``document`` as one HTML page: no script, nothing fetched."""
    rows: dict[str, list[str]] = {}
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            statuses = ", ".join(sorted(op["responses"]))
            needs = "no session" if op.get("security") == [] else (
                "session optional" if {} in op.get("security", []) else "session")
            rows.setdefault(op["tags"][0], []).append(
                f"<tr><td class=m>{html.escape(method.upper())}</td>"
                f"<td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}"
                f"<div class=muted>{html.escape(op.get('description', ''))}</div></td>"
                f"<td class=muted>{html.escape(needs)}</td>"
                f"<td class=muted>{html.escape(statuses)}</td></tr>"
            )
    sections = []
    for tag in document.get("tags", []):
        body = "".join(rows.get(tag["name"], []))
        sections.append(
            f"<h2>{html.escape(tag['name'])}</h2><p class=muted>"
            f"{html.escape(tag.get('description', ''))}</p><table><tr><th>Method</th>"
            f"<th>Path</th><th>What</th><th>Auth</th><th>Statuses</th></tr>{body}</table>"
        )
    info = document["info"]
    return _PAGE.format(
        title=html.escape(info["title"]), version=html.escape(info["version"]),
        description=html.escape(info.get("description", "")), sections="".join(sections),
    )


@functools.cache
def _docs_page() -> str:
    return render_docs(spec())


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_docs_page(), headers={
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        "X-Content-Type-Options": "nosniff",
    })


def routes() -> list[BaseRoute]:
    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
    ]


# --- docs/api.md -------------------------------------------------------------------------------

_MD_INTRO = """\
# HTTP API

Generated from `GET /openapi.json` (`python -m ctm_http.openapi markdown > docs/api.md`; a
test fails when this file and the description differ). The description itself is served by
every ctm at `/openapi.json` (OpenAPI 3.1) and as a page at `/docs`.

## Conventions

- Bodies are JSON; send `Content-Type: application/json`. A body that is missing, not JSON or
  not an object: 400 `"Request body must be a JSON object"`; another content type: 415; larger
  than `CTM_MAX_BODY_BYTES`: 413.
- Every route except `POST /login` (and `/openapi.json`, `/docs`, the dashboard `/`) needs the
  `session` cookie set by `POST /login`: without it, 401 `"Authentication required"`. Each
  authenticated answer renews the cookie (15 minutes idle, 12 hours at most).
- A state-changing request (POST, PUT, DELETE) that a browser marks `Sec-Fetch-Site:
  cross-site`, or whose `Origin` is not the server's own, is refused with 403.
- Every error body has `"success": false` and `"message"`, usually `"error"` with details, and
  sometimes more keys (listed below). A 500 says only `"Internal server error"`.
- Unknown path: 404 `"Not found"`; known path, other method: 405 `"Method not allowed"`.
- Times are `"YYYY-MM-DD HH:MM:SS"` in the server's time zone; durations in seconds, memory in
  MB, disk in GB. Objects may carry keys beyond the ones listed here.
"""


def _md_type(schema: Schema, components: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[1]}`"
    if "const" in schema:
        return f"`{_json(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{_json(v)}`" for v in schema["enum"])
    if "anyOf" in schema:
        parts = [_md_type(s, components) for s in schema["anyOf"]]
        return " or ".join(parts)
    if "allOf" in schema:
        return " and ".join(_md_type(s, components) for s in schema["allOf"])
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    words = []
    for k in kinds:
        if k == "array":
            words.append("array of " + _md_type(schema.get("items", {}), components))
        else:
            words.append(k)
    return " or ".join(words)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _md_limits(schema: Schema) -> str:
    inner = schema
    if "anyOf" in schema:
        inner = next((s for s in schema["anyOf"] if s.get("type") != "null"), schema)
    notes = []
    for key, label in (("minLength", "min length"), ("maxLength", "max length"),
                       ("minimum", "min"), ("exclusiveMinimum", "above"), ("maximum", "max"),
                       ("minItems", "min items"), ("maxItems", "max items"),
                       ("pattern", "pattern"), ("default", "default")):
        if key in inner:
            value = inner[key]
            notes.append(f"{label} `{value}`" if key == "pattern" else f"{label} {_json(value)}")
    if "description" in inner:
        notes.insert(0, inner["description"])
    return "; ".join(notes)


def _md_fields(schema: Schema, components: dict[str, Any]) -> list[str]:
    if "$ref" in schema:
        schema = components["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    props = schema.get("properties", {})
    if not props:
        return []
    required = set(schema.get("required", []))
    lines = ["| Field | Type | Required | Notes |", "|---|---|---|---|"]
    for name, sub in props.items():
        notes = _md_limits(sub).replace("|", "\\|")
        kind = _md_type(sub, components).replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {'yes' if name in required else 'no'} | {notes} |")
    return lines


def render_markdown(document: dict[str, Any]) -> str:
    """docs/api.md: the description as Markdown, in the order of the routes."""
    components = document["components"]
    out = [_MD_INTRO]
    for tag in document["tags"]:
        out.append(f"## {tag['name'].capitalize()}: {tag['description']}\n")
        for path, methods in document["paths"].items():
            for method, op in methods.items():
                if op["tags"][0] != tag["name"]:
                    continue
                out.append(f"### `{method.upper()} {path}`: {op['summary']}\n")
                if op.get("description"):
                    out.append(op["description"] + "\n")
                security = op.get("security")
                auth = ("No session needed." if security == [] else
                        "Session optional." if security and {} in security else
                        "Needs the session cookie.")
                out.append(auth + "\n")
                for param in op.get("parameters", []):
                    limits = _md_limits(param["schema"])
                    optional = "" if param.get("required") else " (optional)"
                    out.append(f"{param['in'].capitalize()} parameter `{param['name']}`{optional}: "
                               f"{_md_type(param['schema'], components)}"
                               f"{'; ' + limits if limits else ''}.\n")
                body = op.get("requestBody", {}).get("content", {}).get("application/json")
                if body:
                    out.append("Request body:\n")
                    out += _md_fields(body["schema"], components) + [""]
                    for ex in body.get("examples", {}).values():
                        out += ["```json", _json(ex["value"]), "```", ""]
                out.append("| Status | Meaning | Body |")
                out.append("|---|---|---|")
                success_fields: list[str] = []
                for status, response in op["responses"].items():
                    content = response.get("content", {})
                    media = content.get("application/json")
                    if media is None:
                        shape = "HTML" if "text/html" in content else "none"
                    elif media["schema"].get("type") == "object":
                        shape = "the object below"
                        success_fields = _md_fields(media["schema"], components)
                    else:
                        schema = media["schema"]
                        refs = schema.get("anyOf", [schema])
                        shape = ", ".join(_md_type(s, components) for s in refs)
                    meaning = response["description"].split(": ", 1)[0]
                    out.append(f"| {status} | {meaning} | {shape} |")
                out.append("")
                if success_fields:
                    out += success_fields + [""]
                for status, response in op["responses"].items():
                    media = response.get("content", {}).get("application/json", {})
                    for name, ex in media.get("examples", {}).items():
                        out += [f"{status} ({name}):", "", "```json", _json(ex["value"]), "```",
                                ""]
    out.append("## Schemas\n")
    for name, schema in components["schemas"].items():
        out.append(f"### `{name}`\n")
        if schema.get("description"):
            out.append(schema["description"] + "\n")
        fields = _md_fields(schema, components)
        if fields:
            out += fields + [""]
        else:
            out += [_md_type(schema, components) + "\n"]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m ctm_http.openapi [json|markdown]``: print the description."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    kind = args[0] if args else "json"
    if kind == "markdown":
        sys.stdout.write(render_markdown(spec()))
    elif kind == "json":
        sys.stdout.write(json.dumps(spec(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stderr.write("usage: python -m ctm_http.openapi [json|markdown]\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
