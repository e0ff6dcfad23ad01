"""PsutilProcessRunner with real child processes (sys.executable): logs, memory, stop, timeout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from ctm_adapters._sandbox import Identities
from ctm_adapters.process import PsutilProcessRunner, PsutilRunHandle
from ctm_core.ports import RunResult, RunSpec

MB = 1024 * 1024


@pytest.fixture
def runner() -> Iterator[PsutilProcessRunner]:
    r = PsutilProcessRunner(sample_interval=0.1, timeout_grace=5.0)
    yield r
    r.close()


def spec(tmp_path: Path, code: str, name: str = "run", **kwargs: object) -> RunSpec:
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    args: dict[str, object] = {
        "argv": (sys.executable, str(script)),
        "cwd": str(tmp_path),
        "log_path": str(tmp_path / "logs" / f"{name}.log"),
        "env_add": {},
    }
    args.update(kwargs)
    return RunSpec(**args)  # type: ignore[arg-type]


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(0.01)


def log_text(s: RunSpec) -> str:
    try:
        return Path(s.log_path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_line(s: RunSpec, pattern: str, count: int = 1) -> list[re.Match[str]]:
    found: list[re.Match[str]] = []

    def enough() -> bool:
        found[:] = list(re.finditer(pattern, log_text(s), re.MULTILINE))
        return len(found) >= count

    wait_until(enough)
    return found


def gone(procs: list[psutil.Process]) -> bool:
    """True when none of ``procs`` is alive (a zombie awaiting its reaper is not alive)."""
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def run(runner: PsutilProcessRunner, s: RunSpec) -> RunResult:
    return runner.wait(runner.start(s))


# ------------------------------------------------------------------ memory and duration


def test_peak_memory_of_a_200mb_allocation(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """A script holding ~200 MB reports a peak of about 200 MB."""
    code = """
        import time
        block = bytearray(200 * 1024 * 1024)
        time.sleep(0.5)
    """
    result = run(runner, spec(tmp_path, code))
    assert result.exit_code == 0
    assert 190 * MB <= result.peak_memory <= 260 * MB
    assert 0 < result.avg_memory <= result.peak_memory


def test_peak_memory_sums_the_whole_tree(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """Three forked children holding 50 MB each count together: peak >= 150 MB."""
    code = """
        import os, time
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                block = bytearray(50 * 1024 * 1024)
                time.sleep(1.0)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
    """
    result = run(runner, spec(tmp_path, code))
    assert result.exit_code == 0
    assert result.peak_memory >= 150 * MB


def test_short_spike_between_samples_still_sets_the_peak(tmp_path: Path) -> None:
    """Memory used only between two samples is not missed: the OS's own peak is the floor.

    The spike is held briefly (still far inside the 30 s sampling interval); a spike in the
    last milliseconds of a process is only seen when ``wait4``'s figure rises above the
    server's own size (see docs/runs.md).
    """
    slow = PsutilProcessRunner(sample_interval=30.0)
    try:
        code = """
            import time
            block = bytearray(300 * 1024 * 1024)
            time.sleep(0.4)
            del block
            time.sleep(0.4)
        """
        result = run(slow, spec(tmp_path, code))
    finally:
        slow.close()
    assert result.peak_memory >= 300 * MB


def test_one_line_script(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """A one-line script: quick, some memory measured, its line in the log."""
    s = spec(tmp_path, "print('hello from the task')")
    result = run(runner, s)
    assert result.exit_code == 0
    assert result.peak_memory > 0
    assert result.avg_memory > 0
    assert result.duration < 1.0
    assert log_text(s) == "hello from the task\n"


def test_one_monitor_thread_samples_many_runs(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """Five runs at once are sampled by one monitor thread, and each gets its own figures."""
    code = """
        import sys, time
        block = bytearray(int(sys.argv[1]) * 1024 * 1024)
        print("ready", flush=True)
        time.sleep(30)
    """
    specs = [spec(tmp_path, code, f"r{i}") for i in range(5)]
    specs = [
        RunSpec(argv=(*s.argv, str(20 * (i + 1))), cwd=s.cwd, log_path=s.log_path, env_add={})
        for i, s in enumerate(specs)
    ]

    def monitors() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "ctm-run-monitor"}

    before = monitors()  # other runners of this test process may have theirs
    handles = [runner.start(s) for s in specs]
    for s in specs:
        wait_for_line(s, "^ready")
    assert len(monitors() - before) <= 1
    assert len(monitors()) <= len(before) + 1
    at_ready = [h._samples for h in handles]  # a slow start may have been sampled before it
    wait_until(lambda: all(h._samples >= n + 2 for h, n in zip(handles, at_ready, strict=True)))
    for h in handles:
        runner.stop(h, 5)
    results = [runner.wait(h) for h in handles]
    for i, result in enumerate(results):
        assert (20 * (i + 1)) * MB <= result.peak_memory <= (20 * (i + 1) + 40) * MB


def test_a_run_stopped_between_samples_keeps_its_peak(tmp_path: Path) -> None:
    """Stopped right after a big allocation, before the monitor's next sample: the peak is still
    the script's own (the server's own peak may hide it from wait4's figure)."""
    ballast = bytearray(200 * MB)  # this process's own peak now hides the run's from wait4
    del ballast
    runner = PsutilProcessRunner(sample_interval=60.0, timeout_grace=5.0)
    try:
        s = spec(
            tmp_path,
            """
            import time
            time.sleep(0.5)  # past the early peak reads of a young run
            block = bytearray(120 * 1024 * 1024)
            print("ready", flush=True)
            time.sleep(30)
        """,
        )
        handle = runner.start(s)
        wait_for_line(s, "^ready")
        runner.stop(handle, 5)
        assert runner.wait(handle).peak_memory >= 120 * MB
    finally:
        runner.close()


# ------------------------------------------------------------------ output


def test_stdout_and_stderr_keep_their_order(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """Lines written alternately to stdout and stderr appear in the log in that order."""
    code = """
        import sys
        for i in range(300):
            stream = sys.stdout if i % 2 == 0 else sys.stderr
            print(f"{'out' if i % 2 == 0 else 'err'} {i}", file=stream)
    """
    s = spec(tmp_path, code)
    assert run(runner, s).exit_code == 0
    lines = log_text(s).splitlines()
    assert lines == [f"{'out' if i % 2 == 0 else 'err'} {i}" for i in range(300)]


def test_log_shows_output_while_the_run_goes(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """A line printed by a running task is in the log before the task ends."""
    s = spec(tmp_path, "import time\nprint('started')\ntime.sleep(30)\n")
    handle = runner.start(s)
    wait_for_line(s, "^started$")
    assert not handle.done
    runner.stop(handle, 5)


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")


def _own_peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_log_is_capped_however_much_is_printed(tmp_path: Path) -> None:
    """200 MB of output: the log keeps head, marker and tail within the cap; server memory flat."""
    cap = 1 * MB
    capped = PsutilProcessRunner(log_cap_bytes=cap, sample_interval=0.5)
    code = """
        import sys
        out = sys.stdout.buffer
        out.write(b"FIRST LINE\\n")
        line = b"." * 1023 + b"\\n"
        chunk = line * 1024
        for _ in range(200):
            out.write(chunk)
        out.write(b"LAST LINE\\n")
    """
    s = spec(tmp_path, code)
    try:
        _peak_rss_reset()
        before = _own_peak_rss()
        result = run(capped, s)
        grown = _own_peak_rss() - before
    finally:
        capped.close()
    assert result.exit_code == 0
    data = Path(s.log_path).read_bytes()
    assert len(data) <= cap + 100
    assert data.startswith(b"FIRST LINE\n")
    assert data.endswith(b"LAST LINE\n")
    omitted = re.search(rb"\n\[ctm: (\d+) bytes of output omitted\]\n", data)
    assert omitted is not None
    assert int(omitted.group(1)) + len(data) - len(omitted.group(0)) == 200 * MB + 21
    assert grown < 50 * MB


# ------------------------------------------------------------------ exit codes, stop, timeout


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("pass", 0),
        ("import sys; sys.exit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), 9)", -9),
    ],
)
def test_exit_code(runner: PsutilProcessRunner, tmp_path: Path, code: str, expected: int) -> None:
    """The exit code is the program's, or minus the signal that killed it."""
    assert run(runner, spec(tmp_path, code)).exit_code == expected


def test_stop_sends_sigterm_first(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """A stopped run that does not handle SIGTERM ends with exit code -15, quickly."""
    s = spec(tmp_path, "import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    handle = runner.start(s)
    wait_for_line(s, "^ready")
    t0 = time.monotonic()
    runner.stop(handle, 10)
    assert time.monotonic() - t0 < 2
    assert runner.wait(handle).exit_code == -15


def test_stop_kills_a_run_ignoring_sigterm(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """A run that ignores SIGTERM is killed after the grace period: exit code -9."""
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """
    s = spec(tmp_path, code)
    handle = runner.start(s)
    wait_for_line(s, "^ready")
    t0 = time.monotonic()
    runner.stop(handle, 0.5)
    assert 0.4 < time.monotonic() - t0 < 3
    assert runner.wait(handle).exit_code == -9


def test_sigterm_handler_gets_to_clean_up(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """A run that handles SIGTERM can print its goodbye, which reaches the log."""
    code = """
        import signal, sys, time
        def bye(*_):
            print("cleaning up", flush=True)
            sys.exit(5)
        signal.signal(signal.SIGTERM, bye)
        print("ready", flush=True)
        time.sleep(60)
    """
    s = spec(tmp_path, code)
    handle = runner.start(s)
    wait_for_line(s, "^ready")
    runner.stop(handle, 10)
    assert runner.wait(handle).exit_code == 5
    assert log_text(s).endswith("ready\ncleaning up\n")


ESCAPING_TREE = """
    import os, subprocess, sys, time
    def say(line):
        os.write(1, (line + "\\n").encode())  # one write: lines of several processes never mix
    # a grandchild in a session of its own (setsid), its parent staying
    child = os.fork()
    if child == 0:
        os.setsid()
        if os.fork() == 0:
            say(f"pid setsid-grandchild {os.getpid()}")
            time.sleep(120)
            os._exit(0)
        say(f"pid setsid-child {os.getpid()}")
        time.sleep(120)
        os._exit(0)
    # a double fork: the middle process exits at once, the grandchild is orphaned
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            say(f"pid orphan {os.getpid()}")
            time.sleep(120)
            os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
    # a plain child in the group
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    say(f"pid plain {sleeper.pid}")
    time.sleep(120)
"""


def _tree_pids(s: RunSpec) -> list[psutil.Process]:
    matches = wait_for_line(s, r"^pid \S+ (\d+)$", count=4)
    procs = [psutil.Process(int(m.group(1))) for m in matches]
    assert not gone(procs)
    return procs


def test_stop_leaves_no_process_alive(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """After stop, no process of the run lives: not in the group, not escaped by setsid."""
    s = spec(tmp_path, ESCAPING_TREE)
    handle = runner.start(s)
    procs = [psutil.Process(handle.pid), *_tree_pids(s)]
    runner.stop(handle, 5)
    assert gone(procs)
    assert runner.wait(handle).exit_code == -15


def test_timeout_stops_the_run_and_says_so(tmp_path: Path) -> None:
    """A run past its timeout is stopped, flagged timed out, and its log says why."""
    quick = PsutilProcessRunner(sample_interval=0.1, timeout_grace=1.0)
    s = spec(tmp_path, ESCAPING_TREE, timeout_seconds=2)
    try:
        handle = quick.start(s)
        procs = [psutil.Process(handle.pid), *_tree_pids(s)]
        result = quick.wait(handle)
    finally:
        quick.close()
    assert result.timed_out
    assert result.exit_code == -15
    assert 2 <= result.duration < 4
    assert gone(procs)
    assert log_text(s).endswith("[ctm: run timed out after 2 s, stopped]\n")


def test_processes_left_behind_are_stopped(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """When the main process exits, what it left running is stopped and the log says so."""
    code = """
        import subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(f"pid leftover {p.pid}", flush=True)
    """
    s = spec(tmp_path, code)
    handle = runner.start(s)
    result = runner.wait(handle)
    assert result.exit_code == 0
    pid = int(wait_for_line(s, r"^pid leftover (\d+)$")[0].group(1))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "still running after the main process exited were stopped]" in log_text(s)


def test_stop_is_idempotent_and_safe_with_wait(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """stop() while another thread waits, twice at once, and after the end: all return."""
    s = spec(tmp_path, "import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    handle = runner.start(s)
    wait_for_line(s, "^ready")
    results: list[RunResult] = []
    waiter = threading.Thread(target=lambda: results.append(runner.wait(handle)))
    waiter.start()
    stoppers = [threading.Thread(target=runner.stop, args=(handle, 5)) for _ in range(2)]
    for t in stoppers:
        t.start()
    for t in (*stoppers, waiter):
        t.join(10)
        assert not t.is_alive()
    runner.stop(handle, 5)
    assert results[0].exit_code == -15
    assert runner.wait(handle) == results[0]


def test_missing_interpreter_raises_oserror(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """A program that does not exist cannot start: OSError, nothing left running."""
    s = RunSpec(
        argv=(str(tmp_path / "no-such-python"), "x.py"),
        cwd=str(tmp_path),
        log_path=str(tmp_path / "x.log"),
        env_add={},
    )
    with pytest.raises(FileNotFoundError, match="no-such-python"):
        runner.start(s)


# ------------------------------------------------------------------ environment


def test_environment_cwd_and_path(
    runner: PsutilProcessRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets stay out, env_add and the PATH prepend go in, the run starts in spec.cwd."""
    monkeypatch.setenv("CTM_ADMIN_PASSWORD", "hunter22")
    monkeypatch.setenv("CONDA_PREFIX", "/server/env")
    monkeypatch.setenv("CONDA_SHLVL", "2")
    monkeypatch.setenv("SOME_SETTING", "kept")
    workdir = tmp_path / "work"
    workdir.mkdir()
    code = """
        import json, os
        print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}))
    """
    s = spec(
        tmp_path,
        code,
        cwd=str(workdir),
        env_add={"CONDA_PREFIX": "/envs/data"},
        path_prepend=("/envs/data/bin",),
    )
    assert run(runner, s).exit_code == 0
    import json

    seen = json.loads(log_text(s))
    env = seen["env"]
    assert "CTM_ADMIN_PASSWORD" not in env
    assert "hunter22" not in log_text(s)
    assert "CONDA_SHLVL" not in env
    assert env["CONDA_PREFIX"] == "/envs/data"
    assert env["PATH"].split(os.pathsep)[0] == "/envs/data/bin"
    assert env["PATH"].endswith(os.environ["PATH"])
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["SOME_SETTING"] == "kept"
    assert seen["cwd"] == str(workdir)


def _python_for_everyone() -> str | None:
    """An interpreter whose every directory on the way is open to other users."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        path = Path(os.path.realpath(candidate))
        if path.exists() and all(p.stat().st_mode & 0o001 for p in (path, *path.parents)):
            return str(path)
    return None


def test_per_user_identity_drops_privileges(tmp_path: Path) -> None:
    """Under root, user id 7 runs as uid/gid 200007 with no extra groups, in its own HOME."""
    if os.geteuid() != 0:
        pytest.skip("dropping to another user needs the tests to run as root")
    python = _python_for_everyone()
    if python is None:
        pytest.skip("no python interpreter that other users may execute")
    os.chmod(tmp_path, 0o755)
    homes = tmp_path / "homes"
    runner = PsutilProcessRunner(identities=Identities(homes_dir=str(homes)))
    code = "import os; print(os.getuid(), os.getgid(), os.getgroups(), os.environ['HOME'])"
    work = tmp_path / "work"
    work.mkdir()
    s = RunSpec(
        argv=(python, "-c", code),
        cwd=str(work),
        log_path=str(tmp_path / "logs" / "run.log"),
        env_add={},
        owner="alice",
        owner_id=7,
    )
    try:
        result = run(runner, s)
    finally:
        runner.close()
    assert result.exit_code == 0
    assert log_text(s) == f"200007 200007 [] {homes / 'alice'}\n"
    assert (homes / "alice").stat().st_uid == 200007
    assert work.stat().st_uid == 200007


def test_handle_reports_the_main_pid(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """The handle's pid is the script's process id."""
    s = spec(tmp_path, "import os; print(os.getpid())")
    handle = runner.start(s)
    assert isinstance(handle, PsutilRunHandle)
    runner.wait(handle)
    assert log_text(s) == f"{handle.pid}\n"


def test_untraceable_escapee_cannot_hold_the_run_open(tmp_path: Path) -> None:
    """A process that hides from every rule but keeps the output open does not block wait()."""
    code = """
        import os, sys, time
        time.sleep(0.3)  # after the monitor's first scan; the next one is a minute away
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:  # new session, orphaned, empty environment: nothing links it
                os.execve(sys.executable, [sys.executable, "-c",
                    "import os, time; os.write(1, b'pid hidden %d\\\\n' % os.getpid()); "
                    "time.sleep(60)"], {})
            os._exit(0)
        time.sleep(0.5)
    """
    s = spec(tmp_path, code)
    blind = PsutilProcessRunner(sample_interval=60)  # no scan sees it before it hides
    handle = blind.start(s)
    hidden = psutil.Process(int(wait_for_line(s, r"^pid hidden (\d+)$")[0].group(1)))
    try:
        t0 = time.monotonic()
        result = blind.wait(handle)
        assert time.monotonic() - t0 < 6
        assert result.exit_code == 0
        assert "[ctm: output still open after the run ended; stopped reading]" in log_text(s)
    finally:
        hidden.kill()
        blind.close()


CRASHING_SERVER = """
    import os, sys
    from ctm_adapters.process import PsutilProcessRunner
    from ctm_core.ports import RunSpec
    runner = PsutilProcessRunner(instance_id=sys.argv[1])
    code = (
        "import os, subprocess, sys, time\\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\\n"
        "open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}')\\n"
        "time.sleep(120)\\n"
    )
    runner.start(RunSpec(argv=(sys.executable, "-c", code, sys.argv[2]), cwd="/",
                         log_path=sys.argv[3], env_add={}))
    os._exit(0)  # the server dies; its run goes on, unwatched
"""


def _crashed_server_run(tmp_path: Path, instance: str) -> list[psutil.Process]:
    pids_file = tmp_path / f"{instance}.pids"
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(CRASHING_SERVER))
    log_path = tmp_path / f"{instance}.log"
    psutil.Popen([sys.executable, str(script), instance, str(pids_file), str(log_path)]).wait()
    wait_until(lambda: pids_file.exists() and " " in pids_file.read_text())
    return [psutil.Process(int(pid)) for pid in pids_file.read_text().split()]


def test_runs_of_a_crashed_server_are_stopped_at_startup(tmp_path: Path) -> None:
    """A run left by a dead server is killed by the next one; other instances' runs are not."""
    stale = _crashed_server_run(tmp_path, "server-a")
    other = _crashed_server_run(tmp_path, "server-b")
    fresh = PsutilProcessRunner(instance_id="server-a")
    s = spec(tmp_path, "import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    try:
        own = fresh.start(s)
        wait_for_line(s, "^ready")
        assert fresh.kill_stale_runs(grace_seconds=2) == 2
        assert gone(stale)
        assert not gone(other[:1])
        assert not gone(other[1:])
        assert not own.done
        fresh.stop(own, 5)
    finally:
        for p in other:
            p.kill()
        fresh.close()


def test_a_timeout_of_30_days_is_accepted(runner: PsutilProcessRunner, tmp_path: Path) -> None:
    """A timeout longer than poll()'s limit (~24.8 days) runs normally, not a crash."""
    s = spec(tmp_path, "print('long timeout ok')")
    s = RunSpec(
        argv=s.argv, cwd=s.cwd, log_path=s.log_path, env_add={}, timeout_seconds=30 * 24 * 3600
    )
    result = run(runner, s)
    assert result.exit_code == 0
    assert not result.timed_out
    assert log_text(s) == "long timeout ok\n"


@pytest.mark.parametrize("supervised", [False, True], ids=["in-process", "supervised"])
def test_short_uncontained_runs_never_record_zero_memory(tmp_path: Path, supervised: bool) -> None:
    """30 back-to-back print('q') runs without a sandbox all record peak and average above 0."""
    from ctm_adapters.supervised import SupervisedProcessRunner

    r: Any = (
        SupervisedProcessRunner(instance_id="short-runs") if supervised else PsutilProcessRunner()
    )
    try:
        results = [run(r, spec(tmp_path, "print('q')", name=f"q{i}")) for i in range(30)]
    finally:
        r.close()
    assert all(res.exit_code == 0 for res in results)
    assert [res for res in results if res.peak_memory <= 0 or res.avg_memory <= 0] == []


def test_process_facts_from_psutil_match_the_kernel() -> None:
    """A process's parent, group, session and start (clock ticks after boot, the figure
    state.json keeps) as psutil gives them are the kernel's ``/proc/<pid>/stat`` fields, its RSS
    the kernel's exact ``VmRSS`` (``stat``'s own RSS field is an approximate sum on recent
    kernels)."""
    from ctm_adapters._proctree import read_stat, scan

    code = "import time; print('ready', flush=True); time.sleep(30)"
    child = psutil.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        time.sleep(0.1)  # the interpreter is at rest in its sleep: nothing more is mapped
        raw = Path(f"/proc/{child.pid}/stat").read_bytes()
        fields = raw[raw.rfind(b")") + 2 :].split()
        stat = read_stat(child.pid)
        assert stat is not None
        assert stat == scan()[child.pid]
        assert (stat.ppid, stat.pgrp, stat.sid) == tuple(int(f) for f in fields[1:4])
        assert stat.starttime == int(fields[19])
        status = Path(f"/proc/{child.pid}/status").read_text()
        vm_rss = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        assert vm_rss is not None
        assert stat.rss == int(vm_rss.group(1)) * 1024
        assert stat.alive
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
