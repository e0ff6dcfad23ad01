"""A full disk: the data directory on a small tmpfs the test mounts (root only).

Writes to the database answer ``StorageUnavailable`` (503), reads go on, a run's log ends with a
line saying the disk was full while the run itself goes on, a stop still ends the run, no run is
left ``running`` once its process is gone, and everything works again once space is freed.

Without the rights to mount a tmpfs these tests are skipped, or fail when CI sets
``CTM_REQUIRE_SANDBOX=1``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from ctm_adapters.files import LocalFileStore
from ctm_adapters.sqlite import SqliteRepository
from ctm_core.errors import StorageUnavailable
from ctm_core.models import Execution, ExecutionStatus
from tests.integration.conftest import Server
from tests.integration.test_repository_contract import make_task
from tests.integration.test_server_tasks import run_pid, wait_for

FULL_LINE = b"[ctm: log stopped: No space left on device; the output that followed was not kept]\n"
OUTPUT_BYTES = 96 * 1024 * 1024
"""What the test's script prints: twice the filesystem, so its log fills it."""


def _cannot_mount(target: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``target``; the reason when that is impossible here."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "ctm-disk-full", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}"
    return None


def _processes_using(mount: Path) -> list[psutil.Process]:
    """Live processes working in, or started from a file under, ``mount``."""
    prefix = str(mount) + os.sep
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline"]):
        cwd = proc.info["cwd"] or ""
        cmdline = " ".join(proc.info["cmdline"] or ())
        if proc.pid != os.getpid() and (cwd.startswith(prefix) or prefix in cmdline):
            found.append(proc)
    return found


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB tmpfs, unmounted at the end whatever happened (its processes killed first)."""
    mount = tmp_path / "small"
    mount.mkdir()
    reason = _cannot_mount(mount, "48m")
    if reason is not None:
        if os.environ.get("CTM_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"CTM_REQUIRE_SANDBOX=1 but {reason}", pytrace=False)
        pytest.skip(f"no small filesystem for the disk-full tests: {reason}")
    try:
        yield mount
    finally:
        for proc in _processes_using(mount):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(_processes_using(mount), timeout=10)
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s filesystem with one file; return its path."""
    ballast = directory / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for size in (1024 * 1024, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    f.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    assert os.statvfs(directory).f_bavail == 0
    return ballast


def test_sqlite_writes_on_a_full_disk_raise_storage_unavailable_and_reads_go_on(
    small_fs: Path,
) -> None:
    """Disk full: each kind of write (one statement, a transaction) raises StorageUnavailable,
    nothing half-done is left, reads answer; once space is freed, writes work again."""
    repo = SqliteRepository(str(small_fs / "ctm.sqlite3"))
    try:
        task = repo.add_task(make_task("kept"))
        repo.add_execution(Execution(id="run-1", task_id=task.id, status=ExecutionStatus.RUNNING))
        ballast = fill(small_fs)
        big = "x" * 200_000  # more than any space a write could find in the files as they are
        with pytest.raises(StorageUnavailable, match="disk full"):
            repo.add_task(make_task("new", requirements=big))  # a transaction
        with pytest.raises(StorageUnavailable, match="disk full"):
            repo.set_task_script(task.id, name="kept", script_path=big)  # one statement
        ended = Execution(id="run-1", task_id=task.id, status=ExecutionStatus.FAILED, note=big)
        with pytest.raises(StorageUnavailable):
            repo.record_run_end(ended)
        assert [t.name for t in repo.list_tasks()] == ["kept"]
        assert repo.get_task(task.id).script_path == "/srv/scripts/job.py"
        assert [e.status for e in repo.unfinished_executions()] == [ExecutionStatus.RUNNING]
        ballast.unlink()
        assert repo.record_run_end(ended)
        assert repo.add_task(make_task("new", requirements=big)).name == "new"
        assert repo.unfinished_executions() == []
    finally:
        repo.close()


def test_a_script_the_disk_cannot_take_raises_storage_unavailable(small_fs: Path) -> None:
    """Storing a task's script on a full disk says so (503), and leaves no partial file."""
    files = LocalFileStore(str(small_fs / "data"))
    fill(small_fs)
    with pytest.raises(StorageUnavailable, match="disk full"):
        files.store_script("task_1.py", "print('hello')\n" * 1000)
    assert os.listdir(files.scripts_dir) == []


def test_a_run_that_fills_the_disk(small_fs: Path, tmp_path: Path) -> None:
    """A run prints until its log fills the disk: the log ends with the disk-full line and the
    run goes on; reads answer 200 and writes 503 meanwhile; stop ends the run; once space is
    freed the run is recorded stopped (never left running) and writes work again."""
    reserve = small_fs / "reserve"
    reserve.write_bytes(b"\0" * 4 * 1024 * 1024)  # freed at the end: the space that comes back
    srv = Server(
        small_fs / "data",
        extra_env={"CTM_LOG_MAX_BYTES": str(1 << 30), "CTM_STOP_GRACE_SECONDS": "2"},
    )
    srv.log_path = tmp_path / "server.log"  # not on the small disk
    srv.start()
    try:
        with srv.client() as c:
            srv.login(c)
            r = c.post("/api/conda/environment", json={"name": "runs"})
            assert r.status_code == 201, r.text
            script = (
                "import sys, time\n"
                "line = 'x' * 65535 + '\\n'\n"
                f"for _ in range({OUTPUT_BYTES // 65536}):\n"
                "    sys.stdout.write(line)\n"
                "time.sleep(600)\n"
            )
            r = c.post("/api/tasks", json={"script": script, "conda_env": "runs"})
            assert r.status_code == 201, r.text
            tid = int(r.json()["task"]["task_id"])
            pid = wait_for(lambda: run_pid(c, tid), what="the run's process")
            script_process = psutil.Process(pid)

            # The run printed all of its output, long past the full disk, and still runs.
            wait_for(
                lambda: script_process.io_counters().write_chars >= OUTPUT_BYTES,
                timeout=60,
                what="the script to print all of its output",
            )
            assert script_process.is_running()
            assert script_process.status() != psutil.STATUS_ZOMBIE
            assert os.statvfs(small_fs).f_bavail == 0
            [log] = (small_fs / "data" / "logs").glob("*.log")
            assert log.read_bytes()[-len(FULL_LINE) - 1 :] == b"\n" + FULL_LINE

            # Reads answer while the disk is full; a write says the store is unavailable.
            assert c.get("/api/me").status_code == 200
            tasks = c.get("/api/tasks")
            assert tasks.status_code == 200
            assert [t["status"] for t in tasks.json()] == ["running"]
            detail = c.get(f"/api/tasks/{tid}")
            assert detail.status_code == 200
            assert detail.json()["latest_execution"]["logs"].endswith(FULL_LINE.decode())
            refused = c.post("/api/tasks", json={"script": "print(1)", "conda_env": "runs"})
            assert refused.status_code == 503, refused.text
            assert "disk full" in refused.json()["error"]

            # Stop ends the run, even when its end cannot be recorded yet (503 then).
            stopped = c.post(f"/api/tasks/{tid}/stop")
            assert stopped.status_code in (200, 503), stopped.text
            if stopped.status_code == 200:
                assert stopped.json()["task"]["status"] == "stopped"
            else:
                assert "disk full" in stopped.json()["error"]
            wait_for(lambda: run_pid(c, tid) is None, what="the run's process to end")
            assert not script_process.is_running()

            # Space comes back: the end is recorded, and writes work again.
            reserve.unlink()
            wait_for(
                lambda: c.get(f"/api/tasks/{tid}").json()["task"]["status"] == "stopped",
                timeout=30,
                what="the stop to be recorded",
            )
            latest = c.get(f"/api/tasks/{tid}").json()["latest_execution"]
            assert latest["status"] == "stopped" and latest["exit_code"] < 0
            log.unlink()  # the room for the next run's log
            r = c.post("/api/tasks", json={"script": "print('ok')", "conda_env": "runs"})
            assert r.status_code == 201, r.text
            again = int(r.json()["task"]["task_id"])
            wait_for(
                lambda: c.get(f"/api/tasks/{again}").json()["task"]["status"] == "completed",
                what="a run after the disk was freed",
            )
    finally:
        srv.stop()
    assert "Traceback" not in srv.output(), srv.output()
