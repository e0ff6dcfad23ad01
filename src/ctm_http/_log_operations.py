"""The log route as the description shows it (the rest: ``_operations``)."""

from __future__ import annotations

from ctm_core import errors as e
from ctm_http._errors import TOO_MANY_LOG_STREAMS
from ctm_http._log_routes import HEARTBEAT_SECONDS, MAX_LOG_STREAMS
from ctm_http._op import Op
from ctm_http._schema import STR

LOG_OPERATIONS: tuple[Op, ...] = (
    Op(
        method="GET",
        path="/api/tasks/{task_id}/executions/{execution_id}/log",
        operation_id="getExecutionLog",
        summary="One run's whole log, or its lines as they come",
        tag="tasks",
        ok_media=(
            (
                "text/plain",
                {**STR, "description": "The log as kept, byte for byte (UTF-8 as written)"},
            ),
            (
                "text/event-stream",
                {
                    **STR,
                    "description": "Server-sent events: one per line (`id`: the byte offset "
                    "after it), then `event: end`",
                },
            ),
        ),
        ok_headers=(
            (
                "Content-Disposition",
                {
                    "required": False,
                    "schema": STR,
                    "description": 'With download=1: attachment; filename="ctm-task-<task '
                    'id>-<execution id>.log"',
                },
            ),
        ),
        query=(
            {
                "name": "download",
                "in": "query",
                "required": False,
                "schema": {
                    "type": "string",
                    "enum": ["0", "1", "true", "false"],
                    "description": "1 or true: the text as an attachment (never an event stream)",
                },
            },
        ),
        errors=(e.TaskNotFound, e.ExecutionNotFound, e.InvalidInput),
        http_errors=(TOO_MANY_LOG_STREAMS,),
        error_examples=(
            (
                404,
                "not this task's run",
                {
                    "success": False,
                    "message": "Execution not found",
                    "error": "Task 1 has no execution '9f2c4e1a0b3d5c7e'",
                },
            ),
        ),
        description="Any run's log as kept: up to `CTM_LOG_MAX_BYTES` a copy of the output, "
        "past it its head, a line saying how much was left out, and its tail (docs/runs.md), "
        "plus any line ctm added. `text/plain; charset=utf-8`; empty for a run without a log "
        "(queued, skipped, never started). `download=1`: the same as an attachment. "
        "With `Accept: text/event-stream` (and no download), server-sent events while the run "
        "goes on: the lines written so far, then each new line once it ends, in order, one "
        "event each (`id` the byte offset after the line: an EventSource that reconnects "
        "resumes after the last line it got; a carriage return inside a line starts another "
        "`data` field); lines longer than 64 KiB come in pieces. Then `event: end` with "
        '`{"status", "exit_code", "note"}` (status null: the run was deleted meanwhile), '
        "and the stream closes; a finished run's log comes whole, then `end` at once. A "
        f"comment `: ping` after {HEARTBEAT_SECONDS:.0f} s without an event. When the log "
        "passes its size cap while it is followed, a line says so, and the end of the log "
        "follows when the run ends. At most "
        f"{MAX_LOG_STREAMS} live streams at once per server: one more is refused (503). Any "
        "logged-in user may read any run's log, as for the task detail.",
    ),
)
