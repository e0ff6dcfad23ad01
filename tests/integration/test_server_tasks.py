"""Tasks over HTTP against a real server: real venvs, real child processes, real SQLite."""

from __future__ import annotations

import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import Server


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("tasks") / "data", extra_env={"CTM_STOP_GRACE_SECONDS": "2"}
    )
    server.start()
    with server.client() as c:
        server.login(c)
        r = c.post("/api/conda/environment", json={"name": "runs"})
        assert r.status_code == 201, r.text
    yield server
    server.stop()


def task_status(c: httpx.Client, tid: int) -> str:
    return str(c.get(f"/api/tasks/{tid}").json()["task"]["status"])


def create(c: httpx.Client, script: str, **extra: Any) -> int:
    r = c.post("/api/tasks", json={"script": script, "conda_env": "runs", **extra})
    assert r.status_code == 201, r.text
    return int(r.json()["task"]["task_id"])


def test_immediate_task_completes_with_logs_and_metrics(c: httpx.Client) -> None:
    """A run-now task ends completed with its output, duration, memory and exit code."""
    tid = create(c, "import sys\nprint('out line')\nprint('err line', file=sys.stderr)\n")
    wait_for(lambda: task_status(c, tid) == "completed", what="completion")
    detail = c.get(f"/api/tasks/{tid}").json()
    latest = detail["latest_execution"]
    assert latest["exit_code"] == 0 and latest["status"] == "completed"
    assert "out line" in latest["logs"] and "err line" in latest["logs"]
    assert 0 < latest["duration"] < 5
    assert latest["peak_memory"] > 0 and latest["avg_memory"] > 0
    assert detail["performance_metrics"]["durations"] == [latest["duration"]]


def test_failing_script_is_failed_with_its_exit_code(c: httpx.Client) -> None:
    """A script exiting 3 is failed with exit_code 3."""
    tid = create(c, "raise SystemExit(3)\n")
    wait_for(lambda: task_status(c, tid) == "failed", what="failure")
    assert c.get(f"/api/tasks/{tid}").json()["latest_execution"]["exit_code"] == 3


def test_delayed_task_starts_after_its_delay(c: httpx.Client) -> None:
    """delay_seconds 2: the run starts 2 s (+-0.5 s) after the task was created."""
    script = "import time\nprint(repr(time.time()))\n"
    before = time.time()
    tid = create(c, script, delay_seconds=2)
    after = time.time()
    assert task_status(c, tid) == "scheduled"
    wait_for(lambda: task_status(c, tid) == "completed", what="delayed run")
    printed = float(c.get(f"/api/tasks/{tid}").json()["latest_execution"]["logs"].split()[0])
    assert before + 1.5 <= printed <= after + 2.5 + 0.5  # start + interpreter start-up


def test_cron_task_with_seconds_runs_repeatedly(c: httpx.Client) -> None:
    """A 6-field cron every 2 seconds fires again and again and keeps its schedule."""
    tid = create(c, "print('tick')\n", cron_expression="* * * * * */2")
    wait_for(
        lambda: len(c.get(f"/api/tasks/{tid}").json()["execution_history"]) >= 3,
        timeout=20,
        what="three cron runs",
    )
    detail = c.get(f"/api/tasks/{tid}").json()
    assert detail["task"]["next_run_time"] is not None
    starts = sorted(
        datetime.strptime(e["start_time"], "%Y-%m-%d %H:%M:%S")
        for e in detail["execution_history"]
        if e["start_time"]
    )  # not queued
    assert len(set(starts)) == len(starts)
    assert c.delete(f"/api/tasks/{tid}").status_code == 204


def marked(marker: str) -> list[int]:
    """Pids (as the test sees them) of live processes whose command line holds ``marker``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(p.info["cmdline"] or ())
        if marker in cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p.pid)
    return found


def run_pid(c: httpx.Client, tid: int) -> int | None:
    """The pid (as the test sees it) of the python running the task's stored script."""
    path = c.get(f"/api/tasks/{tid}").json()["task"]["script_path"]
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = p.info["cmdline"] or []
        if (
            cmdline
            and cmdline[-1] == path
            and "python" in cmdline[0]
            and p.info["status"] != psutil.STATUS_ZOMBIE
        ):
            return p.pid
    return None


def test_stop_ends_the_run_and_every_process(c: httpx.Client) -> None:
    """Stop: status stopped, and no process of the run (grandchild in its own session) lives."""
    marker = f"stop-marker-{uuid.uuid4().hex}"
    inner = (
        "import os, subprocess, sys, time\n"
        "os.setsid()\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)',"
        f" {marker!r}])\n"
        "time.sleep(600)\n"
    )
    script = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {inner!r}, {marker!r}])\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    tid = create(c, script)
    wait_for(lambda: len(marked(marker)) >= 2, what="the child and the grandchild")
    r = c.post(f"/api/tasks/{tid}/stop")
    assert r.status_code == 200, r.text
    assert r.json()["task"]["status"] == "stopped"
    assert r.json()["task"]["previous_status"] == "running"
    assert marked(marker) == []
    latest = c.get(f"/api/tasks/{tid}").json()["latest_execution"]
    assert latest["status"] == "stopped" and latest["exit_code"] < 0


def test_stats_and_history_agree_with_what_ran(c: httpx.Client) -> None:
    """Counts in stats and rows in history match the executions the server recorded."""
    tasks = c.get("/api/tasks").json()
    stats = c.get("/api/tasks/stats").json()
    assert stats["total"] == len(tasks)
    by_status: dict[str, int] = {}
    for t in tasks:
        by_status[t["status"]] = by_status.get(t["status"], 0) + 1
    for key in ("scheduled", "running", "completed", "failed"):
        assert stats[key] == by_status.get(key, 0)
    history = c.get("/api/tasks/history").json()["data"]
    executions = [
        e
        for t in tasks
        for e in c.get(f"/api/tasks/{t['task_id']}").json()["execution_history"]
        if e["status"] != "skipped"
    ]
    assert {h["execution_id"] for h in history} == {e["execution_id"] for e in executions}
    done = [e for e in executions if e["status"] in ("completed", "failed", "stopped")]
    assert sum(stats["last_7_days"]["success_counts"]) == sum(
        e["status"] == "completed" for e in done
    )


def test_kill_9_then_restart_resolves_everything(tmp_path: Path) -> None:
    """After kill -9: nothing stays running (a run that cannot be adopted, here because its
    supervisor's files are lost, is stopped and failed), the pending one-shot runs, cron
    resumes."""
    srv = Server(tmp_path / "data")
    srv.start()
    try:
        with srv.client() as c:
            srv.login(c)
            assert c.post("/api/conda/environment", json={"name": "k9"}).status_code == 201
            script = "import os, time\n"
            long = c.post(
                "/api/tasks", json={"script": script + "time.sleep(600)\n", "conda_env": "k9"}
            ).json()["task"]["task_id"]
            pending = c.post(
                "/api/tasks",
                json={"script": "print('late')\n", "conda_env": "k9", "delay_seconds": 3},
            ).json()["task"]["task_id"]
            cron = c.post(
                "/api/tasks",
                json={
                    "script": "print('c')\n",
                    "conda_env": "k9",
                    "cron_expression": "* * * * * */2",
                },
            ).json()["task"]["task_id"]
            wait_for(lambda: task_status(c, long) == "running", what="long run")
            orphan = c.get(f"/api/tasks/{long}").json()
            pid = int(wait_for(lambda: run_pid(c, long), what="pid"))
            srv.stop(signal.SIGKILL)
            assert psutil.pid_exists(pid), "the run outlives a killed server"
            for state in (tmp_path / "data").rglob("*.log.run"):
                shutil.rmtree(state)  # nothing left to adopt the runs by
            srv.start()
            srv.login(c)
            wait_for(lambda: task_status(c, long) == "failed", what="interrupted run resolved")
            latest = c.get(f"/api/tasks/{long}").json()["latest_execution"]
            assert "server stopped" in latest["logs"]
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            wait_for(lambda: task_status(c, pending) == "completed", what="pending one-shot")
            n = len(c.get(f"/api/tasks/{cron}").json()["execution_history"])
            wait_for(
                lambda: len(c.get(f"/api/tasks/{cron}").json()["execution_history"]) > n,
                timeout=15,
                what="cron resumed",
            )
            assert all(
                t["status"] != "running" or t["task_id"] == cron for t in c.get("/api/tasks").json()
            )
            assert orphan["task"]["status"] == "running"
    finally:
        srv.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "graceful"])
def test_a_run_survives_a_server_restart(tmp_path: Path, sig: int) -> None:
    """A run going on when the server dies (or is restarted gracefully) keeps running while it
    is down; the restarted server adopts it and records its real end: exit code, duration, the
    whole log and its memory."""
    srv = Server(tmp_path / "data")
    srv.start()
    try:
        with srv.client() as c:
            srv.login(c)
            assert c.post("/api/conda/environment", json={"name": "sv"}).status_code == 201
            script = (
                "import os, time\n"
                "for i in range(8):\n    print(f'tick {i}', flush=True)\n"
                "    time.sleep(0.5)\nprint('done')\n"
            )
            tid = c.post("/api/tasks", json={"script": script, "conda_env": "sv"}).json()["task"][
                "task_id"
            ]
            wait_for(
                lambda: (
                    "tick 1"
                    in (c.get(f"/api/tasks/{tid}").json()["latest_execution"] or {}).get("logs", "")
                ),
                what="first lines",
            )
            pid = int(wait_for(lambda: run_pid(c, tid), what="pid"))
            srv.stop(sig)
            assert psutil.pid_exists(pid), "the run goes on while the server is down"
            time.sleep(1.0)
            srv.start()
            srv.login(c)
            assert task_status(c, tid) in ("running", "completed")
            wait_for(lambda: task_status(c, tid) == "completed", what="adopted run's end")
            latest = c.get(f"/api/tasks/{tid}").json()["latest_execution"]
            assert latest["exit_code"] == 0
            for i in range(8):
                assert f"tick {i}" in latest["logs"]
            assert "done" in latest["logs"] and "server" not in latest["logs"]
            assert 3.8 <= latest["duration"] <= 6.0
            assert latest["peak_memory"] > 1 and latest["avg_memory"] > 0
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        srv.stop()


def test_an_adopted_run_can_be_stopped(tmp_path: Path) -> None:
    """After a restart the adopted run is still ``running`` and a user can stop it."""
    srv = Server(tmp_path / "data", extra_env={"CTM_STOP_GRACE_SECONDS": "2"})
    srv.start()
    try:
        with srv.client() as c:
            srv.login(c)
            assert c.post("/api/conda/environment", json={"name": "sv"}).status_code == 201
            script = "import os, time\ntime.sleep(600)\n"
            tid = c.post("/api/tasks", json={"script": script, "conda_env": "sv"}).json()["task"][
                "task_id"
            ]
            pid = int(wait_for(lambda: run_pid(c, tid), what="pid"))
            srv.stop(signal.SIGKILL)
            srv.start()
            srv.login(c)
            assert task_status(c, tid) == "running"
            assert psutil.pid_exists(pid)
            r = c.post(f"/api/tasks/{tid}/stop")
            assert r.status_code == 200, r.text
            wait_for(lambda: task_status(c, tid) == "stopped", what="stopped")
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        srv.stop()


def test_in_process_runs_are_failed_after_kill_9(tmp_path: Path) -> None:
    """CTM_SUPERVISED_RUNS=0: runs are the server's children; after kill -9 they are stopped and
    recorded failed at the next start."""
    srv = Server(tmp_path / "data", extra_env={"CTM_SUPERVISED_RUNS": "0"})
    srv.start()
    try:
        with srv.client() as c:
            srv.login(c)
            assert c.post("/api/conda/environment", json={"name": "ip"}).status_code == 201
            quick = create_in(c, "ip", "print('quick')\n")
            wait_for(lambda: task_status(c, quick) == "completed", what="quick run")
            script = "import os, time\ntime.sleep(600)\n"
            long = create_in(c, "ip", script)
            pid = int(wait_for(lambda: run_pid(c, long), what="pid"))
            srv.stop(signal.SIGKILL)
            srv.start()
            srv.login(c)
            wait_for(lambda: task_status(c, long) == "failed", what="interrupted run resolved")
            latest = c.get(f"/api/tasks/{long}").json()["latest_execution"]
            assert "server stopped" in latest["logs"]
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        srv.stop()


def create_in(c: httpx.Client, env: str, script: str) -> int:
    r = c.post("/api/tasks", json={"script": script, "conda_env": env})
    assert r.status_code == 201, r.text
    return int(r.json()["task"]["task_id"])
