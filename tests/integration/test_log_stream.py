"""A run's log over HTTP against a real ``ctm serve``: live lines as server-sent events, the
whole log as text, a stream that does not hold the server's shutdown; and a follower on a real
capped log file."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ctm_adapters._logcap import LogCapper
from ctm_adapters.files import LocalFileStore
from ctm_adapters.memory import InMemoryRepository
from ctm_core.logs import LogFollower
from ctm_core.models import Execution, ExecutionStatus, Task, TaskStatus
from tests.integration.conftest import Server
from tests.integration.test_server_tasks import create, wait_for

LINES = 20
NUMBERED = (
    "import sys, time\n"
    f"for i in range({LINES}):\n"
    "    print(f'line {i}', flush=True)\n"
    "    if i == 5:\n"
    "        print('partial ', end='', flush=True); time.sleep(0.2); print('done', flush=True)\n"
    "    time.sleep(0.1)\n"
)
EXPECTED = (
    [f"line {i}" for i in range(6)] + ["partial done"] + [f"line {i}" for i in range(6, LINES)]
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("logs") / "data")
    server.start()
    with server.client() as c:
        server.login(c)
        r = c.post("/api/conda/environment", json={"name": "runs"})
        assert r.status_code == 201, r.text
    yield server
    server.stop()


def latest_execution(c: httpx.Client, tid: int) -> str:
    """The id of the task's first execution, once it exists."""

    def find() -> str | None:
        detail = c.get(f"/api/tasks/{tid}").json()
        latest = detail.get("latest_execution")
        return latest["execution_id"] if latest else None

    return str(wait_for(find, what="an execution"))


def read_events(response: httpx.Response) -> Iterator[tuple[float, dict[str, Any]]]:
    """(time received, event) for each event of a stream, as a browser parses them."""
    event: dict[str, Any] = {}
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                event["data"] = "\n".join(data)
            if event:
                yield time.monotonic(), event
            event, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            event[name] = value


def test_a_live_stream_gets_every_line_in_order_then_end(srv: Server) -> None:
    """A script printing numbered lines over ~2 s: an SSE client gets each line in order as it
    is printed (the first long before the last), a partial line once it ends, then end with
    the final status; the text route then has the same lines."""
    with srv.client() as c:
        srv.login(c)
        tid = create(c, NUMBERED)
        eid = latest_execution(c, tid)
        url = f"/api/tasks/{tid}/executions/{eid}/log"
        got: list[tuple[float, dict[str, Any]]] = []
        with c.stream("GET", url, headers={"Accept": "text/event-stream"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for received in read_events(r):
                got.append(received)
                if received[1].get("event") == "end":
                    break
        lines = [(t, e) for t, e in got if "event" not in e and "data" in e]
        assert [e["data"] for _, e in lines] == EXPECTED
        offsets = [int(e["id"]) for _, e in lines]
        assert offsets == sorted(offsets)
        assert lines[-1][0] - lines[0][0] > 1.0, "the lines came all at once, not live"
        end = json.loads(got[-1][1]["data"])
        assert end == {"status": "completed", "exit_code": 0, "note": None}

        text = c.get(url)
        assert text.status_code == 200
        assert text.headers["content-type"] == "text/plain; charset=utf-8"
        assert text.text.splitlines() == EXPECTED
        download = c.get(url, params={"download": "1"})
        assert download.headers["content-disposition"] == (
            f'attachment; filename="ctm-task-{tid}-{eid}.log"'
        )
        assert download.content == text.content


def test_an_open_stream_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    """SIGTERM with a live log stream open: the server closes the stream and exits promptly
    instead of waiting for the run to end."""
    server = Server(tmp_path / "data")
    server.start()
    try:
        with server.client() as c:
            server.login(c)
            r = c.post("/api/conda/environment", json={"name": "runs"})
            assert r.status_code == 201, r.text
            tid = create(c, "import time\nprint('started', flush=True)\ntime.sleep(120)\n")
            eid = latest_execution(c, tid)
            url = f"/api/tasks/{tid}/executions/{eid}/log"
            with c.stream("GET", url, headers={"Accept": "text/event-stream"}) as r:
                events = read_events(r)
                for _, event in events:
                    if event.get("data") == "started":
                        break
                started = time.monotonic()
                assert server.proc is not None
                server.proc.terminate()
                server.proc.wait(timeout=20)
                assert time.monotonic() - started < 15
                rest: list[dict[str, Any]] = []
                with contextlib.suppress(httpx.RemoteProtocolError):  # cut: no last chunk
                    rest += [e for _, e in events]
                assert all(e.get("event") != "end" for e in rest)
    finally:
        server.stop()


def test_a_follower_never_hands_out_bytes_a_capped_log_rewrote(tmp_path: Path) -> None:
    """Following a real log file while LogCapper writes it past its cap: every line handed out
    is a line of the output, in order, until the follower sees the rewrite; the log's end is
    then its tail."""
    files = LocalFileStore(str(tmp_path / "data"))
    path = files.log_path("e1")
    repo = InMemoryRepository()
    task = repo.add_task(
        Task(
            id=0,
            name="t",
            owner_id=1,
            script_path="/s/t.py",
            script_stored=True,
            conda_env="demo",
            requirements=None,
            cron_expression=None,
            delay_seconds=None,
            timeout_seconds=None,
            status=TaskStatus.RUNNING,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )
    execution = Execution(id="e1", task_id=task.id, status=ExecutionStatus.RUNNING, log_path=path)
    repo.add_execution(execution)
    follower = LogFollower(files, repo, execution)
    output = [f"output line {i:04d}" for i in range(400)]
    capper = LogCapper(open(path, "wb", buffering=0), 2048, flush_interval=0.0)  # noqa: SIM115
    handed: list[str] = []
    for line in output:
        capper.feed((line + "\n").encode())
        handed += [x.text for x in follower.read().lines]
    capper.close()
    assert follower.rewritten
    assert handed == output[: len(handed)] and len(handed) > 10
    assert follower.tail_lines()[-1] == output[-1]
