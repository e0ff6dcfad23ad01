"""A run's log: ``GET /api/tasks/<id>/executions/<execution_id>/log``.

As text (``text/plain``; ``?download=1``: as an attachment), or, when the client accepts
``text/event-stream``, as server-sent events while the run goes on: the lines already written,
then each new line as it is written, then an ``end`` event with the final status. The reading
is ``ctm_core.logs.LogFollower``'s; this module polls it off the event loop and frames events.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ctm_core.errors import InvalidInput
from ctm_core.logs import LogFollower, LogLine
from ctm_core.models import Principal
from ctm_http._errors import TOO_MANY_LOG_STREAMS, RequestError
from ctm_http._request import authenticated, call, services, task_id_of

MAX_LOG_STREAMS = 100
"""Live log streams open at once on one server; one more is refused (503)."""
POLL_SECONDS = 0.25
"""How often a stream looks for new output in the log."""
STATUS_SECONDS = 1.0
"""How often a stream reads the execution's status (to end with it)."""
HEARTBEAT_SECONDS = 15.0
"""A comment line after this long without an event, so proxies keep the connection open."""
RETRY_MILLISECONDS = 2000
"""The reconnection delay an EventSource is told (it resumes after the last line it got)."""
NOTES_ROOM = 64 * 1024
"""Room past the log cap for the lines ctm adds at the end of a run."""
CUT_NOTICE = (
    "[ctm: the log passed its size cap while it was followed: no more lines until the run "
    "ends, then its end]"
)
_DOWNLOAD = {"1": True, "true": True, "0": False, "false": False}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


@authenticated
async def execution_log(request: Request, actor: Principal) -> Response:
    svc = services(request)
    task_id = task_id_of(request)
    execution_id = request.path_params["execution_id"]
    download = request.query_params.get("download")
    as_file = _DOWNLOAD.get(download) if download is not None else False
    if as_file is None:
        raise InvalidInput("download", "download must be 0, 1, true or false")
    if not as_file and "text/event-stream" in request.headers.get("accept", ""):
        offset = _resume_offset(request)
        follower = await call(svc.tasks.follow_log, task_id, execution_id, offset=offset)
        slots = _slots(request)
        if not slots.take():
            raise RequestError(
                503,
                TOO_MANY_LOG_STREAMS.message,
                f"At most {slots.limit} live log streams at once: try again later, or read "
                "the log as text",
            )
        return EventStream(_events(follower), slots)
    kept = await call(
        svc.tasks.execution_log,
        task_id,
        execution_id,
        max_bytes=svc.settings.log_max_bytes + NOTES_ROOM,
    )
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
    if as_file:
        name = _SAFE_NAME.sub("_", execution_id)[:64]
        headers["Content-Disposition"] = f'attachment; filename="ctm-task-{task_id}-{name}.log"'
    return Response(kept, media_type="text/plain; charset=utf-8", headers=headers)


def _resume_offset(request: Request) -> int:
    """The ``Last-Event-ID`` an EventSource sends when it reconnects: the offset after the
    last line it got (anything else: from the start)."""
    value = request.headers.get("last-event-id", "")
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else 0


# --- the stream --------------------------------------------------------------------------------


@attrs.define
class StreamSlots:
    """How many live log streams are open (one event loop: no lock needed)."""

    limit: int
    open: int = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


def _slots(request: Request) -> StreamSlots:
    state = request.app.state
    slots: StreamSlots | None = getattr(state, "log_streams", None)
    if slots is None:
        slots = state.log_streams = StreamSlots(MAX_LOG_STREAMS)
    slots.limit = MAX_LOG_STREAMS
    return slots


class EventStream(StreamingResponse):
    """A ``text/event-stream`` answer that gives its slot back however it ends (finished,
    client gone, server stopping), even when its events were never read."""

    def __init__(self, events: AsyncIterator[str], slots: StreamSlots) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._slots: StreamSlots | None = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._slots is not None:
                self._slots.give_back()
                self._slots = None


async def _events(follower: LogFollower) -> AsyncIterator[str]:
    """The lines of the log, new ones as they come, then ``end``; a comment now and then."""
    loop = asyncio.get_running_loop()
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    last_event = last_status = loop.time()
    told_cut = False
    while True:
        final = follower.final  # as last read: everything logged before it is in the file
        while True:
            read = await call(follower.read)
            if read.lines:
                yield "".join(line_event(line) for line in read.lines)
                last_event = loop.time()
            if read.caught_up:
                break
        if follower.rewritten and not told_cut:
            told_cut = True
            yield line_event(CUT_NOTICE)
            last_event = loop.time()
        if final:
            if follower.rewritten:
                tail = await call(follower.tail_lines)
                yield "".join(line_event(text) for text in tail)
            else:
                yield "".join(line_event(line) for line in follower.finish())
            yield end_event(follower)
            return
        now = loop.time()
        if now - last_status >= STATUS_SECONDS:
            await call(follower.refresh)
            last_status = now
            continue
        if now - last_event >= HEARTBEAT_SECONDS:
            yield ": ping\n\n"
            last_event = now
        await asyncio.sleep(POLL_SECONDS)


def line_event(line: LogLine | str) -> str:
    """One log line as one event: its id the offset after it (a ``str`` line has none); a
    carriage return inside the line (a progress bar) starts another ``data`` field, which the
    client reads as a line break."""
    text = line.text if isinstance(line, LogLine) else line
    head = f"id: {line.end}\n" if isinstance(line, LogLine) else ""
    return head + "".join(f"data: {part}\n" for part in text.split("\r")) + "\n"


def end_event(follower: LogFollower) -> str:
    """``end``, with the execution's final status (``null`` when it was deleted meanwhile)."""
    execution = follower.execution
    data: dict[str, Any] = {"status": None, "exit_code": None, "note": None}
    if execution is not None:
        data = {
            "status": str(execution.status),
            "exit_code": execution.exit_code,
            "note": execution.note,
        }
    return f"event: end\ndata: {json.dumps(data)}\n\n"


ROUTES = [
    Route("/api/tasks/{task_id:int}/executions/{execution_id}/log", execution_log, methods=["GET"]),
]
