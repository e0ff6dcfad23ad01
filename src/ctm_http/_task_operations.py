"""The task routes as the description shows them (the rest: ``_operations``)."""

from __future__ import annotations

from ctm_core import errors as e
from ctm_core.commands import MAX_PAGE
from ctm_http import _bodies as b
from ctm_http._op import PAGE_QUERY, Op

TASK_OPERATIONS: tuple[Op, ...] = (
    Op(
        method="POST",
        path="/api/tasks",
        operation_id="createTask",
        summary="Create a task",
        tag="tasks",
        ok_status=201,
        body="CreateTaskRequest",
        body_examples=(
            (
                "every 10 minutes",
                {
                    "script": "print('hello')",
                    "conda_env": "demo",
                    "task_name": "hello",
                    "cron_expression": "*/10 * * * *",
                },
            ),
        ),
        ok=b.TASK_CREATED,
        ok_examples=(
            (
                "scheduled",
                {
                    "success": True,
                    "message": "Task scheduled successfully",
                    "task": {
                        "task_id": 1,
                        "task_name": "hello",
                        "script_path": "/srv/ctm/scripts/task_1.py",
                        "conda_env": "demo",
                        "status": "scheduled",
                        "created_at": "2025-05-02 15:20:00",
                        "cron_expression": "*/10 * * * *",
                        "next_run_time": "2025-05-02 15:30:00",
                        "last_run_time": None,
                        "last_run_duration": None,
                        "requirements": None,
                    },
                    "environment_message": "Using existing environment 'demo'",
                },
            ),
        ),
        errors=(
            e.InvalidInput,
            e.InvalidEnvironmentName,
            e.ScheduleConflict,
            e.InvalidCronExpression,
            e.InvalidDelay,
            e.TaskExists,
            e.ReuseMissingEnvironment,
            e.ScriptNotFound,
            e.ScriptOutsideRoots,
            e.NotOwner,
            e.EnvironmentExists,
            e.EnvironmentInUse,
            e.PackageOperationFailed,
            e.RequirementsFailed,
            e.BackendFailure,
            e.EnvironmentNotFound,
            e.TaskLimitReached,
        ),
        error_examples=(
            (
                403,
                "task limit",
                {
                    "success": False,
                    "message": "Task limit reached",
                    "error": "At most 200 tasks per user",
                },
            ),
            (
                400,
                "both",
                {
                    "success": False,
                    "message": "Please specify either cron expression or delay seconds, not both",
                    "error": "Cannot specify both cron_expression and delay_seconds",
                },
            ),
            (
                400,
                "reuse",
                {
                    "success": False,
                    "message": "Cannot reuse non-existing environment",
                    "error": "Environment 'env_name' not found",
                },
            ),
        ),
        description="Neither cron_expression nor delay_seconds: runs once now. "
        "reuse_env false (default) creates a missing environment (with requirements). 404 "
        "only when the environment is deleted while its requirements are being installed. "
        "Per-run limits (timeout_seconds, memory_limit_mb, max_processes, cpu_limit) not "
        "given take the server's defaults at run time; values over the server's maxima are a "
        "400 naming the field. A non-admin who owns the most tasks allowed gets 403.",
    ),
    Op(
        method="GET",
        path="/api/tasks",
        operation_id="listTasks",
        summary="List tasks",
        tag="tasks",
        ok=b.TASKS,
    ),
    Op(
        method="GET",
        path="/api/tasks/stats",
        operation_id="taskStats",
        summary="Task statistics",
        tag="tasks",
        ok=b.TASK_STATS,
    ),
    Op(
        method="GET",
        path="/api/tasks/history",
        operation_id="taskHistory",
        summary="Executions of the retention period (default 30 days)",
        tag="tasks",
        ok=b.HISTORY_PAGE,
        description="Newest first, a page at a time (`limit`, `before`).",
        query=PAGE_QUERY,
        errors=(e.InvalidInput,),
    ),
    Op(
        method="GET",
        path="/api/tasks/{task_id}",
        operation_id="getTask",
        summary="Task detail with its executions",
        tag="tasks",
        ok=b.TASK_DETAIL,
        query=(
            *PAGE_QUERY,
            {
                "name": "history_limit",
                "in": "query",
                "required": False,
                "description": "The older name of `limit`",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            },
        ),
        errors=(e.TaskNotFound, e.InvalidInput),
        error_examples=(
            (404, "missing", {"success": False, "message": "Task with ID 1 not found"}),
        ),
    ),
    Op(
        method="DELETE",
        path="/api/tasks/{task_id}",
        operation_id="deleteTask",
        summary="Delete a task",
        tag="tasks",
        ok_status=204,
        ok_description="Deleted",
        errors=(e.TaskNotFound, e.NotOwner),
        description="Not in the original api.md: stops a running execution, cancels the "
        "schedule, deletes the task with its executions and logs.",
    ),
    Op(
        method="POST",
        path="/api/tasks/{task_id}/stop",
        operation_id="stopTask",
        summary="Stop a running task",
        tag="tasks",
        ok=b.TASK_STOPPED,
        ok_examples=(
            (
                "stopped",
                {
                    "success": True,
                    "message": "Task stopped successfully",
                    "task": {
                        "task_id": 1,
                        "task_name": "hello",
                        "status": "stopped",
                        "previous_status": "running",
                    },
                },
            ),
        ),
        errors=(e.TaskNotFound, e.NotOwner, e.TaskNotRunning),
        error_examples=(
            (
                400,
                "not running",
                {
                    "success": False,
                    "message": "Task is not in a running state",
                    "error": "Cannot stop a task with status: 'completed'",
                    "current_status": "completed",
                },
            ),
        ),
        description="SIGTERM to the run's process group, SIGKILL after the grace period. A "
        "cron task keeps its schedule.",
    ),
    *(
        Op(
            method="POST",
            path=f"/api/tasks/{{task_id}}/{verb}",
            operation_id=f"{verb}Task",
            summary=summary,
            tag="tasks",
            ok=b.TASK_PAUSED,
            errors=(e.TaskNotFound, e.NotOwner),
            description=description,
        )
        for verb, summary, description in (
            (
                "pause",
                "Pause a task",
                "The task keeps its schedule and fires nothing until resumed; a run going on "
                "goes on, and a run now still runs. Idempotent. The owner or an admin.",
            ),
            (
                "resume",
                "Resume a paused task",
                "A cron task continues with its first occurrence after now (occurrences missed "
                "while paused are not made up); a one-shot whose time passed runs now. "
                "Idempotent. The owner or an admin.",
            ),
        )
    ),
    Op(
        method="POST",
        path="/api/tasks/{task_id}/run",
        operation_id="runTask",
        summary="Run a task now",
        tag="tasks",
        ok_status=201,
        ok=b.RUN_QUEUED,
        ok_examples=(
            (
                "queued",
                {"success": True, "message": "Run queued", "task_id": 1, "execution_id": "e1f3"},
            ),
        ),
        errors=(e.TaskNotFound, e.NotOwner, e.TaskAlreadyActive),
        description="A run outside the schedule, which is not changed (a paused task runs "
        "too). It starts when a run slot is free, like any run. 409 while a run of the task is "
        "queued or running.",
    ),
)
