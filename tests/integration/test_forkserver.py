"""The supervised runner's fork server: supervisors forked from it, and what survives its death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

import ctm_adapters._forkserver
import ctm_adapters.supervised
from ctm_adapters._proctree import read_peak_rss
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.ports import RunSpec

MB = 1024 * 1024
WAIT_FOR_GO = (
    "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.01)\nprint('done')\n"
)
"""A program that runs until a file ``go`` appears in its folder, then prints ``done``."""


def spec(tmp_path: Path, code: str, name: str = "run") -> RunSpec:
    return RunSpec(
        argv=(sys.executable, "-u", "-c", code),
        cwd=str(tmp_path),
        log_path=str(tmp_path / f"{name}.log"),
        env_add={},
    )


def wait_until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper has)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def parent(pid: int) -> int:
    return int(psutil.Process(pid).ppid())


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.fixture
def runner() -> Iterator[SupervisedProcessRunner]:
    r = SupervisedProcessRunner(instance_id="fs-test", sample_interval=0.1)
    yield r
    r.close()


def test_supervisors_are_forked_by_the_fork_server(
    runner: SupervisedProcessRunner, tmp_path: Path
) -> None:
    """A run's supervisor is a child of the runner's fork server, not of the server, and named."""
    assert runner.fork_server_pid is None, "started with the first run, not before"
    handle = runner.start(spec(tmp_path, WAIT_FOR_GO))
    fork_server = runner.fork_server_pid
    assert fork_server is not None and fork_server != os.getpid()
    assert parent(handle.supervisor_pid) == fork_server
    assert parent(fork_server) == os.getpid()
    assert comm(fork_server) == "ctm-forkserver"
    assert comm(handle.supervisor_pid) == "ctm-supervisor"
    assert os.getsid(handle.supervisor_pid) == handle.supervisor_pid, "a session of its own"
    assert parent(handle.pid) == handle.supervisor_pid
    (tmp_path / "go").touch()
    result = runner.wait(handle)
    assert result.exit_code == 0 and result.peak_memory > 0
    assert (tmp_path / "run.log").read_text() == "done\n"
    second = runner.start(spec(tmp_path, "print('again')", "second"))
    assert runner.fork_server_pid == fork_server, "one fork server for every run"
    assert runner.wait(second).exit_code == 0


def test_the_fork_server_holds_no_secret_and_no_stray_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork server gets the server's environment without its secrets; it and its
    supervisors hold no descriptor of the server (the supervisor no socket at all)."""
    monkeypatch.setenv("CTM_TEST_SECRET", "fork-server-must-not-see-this")
    runner = SupervisedProcessRunner(instance_id="fs-secret")
    try:
        handle = runner.start(spec(tmp_path, WAIT_FOR_GO))
        fork_server = runner.fork_server_pid
        assert fork_server is not None
        for pid in (fork_server, handle.supervisor_pid):
            assert b"fork-server-must-not-see-this" not in Path(f"/proc/{pid}/environ").read_bytes()
        server_fds = {
            os.readlink(f"/proc/{fork_server}/fd/{fd}")
            for fd in os.listdir(f"/proc/{fork_server}/fd")
        }
        assert len(os.listdir(f"/proc/{fork_server}/fd")) <= 6, server_fds  # 0-2, socket, pipe
        assert len([link for link in server_fds if link.startswith("socket:")]) == 1
        supervisor_fds = [
            os.readlink(f"/proc/{handle.supervisor_pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{handle.supervisor_pid}/fd")
        ]
        assert not [link for link in supervisor_fds if link.startswith("socket:")]
        assert len(psutil.Process(fork_server).threads()) == 1, "it forks single-threaded"
        (tmp_path / "go").touch()
        assert runner.wait(handle).exit_code == 0
    finally:
        runner.close()


def test_a_killed_fork_server_is_replaced_and_the_next_run_starts(
    runner: SupervisedProcessRunner, tmp_path: Path
) -> None:
    """After the fork server is killed, the next start forks from a new one."""
    first = runner.start(spec(tmp_path, "print('one')", "one"))
    runner.wait(first)
    old = runner.fork_server_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: gone(old))
    handle = runner.start(spec(tmp_path, "print('two')", "two"))
    new = runner.fork_server_pid
    assert new is not None and new != old
    result = runner.wait(handle)
    assert result.exit_code == 0 and (tmp_path / "two.log").read_text() == "two\n"
    third = runner.start(spec(tmp_path, WAIT_FOR_GO, "three"))
    assert parent(third.supervisor_pid) == new
    (tmp_path / "go").touch()
    assert runner.wait(third).exit_code == 0


def test_a_hung_fork_server_is_killed_and_replaced(
    runner: SupervisedProcessRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork server that stops answering (SIGSTOP) is killed; the start forks from a new one."""
    monkeypatch.setattr(ctm_adapters._forkserver, "_ANSWER_TIMEOUT", 3.0)  # > its start
    runner.wait(runner.start(spec(tmp_path, "print('one')", "one")))
    old = runner.fork_server_pid
    assert old is not None
    os.kill(old, signal.SIGSTOP)
    handle = runner.start(spec(tmp_path, "print('two')", "two"))
    assert runner.fork_server_pid not in (None, old)
    assert gone(old)
    assert runner.wait(handle).exit_code == 0
    assert (tmp_path / "two.log").read_text() == "two\n"


def test_a_run_survives_the_death_of_the_fork_server(
    runner: SupervisedProcessRunner, tmp_path: Path
) -> None:
    """Killing the fork server leaves its runs going; each ends with its full log and result."""
    handle = runner.start(spec(tmp_path, WAIT_FOR_GO))
    fork_server = runner.fork_server_pid
    assert fork_server is not None
    os.kill(fork_server, signal.SIGKILL)
    wait_until(lambda: gone(fork_server))
    assert not gone(handle.supervisor_pid) and not gone(handle.pid)
    (tmp_path / "go").touch()
    result = runner.wait(handle)
    assert result.exit_code == 0 and not result.timed_out
    assert (tmp_path / "run.log").read_text() == "done\n"


def test_close_ends_the_fork_server_and_leaves_the_runs(tmp_path: Path) -> None:
    """``close`` ends the fork server; a run going on is left to its supervisor."""
    runner = SupervisedProcessRunner(instance_id="fs-close")
    handle = runner.start(spec(tmp_path, WAIT_FOR_GO))
    fork_server = runner.fork_server_pid
    assert fork_server is not None
    runner.close()
    wait_until(lambda: gone(fork_server))
    assert not gone(handle.supervisor_pid) and not gone(handle.pid)
    (tmp_path / "go").touch()
    assert runner.wait(handle).exit_code == 0
    assert (tmp_path / "run.log").read_text() == "done\n"


def test_concurrent_starts_all_go_through_the_fork_server(
    runner: SupervisedProcessRunner, tmp_path: Path
) -> None:
    """Twelve starts at once from twelve threads: each gets its own forked supervisor."""
    specs = [spec(tmp_path, WAIT_FOR_GO, f"r{i}") for i in range(12)]
    handles: list[object] = [None] * len(specs)
    barrier = threading.Barrier(len(specs))

    def start(i: int) -> None:
        barrier.wait()
        handles[i] = runner.start(specs[i])

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [h for h in handles if isinstance(h, ctm_adapters.supervised.SupervisedRunHandle)]
    assert len(started) == len(specs)
    assert {parent(h.supervisor_pid) for h in started} == {runner.fork_server_pid}
    assert len({h.supervisor_pid for h in started}) == len(specs)
    (tmp_path / "go").touch()
    assert [runner.wait(h).exit_code for h in started] == [0] * len(specs)


def test_without_a_fork_server_supervisors_start_as_interpreters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When no fork server can be started, runs still start (a supervisor interpreter each),
    and the runner does not try again for every run."""
    attempts: list[object] = []

    def broken(env: dict[str, str]) -> object:
        attempts.append(env)
        raise OSError("no fork server here")

    monkeypatch.setattr(ctm_adapters.supervised, "ForkServer", broken)
    runner = SupervisedProcessRunner(instance_id="fs-none")
    try:
        handles = [runner.start(spec(tmp_path, WAIT_FOR_GO, f"r{i}")) for i in range(2)]
        assert len(attempts) == 1
        assert runner.fork_server_pid is None
        for h in handles:
            assert parent(h.supervisor_pid) == os.getpid()
            assert comm(h.supervisor_pid) == "ctm-supervisor"
        (tmp_path / "go").touch()
        assert [runner.wait(h).exit_code for h in handles] == [0, 0]
    finally:
        runner.close()


def test_fork_server_off_spawns_supervisors_that_stale_detection_finds(tmp_path: Path) -> None:
    """``fork_server=False``: supervisors are interpreters; a later runner still stops them."""
    first = SupervisedProcessRunner(instance_id="fs-off", fork_server=False)
    handle = first.start(spec(tmp_path, "import time\ntime.sleep(600)"))
    assert first.fork_server_pid is None
    assert (
        b"ctm_adapters._supervisor" in Path(f"/proc/{handle.supervisor_pid}/cmdline").read_bytes()
    )
    second = SupervisedProcessRunner(instance_id="fs-off")
    assert second.kill_stale_runs(1.0) == 1
    assert gone(handle.pid) and gone(handle.supervisor_pid)
    assert first.wait(handle).exit_code == -signal.SIGTERM  # its supervisor saw it end
    first.close()
    second.close()


def test_peak_memory_through_a_forked_supervisor(
    runner: SupervisedProcessRunner, tmp_path: Path
) -> None:
    """Peaks are the program's own: a 200 MB allocation is seen, and a tiny program is not
    charged the memory its forked supervisor shares with the fork server."""
    big = runner.start(spec(tmp_path, "b = bytearray(200 * 1024 * 1024)\nprint('ok')", "big"))
    assert 190 * MB <= runner.wait(big).peak_memory <= 260 * MB
    fork_server = runner.fork_server_pid
    assert fork_server is not None
    tiny = runner.wait(runner.start(spec(tmp_path, "pass", "tiny")))
    assert 0 < tiny.peak_memory < read_peak_rss(fork_server), "not the supervisor's memory"


# ------------------------------------------------------------------ a server killed with -9

SERVER = """
import json, sys
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.ports import RunSpec
runner = SupervisedProcessRunner(instance_id=sys.argv[1])
folder = sys.argv[2]
handle = runner.start(RunSpec(argv=(sys.executable, "-u", "-c", sys.argv[3]), cwd=folder,
                              log_path=folder + "/run.log", env_add={}))
print(json.dumps({"pid": handle.pid, "supervisor": handle.supervisor_pid,
                  "fork_server": runner.fork_server_pid}), flush=True)
sys.stdin.read()
"""


def start_and_kill_a_server(instance: str, tmp_path: Path, code: str) -> dict[str, int]:
    """A server process that starts one run, then is killed with SIGKILL: the run's pids."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, instance, str(tmp_path), code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        pids: dict[str, int] = json.loads(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
        server.stdin.close()
    return pids


def test_after_a_server_is_killed_its_run_goes_on_and_is_adopted(tmp_path: Path) -> None:
    """kill -9 of the server: its fork server exits, the run goes on, the next server adopts
    it and gets its real result."""
    pids = start_and_kill_a_server("fs-kill", tmp_path, WAIT_FOR_GO)
    wait_until(lambda: gone(pids["fork_server"]))
    assert not gone(pids["supervisor"]) and not gone(pids["pid"])
    runner = SupervisedProcessRunner(instance_id="fs-kill")
    try:
        adopted = runner.adopt(pids["pid"], str(tmp_path / "run.log"))
        assert adopted is not None
        assert runner.kill_stale_runs(1.0) == 0, "an adopted run is not stale"
        (tmp_path / "go").touch()
        assert runner.wait(adopted).exit_code == 0
        assert (tmp_path / "run.log").read_text() == "done\n"
    finally:
        runner.close()


def test_a_forked_supervisor_left_by_a_killed_server_is_found_stale(tmp_path: Path) -> None:
    """A run of a killed server that is not adopted is stopped, its forked supervisor too."""
    pids = start_and_kill_a_server("fs-stale", tmp_path, "import time\ntime.sleep(600)")
    wait_until(lambda: gone(pids["fork_server"]))
    runner = SupervisedProcessRunner(instance_id="fs-stale")
    try:
        assert runner.kill_stale_runs(1.0) == 1
        assert gone(pids["pid"]) and gone(pids["supervisor"])
    finally:
        runner.close()
