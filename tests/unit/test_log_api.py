"""GET /api/tasks/<id>/executions/<execution_id>/log over the real app wired to fakes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from starlette.testclient import TestClient

from ctm_adapters.settings import Settings
from ctm_core.logs import LogLine, LogRead
from ctm_core.models import Execution, ExecutionStatus
from ctm_http import _log_routes, openapi
from ctm_http.app import create_app
from tests.unit.conftest import fake_ports

PATH = "/api/tasks/{task_id}/executions/{execution_id}/log"
LOG = "first\nsecond ü\r\nprogress 1\rprogress 2\nno end"
SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def parts() -> dict[str, Any]:
    return fake_ports()


@pytest.fixture
def client(parts: dict[str, Any]) -> Iterator[TestClient]:
    settings = Settings(
        data_dir="/nonexistent/ctm",
        admin_password="admin-password",
        timezone="UTC",
        allowed_hosts=("testserver",),
    )
    with TestClient(create_app(settings, **parts), base_url="http://testserver") as c:
        yield c


def login(client: TestClient, username: str = "admin", password: str = "admin-password") -> None:
    r = client.post("/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text


def make_task(client: TestClient, parts: dict[str, Any]) -> int:
    """A cron task (nothing runs by itself) with three executions: a finished one with a log,
    a skipped one and one stopped before it started, neither with a log."""
    login(client)
    r = client.post(
        "/api/tasks",
        json={"script": "print(1)", "conda_env": "env", "cron_expression": "0 0 1 1 *"},
    )
    assert r.status_code == 201, r.text
    tid = int(r.json()["task"]["task_id"])
    repo, now = parts["repo"], parts["clock"].now()
    parts["files"].files["/data/logs/done.log"] = LOG
    repo.add_execution(
        Execution(
            id="done",
            task_id=tid,
            status=ExecutionStatus.COMPLETED,
            start_time=now - timedelta(seconds=5),
            end_time=now,
            duration=5.0,
            exit_code=0,
            log_path="/data/logs/done.log",
        )
    )
    repo.add_execution(
        Execution(
            id="skip",
            task_id=tid,
            status=ExecutionStatus.SKIPPED,
            scheduled_for=now,
            start_time=now,
            end_time=now,
            skip_count=1,
            first_skipped_at=now,
            last_skipped_at=now,
        )
    )
    repo.add_execution(Execution(id="never", task_id=tid, status=ExecutionStatus.STOPPED))
    return tid


def url(task_id: int, execution_id: str, query: str = "") -> str:
    return PATH.format(task_id=task_id, execution_id=execution_id) + query


def events(body: str) -> list[dict[str, Any]]:
    """Parse an event stream as a browser does: fields per event, data lines joined by \\n."""
    out = []
    for block in body.split("\n\n"):
        event: dict[str, Any] = {}
        data = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                event[name] = value
        if data:
            event["data"] = "\n".join(data)
        if event:
            out.append(event)
    return out


def test_the_whole_log_is_plain_text(client: TestClient, parts: dict[str, Any]) -> None:
    """200 text/plain; charset=utf-8, the log byte for byte, inline, with the cookie renewed."""
    tid = make_task(client, parts)
    r = client.get(url(tid, "done"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.content == LOG.encode()
    assert "content-disposition" not in r.headers
    assert "Max-Age=900" in r.headers["set-cookie"]


def test_download_is_an_attachment_with_a_file_name(
    client: TestClient, parts: dict[str, Any]
) -> None:
    """?download=1 (or true): the same bytes, Content-Disposition attachment; 0/false: inline;
    anything else: 400 naming the parameter."""
    tid = make_task(client, parts)
    for value in ("1", "true"):
        r = client.get(url(tid, "done", f"?download={value}"), headers=SSE)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; charset=utf-8"  # never a stream
        assert r.headers["content-disposition"] == (
            f'attachment; filename="ctm-task-{tid}-done.log"'
        )
        assert r.content == LOG.encode()
    assert "content-disposition" not in client.get(url(tid, "done", "?download=0")).headers
    r = client.get(url(tid, "done", "?download=yes"))
    assert r.status_code == 400
    assert r.json()["field"] == "download"


def test_runs_without_a_log_read_as_empty(client: TestClient, parts: dict[str, Any]) -> None:
    """A skipped run and one that never started have no log: 200 with an empty body, and an
    event stream that ends at once with their status."""
    tid = make_task(client, parts)
    for execution_id, status in (("skip", "skipped"), ("never", "stopped")):
        r = client.get(url(tid, execution_id))
        assert (r.status_code, r.content) == (200, b"")
        stream = events(client.get(url(tid, execution_id), headers=SSE).text)
        assert stream[-1]["event"] == "end"
        assert json.loads(stream[-1]["data"])["status"] == status
        assert [e for e in stream if "event" not in e and "data" in e] == []


def test_unknown_task_or_another_tasks_execution_is_404(
    client: TestClient, parts: dict[str, Any]
) -> None:
    """404 with the contract's bodies: an unknown task, an unknown execution, and an execution
    of another task (never its log)."""
    tid = make_task(client, parts)
    other = client.post(
        "/api/tasks",
        json={"script": "print(2)", "conda_env": "env", "cron_expression": "0 0 1 1 *"},
    ).json()["task"]["task_id"]
    r = client.get(url(999, "done"))
    assert r.status_code == 404
    assert r.json() == {"success": False, "message": "Task with ID 999 not found"}
    for task_id, execution_id in ((tid, "nope"), (other, "done")):
        for headers in ({}, SSE):
            r = client.get(url(task_id, execution_id), headers=headers)
            assert r.status_code == 404
            assert r.json() == {
                "success": False,
                "message": "Execution not found",
                "error": f"Task {task_id} has no execution '{execution_id}'",
            }
            schema = openapi.response_schema("GET", PATH, 404)
            jsonschema.validate(r.json(), schema)


def test_the_log_needs_a_session(client: TestClient, parts: dict[str, Any]) -> None:
    """Without a session: 401, as text or as a stream; any logged-in user may read it."""
    tid = make_task(client, parts)
    client.post("/create_user", json={"username": "bob", "password": "bob-password"})
    client.post("/logout")
    for headers in ({}, SSE):
        r = client.get(url(tid, "done"), headers=headers)
        assert r.status_code == 401
        assert r.json()["message"] == "Authentication required"
    login(client, "bob", "bob-password")
    assert client.get(url(tid, "done")).content == LOG.encode()


def test_a_finished_runs_stream_is_its_lines_then_end(
    client: TestClient, parts: dict[str, Any]
) -> None:
    """text/event-stream: every line in order, one event each with the offset after it as id
    (\\r\\n is a line end, a lone \\r a line break inside the event), the unended last line,
    then end with the final status."""
    tid = make_task(client, parts)
    r = client.get(url(tid, "done"), headers=SSE)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-store"
    stream = events(r.text)
    assert stream[0] == {"retry": str(_log_routes.RETRY_MILLISECONDS)}
    lines = [e for e in stream[1:] if "event" not in e]
    assert [e["data"] for e in lines] == ["first", "second ü", "progress 1\nprogress 2", "no end"]
    raw = LOG.encode()
    assert [int(e["id"]) for e in lines] == [
        raw.index(b"\n") + 1,
        raw.index(b"\r\n") + 2,
        raw.index(b"2\n") + 2,
        len(raw),
    ]
    assert stream[-1] == {
        "event": "end",
        "data": json.dumps({"status": "completed", "exit_code": 0, "note": None}),
    }


def test_a_stream_resumes_after_last_event_id(client: TestClient, parts: dict[str, Any]) -> None:
    """An EventSource that reconnects sends Last-Event-ID: the lines after it only."""
    tid = make_task(client, parts)
    after_first = str(len(b"first\n"))
    r = client.get(url(tid, "done"), headers={**SSE, "Last-Event-ID": after_first})
    lines = [e["data"] for e in events(r.text) if "event" not in e and "data" in e]
    assert lines == ["second ü", "progress 1\nprogress 2", "no end"]


def test_streams_beyond_the_limit_are_refused(
    client: TestClient, parts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every stream slot taken: 503 with the documented body; text is still served; a
    slot is given back when its stream ends."""
    tid = make_task(client, parts)
    monkeypatch.setattr(_log_routes, "MAX_LOG_STREAMS", 0)
    r = client.get(url(tid, "done"), headers=SSE)
    assert r.status_code == 503
    assert r.json()["message"] == "Too many live log streams"
    jsonschema.validate(r.json(), openapi.response_schema("GET", PATH, 503))
    assert client.get(url(tid, "done")).status_code == 200
    monkeypatch.setattr(_log_routes, "MAX_LOG_STREAMS", 1)
    for _ in range(3):  # one slot, reused: each ended stream gave it back
        assert client.get(url(tid, "done"), headers=SSE).status_code == 200
    assert client.app.state.log_streams.open == 0  # type: ignore[attr-defined]


def test_line_events_never_hold_a_bare_line_break() -> None:
    """A carriage return splits a line into data fields; an event is always one block."""
    assert _log_routes.line_event("a\rb\r") == "data: a\ndata: b\ndata: \n\n"
    assert _log_routes.line_event("") == "data: \n\n"


class ScriptedFollower:
    """A LogFollower stand-in: hands out a script of reads, then is final."""

    def __init__(self, reads: list[LogRead], *, rewritten_after: int | None = None) -> None:
        self.reads = reads
        self.rewritten = False
        self.rewritten_after = rewritten_after
        self.refreshes = 0
        self.execution: Execution | None = Execution(
            id="e", task_id=1, status=ExecutionStatus.RUNNING, log_path="/l"
        )

    @property
    def final(self) -> bool:
        return self.execution is None or self.execution.status != ExecutionStatus.RUNNING

    def read(self) -> LogRead:
        if self.rewritten_after is not None and not self.reads:
            self.rewritten = True
        return self.reads.pop(0) if self.reads else LogRead([], caught_up=True)

    def refresh(self) -> Execution | None:
        self.refreshes += 1
        if self.refreshes >= 2 and self.execution is not None:
            self.execution = Execution(
                id="e", task_id=1, status=ExecutionStatus.FAILED, exit_code=1, log_path="/l"
            )
        return self.execution

    def finish(self) -> list[LogLine]:
        return [LogLine("unended", 99)]

    def tail_lines(self) -> list[str]:
        return ["[ctm: log truncated, showing its last 4 of 9 bytes]", "tail"]


def collect(follower: ScriptedFollower, until: Callable[[list[str]], bool]) -> list[str]:
    async def run() -> list[str]:
        got: list[str] = []
        stream = _log_routes._events(follower)  # type: ignore[arg-type]
        async for chunk in stream:
            got.append(chunk)
            if until(got):
                break
        await stream.aclose()
        return got

    return asyncio.run(run())


def test_a_stream_pings_while_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without events for HEARTBEAT_SECONDS, a `: ping` comment keeps the connection open."""
    monkeypatch.setattr(_log_routes, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(_log_routes, "STATUS_SECONDS", 3600.0)
    monkeypatch.setattr(_log_routes, "HEARTBEAT_SECONDS", 0.0)
    follower = ScriptedFollower([LogRead([LogLine("one", 4)], caught_up=True)])
    got = collect(follower, lambda chunks: ": ping\n\n" in chunks)
    assert got[1] == "id: 4\ndata: one\n\n"


def test_a_stream_ends_with_the_status_and_the_last_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines read before the end, the unended last line, then end with the final status."""
    monkeypatch.setattr(_log_routes, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(_log_routes, "STATUS_SECONDS", 0.0)
    follower = ScriptedFollower(
        [LogRead([LogLine("one", 4)], caught_up=False), LogRead([LogLine("two", 8)], True)]
    )
    body = "".join(collect(follower, lambda chunks: "event: end" in chunks[-1]))
    assert [e.get("data") for e in events(body)][1:] == [
        "one",
        "two",
        "unended",
        json.dumps({"status": "failed", "exit_code": 1, "note": None}),
    ]


def test_a_rewritten_log_is_told_then_its_tail_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log that passed its cap while followed: a line says so once, and after the run's end
    its tail comes, then end."""
    monkeypatch.setattr(_log_routes, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(_log_routes, "STATUS_SECONDS", 0.0)
    follower = ScriptedFollower([LogRead([LogLine("one", 4)], True)], rewritten_after=1)
    body = "".join(collect(follower, lambda chunks: "event: end" in chunks[-1]))
    data = [e.get("data") for e in events(body)][1:]
    assert data[:2] == ["one", _log_routes.CUT_NOTICE]
    assert data[2:4] == ["[ctm: log truncated, showing its last 4 of 9 bytes]", "tail"]
    assert data.count(_log_routes.CUT_NOTICE) == 1 and "unended" not in data
