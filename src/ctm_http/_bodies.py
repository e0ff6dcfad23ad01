"""Every JSON body of the API, declared once: what the server writes (``_serialize`` renders
each body declared here, a test holds their keys equal), the error bodies (wording from the
error classes), and the component schemas with the requests it reads (``_request_bodies``).
``openapi`` derives the description from them."""

from __future__ import annotations

from ctm_core import errors as e
from ctm_core.audit import ACTIONS
from ctm_core.models import ExecutionStatus, TaskStatus
from ctm_http._errors import HTTP_ERRORS, HttpError
from ctm_http._request_bodies import REQUESTS
from ctm_http._schema import (
    BOOL,
    DATE,
    INT,
    NUM,
    STR,
    STR_LIST,
    TIME,
    TRUE,
    Body,
    Schema,
    array,
    body,
    const,
    null,
    text,
)

TASK_STATUS = [s.value for s in TaskStatus]
EXECUTION_STATUS = [s.value for s in ExecutionStatus]

# --- what the server writes ----------------------------------------------------------------------

USER = body({"username": STR, "is_admin": BOOL}, name="User")

ENVIRONMENT_SUMMARY = body(
    {"name": STR, "python_version": null(STR), "packages": STR_LIST, "created_at": null(TIME)},
    {"package_count": INT, "disk_usage": null({**NUM, "description": "GB"})},
    name="EnvironmentSummary",
)
ENVIRONMENT_DETAIL = body(
    {
        "name": STR,
        "python_version": null(STR),
        "created_at": null(TIME),
        "usage_stats": body(
            {
                "total_tasks": INT,
                "success_rate": {**NUM, "description": "Percent of finished executions completed"},
                "avg_execution_time": {**NUM, "description": "Seconds"},
                "disk_usage": {**NUM, "description": "GB"},
            }
        ),
        "packages": array(body({"name": STR, "version": STR})),
    },
    name="EnvironmentDetail",
)
ENVIRONMENT_STATS = body(
    {
        "total_environments": INT,
        "active_environments": INT,
        "total_disk_usage": {**NUM, "description": "GB, a hard-linked file counted once"},
        "latest_created": null(body({"name": STR, "created_at": null(TIME)})),
        "environment_usage": array(
            body({"name": STR, "usage_percent": INT}),
            description="Share of all tasks per environment; integer percents adding up "
            "to 100; environments without a task left out",
        ),
        "package_stats": array(body({"name": STR, "package_count": INT})),
    },
    name="EnvironmentStats",
)

_TASK_FIELDS: dict[str, Schema] = {
    "task_id": INT,
    "task_name": STR,
    "script_path": {**STR, "description": "Path of the file that runs"},
    "conda_env": STR,
    "status": {"enum": TASK_STATUS},
    "created_at": TIME,
    "cron_expression": null(STR),
    "next_run_time": null(TIME),
    "last_run_time": null(TIME),
    "last_run_duration": null(NUM),
    "requirements": null(STR),
}
_TASK_EXTRA: dict[str, Schema] = {
    "delay_seconds": null(NUM),
    "timeout_seconds": null(NUM),
    "owner_id": null(INT),
    "memory_limit_mb": null(
        {
            **NUM,
            "description": "Memory limit of a run's whole process "
            "tree, MB: the task's own or the server's default; null: none",
        }
    ),
    "max_processes": null(
        {
            **INT,
            "description": "Processes a run may have at once: the "
            "task's own or the server's default; null: no limit",
        }
    ),
    "cpu_limit": null(
        {
            **NUM,
            "description": "CPU cores a run may use: the task's own or the "
            "server's default; null: no limit",
        }
    ),
    "network": {
        **BOOL,
        "description": "Whether runs have network access (the server's "
        "setting, unless the task turned it off)",
    },
    "timezone": null(
        {
            **STR,
            "description": "The IANA time zone the cron expression is read in; null: the "
            "server's. Times in answers stay in the server's zone",
        }
    ),
    "paused": {
        **BOOL,
        "description": "A paused task keeps its schedule and fires nothing (POST "
        "/api/tasks/<id>/resume)",
    },
}
TASK = body(_TASK_FIELDS, _TASK_EXTRA, name="Task")
TASK_LIST_ITEM = body(
    {
        **_TASK_FIELDS,
        "next_run_time_formatted": null(TIME),
        "last_run_time_formatted": null(TIME),
        "last_run_duration_formatted": null(NUM),
    },
    {**_TASK_EXTRA, "completed_at": null(TIME)},
    name="TaskListItem",
)
TASK_WITH_EXECUTIONS = body(
    {**_TASK_FIELDS, "last_execution_id": null(STR), "executions": STR_LIST},
    _TASK_EXTRA,
    name="TaskWithExecutions",
)
EXECUTION = body(
    {
        "execution_id": STR,
        "start_time": null(TIME),
        "end_time": null(TIME),
        "status": {"enum": EXECUTION_STATUS},
        "duration": null(NUM),
        "peak_memory": null({**NUM, "description": "MB"}),
        "avg_memory": null({**NUM, "description": "MB"}),
        "exit_code": null({**INT, "description": "Negative signal number when killed"}),
    },
    {
        "scheduled_time": null(TIME),
        "note": null(STR),
        # Only on ``skipped`` records, which stand for consecutive skipped occurrences.
        "skip_count": {
            **INT,
            "description": "Skipped records only: how many consecutive "
            "occurrences were skipped while the task still ran",
        },
        "first_skipped_at": null(
            {**TIME, "description": "Skipped records only: the first skipped occurrence"}
        ),
        "last_skipped_at": null(
            {**TIME, "description": "Skipped records only: the last skipped occurrence"}
        ),
        "logs": null(
            {**STR, "description": "Null in execution_history: the log is only in latest_execution"}
        ),
    },
    name="Execution",
)
EXECUTION_WITH_LOGS = body({"logs": STR}, name="ExecutionWithLogs", base=EXECUTION)
HISTORY_ITEM = body(
    {
        "task_id": INT,
        "task_name": STR,
        "status": {"enum": EXECUTION_STATUS},
        "execution_time": null(TIME),
        "duration": null(NUM),
        "peak_memory": null(NUM),
        "avg_memory": null(NUM),
        "exit_code": null(INT),
        "execution_id": STR,
    },
    {"end_time": null(TIME)},
    name="HistoryItem",
)

# The answers of single routes (written inline in the description).
LOGGED_IN = body({"success": TRUE, "message": const("Login successful"), "user": USER})
LOGGED_OUT = body({"success": TRUE, "message": const("Logout successful")})
USER_CREATED = body({"success": TRUE, "message": const("User created successfully"), "user": USER})
ME = body(
    {"success": TRUE, "user": USER},
    {
        "containment": body(
            {"contained": BOOL, "mode": STR, "reason": STR, "identity": STR, "limits": STR},
            description="Admins only: how runs are contained on this server (docs/security.md)",
        )
    },
)
USER_RECORD = body(
    {
        "id": INT,
        "username": STR,
        "is_admin": BOOL,
        "disabled": BOOL,
        "created_at": TIME,
        "sessions": {**INT, "description": "Live sessions"},
    },
    name="UserRecord",
)
USERS = body({"success": TRUE, "users": array(USER_RECORD)})
USER_UPDATED = body(
    {
        "success": TRUE,
        "message": const("User updated"),
        "user": USER_RECORD,
        "sessions_ended": {**INT, "description": "Sessions ended by disabling or a new password"},
    }
)
USER_DELETED = body({"success": TRUE, "message": const("User deleted")})
PASSWORD_CHANGED = body(
    {
        "success": TRUE,
        "message": const("Password changed"),
        "sessions_ended": {**INT, "description": "Your other sessions, now ended"},
    }
)
AUDIT_EVENT = body(
    {
        "id": INT,
        "at": TIME,
        "actor": null(
            {
                **STR,
                "description": "Who: a username, `(server CLI)` for `ctm user ...` on the "
                "server's machine; null when nobody is logged in",
            }
        ),
        "address": null({**STR, "description": "The client address, when over HTTP"}),
        "action": {"enum": list(ACTIONS)},
        "target": {**STR, "description": "A username, an environment, or `<task id>:<name>`"},
        "outcome": {
            "enum": ["ok", "refused", "failed"],
            "description": "refused: a login or a current password that was wrong; failed: "
            "conda or pip failed partway (the environment may have changed)",
        },
        "detail": {"type": "object", "description": "What was asked (never a password)"},
    },
    name="AuditEvent",
)
AUDIT_PAGE = body(
    {
        "success": TRUE,
        "events": array(AUDIT_EVENT),
        "next_before": null(
            {**STR, "description": "The `before` of the next page; null on the last page"}
        ),
    }
)
TOKEN_INFO = body(
    {
        "id": INT,
        "name": STR,
        "username": {**STR, "description": "The user the token acts as"},
        "created_at": TIME,
        "expires_at": null(TIME),
        "last_used_at": null({**TIME, "description": "Written at most once a minute"}),
    },
    name="ApiToken",
)
TOKEN_CREATED = body(
    {
        "success": TRUE,
        "message": const("Token created"),
        "token": {
            **STR,
            "description": "The secret, shown this once: send it as `Authorization: Bearer "
            "<token>`",
        },
        "token_info": TOKEN_INFO,
    }
)
TOKENS = body({"success": TRUE, "tokens": array(TOKEN_INFO)})
TOKEN_DELETED = body({"success": TRUE, "message": const("Token deleted")})
ENVIRONMENTS = array(ENVIRONMENT_SUMMARY)
ENVIRONMENT_CREATED = body(
    {
        "success": TRUE,
        "message": const("Environment created successfully"),
        "environment": body({"name": STR, "created_at": null(TIME)}, {"python_version": null(STR)}),
    }
)
ENVIRONMENT_RENAMED = body(
    {
        "success": TRUE,
        "message": const("Environment renamed successfully"),
        "old_name": STR,
        "new_name": STR,
        "updated_tasks_count": INT,
    }
)
PACKAGES_INSTALLED = body(
    {
        "success": TRUE,
        "message": const("Packages installed successfully"),
        "environment": STR,
        "installed_packages": STR_LIST,
    }
)
PACKAGES_REMOVED = body(
    {
        "success": TRUE,
        "message": const("Packages removed successfully"),
        "environment": STR,
        "removed_packages": STR_LIST,
    }
)
TASK_CREATED = body(
    {
        "success": TRUE,
        "message": const("Task scheduled successfully"),
        "task": TASK,
        "environment_message": STR,
    }
)
TASKS = array(TASK_LIST_ITEM)
_WEEK = {"minItems": 7, "maxItems": 7}
TASK_STATS = body(
    {
        "total": INT,
        **{s: INT for s in TASK_STATUS},
        "avg_duration": NUM,
        "min_duration": NUM,
        "max_duration": NUM,
        "success_rate": {**NUM, "description": "completed / (completed + failed), percent"},
        "last_7_days": body(
            {
                "dates": array(DATE, **_WEEK),
                "success_counts": array(INT, **_WEEK),
                "failed_counts": array(INT, **_WEEK),
            }
        ),
        "recent_tasks": {
            "type": "array",
            "maxItems": 5,
            "items": body(
                {
                    "task_id": INT,
                    "name": STR,
                    "status": {"enum": EXECUTION_STATUS},
                    "start_time": null(TIME),
                    "end_time": null(TIME),
                    "duration": null(NUM),
                },
                {"execution_id": STR},
            ),
        },
    }
)
HISTORY_PAGE = body(
    {
        "status": const("success"),
        "data": array(HISTORY_ITEM),
        "next_before": null(
            {**STR, "description": "The `before` of the next page; null on the last page"}
        ),
    }
)
TASK_DETAIL = body(
    {
        "success": TRUE,
        "task": TASK_WITH_EXECUTIONS,
        "execution_history": array(EXECUTION, description="Newest first, without logs"),
        "performance_metrics": body(
            {
                "durations": array(null(NUM)),
                "timestamps": array(null(TIME)),
                "peak_memories": array(null(NUM)),
                "avg_memories": array(null(NUM)),
            },
            description="Finished executions, oldest first",
        ),
        "latest_execution": null(EXECUTION_WITH_LOGS),
        "execution_history_next_before": null(
            {
                **STR,
                "description": "The `before` of the next "
                "page of execution_history; null on the last page",
            }
        ),
    }
)
TASK_PAUSED = body(
    {
        "success": TRUE,
        "message": {"enum": ["Task paused", "Task resumed"]},
        "task": TASK,
    }
)
RUN_QUEUED = body(
    {
        "success": TRUE,
        "message": const("Run queued"),
        "task_id": INT,
        "execution_id": {**STR, "description": "Follow it in the task's execution_history"},
    }
)
TASK_STOPPED = body(
    {
        "success": TRUE,
        "message": const("Task stopped successfully"),
        "task": body(
            {
                "task_id": INT,
                "task_name": STR,
                "status": {"enum": TASK_STATUS},
                "previous_status": const("running"),
            }
        ),
    }
)

# --- error bodies --------------------------------------------------------------------------------

_ANY = object()  # error: any text, always there


def _error(
    source: type[e.CtmError] | HttpError,
    *,
    message: Schema | None = None,
    error: Schema | object | None = None,
    fields: dict[str, Schema] | None = None,
    optional: dict[str, Schema] | None = None,
    description: str = "",
) -> Body:
    """The body ``_errors`` renders for ``source``: ``{"success": false, "message", "error"?,
    **details}``. Its wording comes from the class (``message``, ``messages``,
    ``error_format``), unless ``message``/``error`` say the raiser words it."""
    if isinstance(source, HttpError):
        name, default_message, error_format = source.name, source.message, ""
        choices: tuple[str, ...] = ()
        description = description or source.description
    else:
        name, default_message, error_format = (source.__name__, source.message, source.error_format)
        choices = source.messages
    if message is None:
        message = {"enum": list(choices)} if choices else text(default_message)
    if error is _ANY:
        error = STR
    elif error is None and error_format:
        error = text(error_format)
    required: dict[str, Schema] = {"success": const(False), "message": message}
    opt: dict[str, Schema] = {"error": STR, **(optional or {})}
    if error is not None:
        assert isinstance(error, dict)
        required["error"] = error
        del opt["error"]
    return body({**required, **(fields or {})}, opt, name=name, description=description)


def _field(name: str) -> dict[str, Schema]:
    """The optional ``field`` key naming the request field an error is about."""
    return {"field": {**const(name), "description": "The request field at fault"}}


_FAILURE_DETAILS = {"failed_packages": STR_LIST, "error_details": STR_LIST}
_OUTPUT = {**STR, "description": "The tool's full output"}

ERROR_BODIES: dict[type[e.CtmError], Body] = {
    getattr(e, str(b.name)): b
    for b in (
        _error(
            e.InvalidInput,
            message=STR,
            error=_ANY,
            fields={"field": STR},
            description="A field is missing, of the wrong type, out of range or too long",
        ),
        _error(e.InvalidEnvironmentName, error=_ANY, fields={"field": const("name")}),
        _error(
            e.InvalidPackageSpec, error=_ANY, fields={"field": STR, "invalid_packages": STR_LIST}
        ),
        _error(
            e.InvalidCredentialsFormat,
            error=_ANY,
            fields={"field": {"enum": ["username", "password", "new_password"]}},
        ),
        _error(e.ScheduleConflict),
        _error(e.InvalidCronExpression, optional=_field("cron_expression")),
        _error(e.InvalidDelay, optional=_field("delay_seconds")),
        _error(e.AuthenticationRequired),
        _error(e.InvalidCredentials),
        _error(
            e.TooManyLoginAttempts,
            fields={"retry_after": {**INT, "minimum": 1, "description": "Seconds"}},
        ),
        _error(e.AdminRequired),
        _error(e.NotOwner),
        _error(
            e.CrossSiteRequest,
            description="Sec-Fetch-Site: cross-site, or an Origin that is not the server's own",
        ),
        _error(e.ScriptOutsideRoots),
        _error(e.UserExists, optional=_field("username")),
        _error(e.UserNotFound),
        _error(e.LastAdmin),
        _error(
            e.UserOwnsTasks,
            fields={"tasks": {**INT, "description": "How many tasks the user owns"}},
        ),
        _error(e.WrongPassword, optional=_field("current_password")),
        _error(e.TokenNotFound),
        _error(
            e.StorageUnavailable,
            description="The disk is full or the database cannot be written: nothing was "
            "changed; reads still work",
        ),
        _error(e.EnvironmentNotFound),
        _error(e.EnvironmentExists, error=_ANY),
        _error(
            e.EnvironmentInUse,
            fields={"referencing_tasks": {**STR_LIST, "description": "script_path of each task"}},
        ),
        _error(e.PackageOperationFailed, error=_OUTPUT, fields=_FAILURE_DETAILS),
        _error(
            e.BackendFailure,
            message=STR,
            description="conda/pip failed in a way that is not the caller's fault",
        ),
        _error(e.TaskNotFound),
        _error(e.ExecutionNotFound),
        _error(e.TaskExists, optional=_field("task_name")),
        _error(e.ReuseMissingEnvironment, optional=_field("conda_env")),
        _error(e.ScriptNotFound, optional=_field("script")),
        _error(
            e.RequirementsFailed,
            error=_ANY,
            fields=_FAILURE_DETAILS,
            optional={
                "environment_state": {
                    **STR,
                    "description": "Existing environment only: unchanged, or may be inconsistent",
                },
                **_field("requirements"),
            },
        ),
        _error(e.TaskNotRunning, fields={"current_status": {"enum": TASK_STATUS}}),
        _error(e.TaskAlreadyActive),
        _error(
            e.TaskLimitReached,
            description="A non-admin already owns the most tasks one user may have",
        ),
    )
}
"""One body per domain error class; a subclass missing here is rendered as its base is."""

HTTP_ERROR_BODIES: dict[str, Body] = {
    x.name: _error(x, error=_ANY if x.with_error else None) for x in HTTP_ERRORS
}


def error_body_of(cls: type[e.CtmError]) -> Body:
    """The body declared for ``cls`` or its nearest base."""
    for klass in cls.__mro__:
        if klass in ERROR_BODIES:
            return ERROR_BODIES[klass]
    raise KeyError(f"no error body for {cls.__name__}")


# --- component schemas, in the order of the description ----------------------------------------


def _components() -> dict[str, Schema]:
    named: list[Body | str] = [
        USER,
        "LoginRequest",
        "CreateUserRequest",
        USER_RECORD,
        "UpdateUserRequest",
        "ChangePasswordRequest",
        AUDIT_EVENT,
        TOKEN_INFO,
        "CreateTokenRequest",
        ENVIRONMENT_SUMMARY,
        ENVIRONMENT_DETAIL,
        ENVIRONMENT_STATS,
        "CreateEnvironmentRequest",
        TASK,
        TASK_LIST_ITEM,
        TASK_WITH_EXECUTIONS,
        EXECUTION,
        EXECUTION_WITH_LOGS,
        "CreateTaskRequest",
        HISTORY_ITEM,
        "RenameEnvironmentRequest",
        "PackagesRequest",
        "RemovePackagesRequest",
        *ERROR_BODIES.values(),
        *HTTP_ERROR_BODIES.values(),
    ]
    out: dict[str, Schema] = {}
    for item in named:
        if isinstance(item, str):
            out[item] = REQUESTS[item]
        else:
            assert item.name is not None
            out[item.name] = item.schema()
    return out


COMPONENT_SCHEMAS = _components()
"""Every component schema, plain JSON Schema (``#/components/schemas``)."""
