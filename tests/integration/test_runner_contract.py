"""The ProcessRunner contract, run against every runner.

The same tests run on: ``PsutilProcessRunner`` (runs are the server's children),
``SupervisedProcessRunner`` (one supervisor per run; runs outlive the server) and
``FakeProcessRunner`` (runs nothing). Runs are not sandboxed (the runners' default, as in their
own tests). A test says what a run does as a ``Job``; a ``Driver`` per runner makes it happen:
for the real runners a script (``sys.executable``) that does it, for the fake the calls a unit
test would make by hand (``finish`` with that exit code and memory; the log written for it).

What the fake cannot show is skipped for it, saying why: it has no processes (so nothing to
ignore SIGTERM, no environment, cwd or timeout of its own) and no earlier life to clean up.

No test sleeps to let something happen: each waits for an outcome (a line in the log, a run's
end) with a deadline.
"""

from __future__ import annotations

import itertools
import re
import secrets
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import attrs
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from ctm_adapters.fakes import FakeHandle, FakeProcessRunner
from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.ports import ProcessRunner, RunHandle, RunResult, RunSpec

MB = 1024 * 1024
DEADLINE = 30.0


@attrs.frozen(kw_only=True)
class Job:
    """What one run does, in this order."""

    escapees: int = 0
    """Descendants that leave the run's process group and session (double fork, setsid) and
    live until killed."""
    ignore_term: bool = False
    """SIGTERM ignored by every process of the run."""
    memory_mb: int = 0
    """Held by the main process until it ends."""
    lines: tuple[str, ...] = ()
    """Printed in order, alternately to stdout and stderr."""
    report: tuple[str, ...] = ()
    """Variables whose values the run prints (``env NAME=value``), with its cwd and PATH."""
    forever: bool = False
    """After ``ready`` the run goes on until stopped (or timed out)."""
    seconds: float = 0.0
    """After ``ready``, how long the run lasts."""
    signal: int | None = None
    """The run ends by this signal to itself."""
    exit_code: int = 0


SCRIPT = """
import os, signal, sys, time

job = {job!r}
if job["ignore_term"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(job["escapees"]):
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            while True:
                time.sleep(60)
        os._exit(0)
    os.close(w)
    escapee = os.read(r, 32).decode()
    os.wait()
    print("pid", escapee, flush=True)
block = bytearray(job["memory_mb"] * 1024 * 1024)
for i, line in enumerate(job["lines"]):
    print(line, file=sys.stdout if i % 2 == 0 else sys.stderr, flush=True)
if job["report"] is not None:
    print("cwd", os.getcwd(), flush=True)
    print("path", os.environ["PATH"].split(os.pathsep)[0], flush=True)
    for name in job["report"]:
        print(f"env {{name}}={{os.environ.get(name, '<unset>')}}", flush=True)
print("ready", flush=True)
while job["forever"]:
    time.sleep(60)
time.sleep(job["seconds"])
if job["signal"]:
    os.kill(os.getpid(), job["signal"])
sys.exit(job["exit_code"])
"""


class Driver(Protocol):
    """Makes one runner's runs do a ``Job``, and tells what a test cannot ask the port."""

    runner: ProcessRunner
    real: bool
    """Runs are processes (not the fake's records)."""

    def start(self, job: Job, **spec: Any) -> RunHandle:
        """Start a run doing ``job``; ``spec`` changes its ``RunSpec``."""
        ...

    def spec_of(self, handle: RunHandle) -> RunSpec: ...

    def start_unstartable(self) -> RunHandle:
        """Start a run whose program cannot be started."""
        ...

    def ready(self, handle: RunHandle) -> None:
        """Block until the run has done everything before ``ready`` (or fail at a deadline)."""
        ...

    def alive(self, handle: RunHandle) -> bool:
        """True while a process of the run (main or escapee) is alive."""
        ...

    def restart(self) -> Driver:
        """The runner of the server's next life (same instance), with what carries over."""
        ...

    def close(self) -> None:
        """End whatever a failed test left going."""
        ...


class RealDriver:
    """Real processes: the job is a Python script run with ``sys.executable``."""

    real = True

    def __init__(self, folder: Path, make: Callable[[str], ProcessRunner], instance: str) -> None:
        self.folder = folder
        self.make = make
        self.instance = instance
        self.runner = make(instance)
        self.handles: list[tuple[ProcessRunner, RunHandle]] = []
        self.specs: dict[int, RunSpec] = {}
        self.children: list[RealDriver] = []
        self._names = itertools.count()

    def _spec(self, argv: tuple[str, ...], name: str, **changes: Any) -> RunSpec:
        work = self.folder / name
        work.mkdir(parents=True)
        fields: dict[str, Any] = {
            "argv": argv,
            "cwd": str(work),
            "log_path": str(self.folder / "logs" / f"{name}.log"),
            "env_add": {},
        }
        fields.update(changes)
        return RunSpec(**fields)

    def start(self, job: Job, **changes: Any) -> RunHandle:
        name = f"run{next(self._names)}"
        script = self.folder / f"{name}.py"
        data = attrs.asdict(job)
        data["report"] = job.report if job.report else None
        data["signal"] = int(job.signal) if job.signal else None
        script.write_text(textwrap.dedent(SCRIPT.format(job=data)))
        spec = self._spec((sys.executable, str(script)), name, **changes)
        handle = self.runner.start(spec)
        self.handles.append((self.runner, handle))
        self.specs[handle.pid] = spec
        return handle

    def spec_of(self, handle: RunHandle) -> RunSpec:
        return self.specs[handle.pid]

    def start_unstartable(self) -> RunHandle:
        return self.runner.start(self._spec((str(self.folder / "no-such-program"),), "missing"))

    def log(self, handle: RunHandle) -> str:
        try:
            return Path(self.spec_of(handle).log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ready(self, handle: RunHandle) -> None:
        until(lambda: re.search("^ready$", self.log(handle), re.MULTILINE), "the run is ready")

    def pids(self, handle: RunHandle) -> list[int]:
        escapees = re.findall(r"^pid (\d+)$", self.log(handle), re.MULTILINE)
        return [handle.pid, *map(int, escapees)]

    def alive(self, handle: RunHandle) -> bool:
        return not all(gone(pid) for pid in self.pids(handle))

    def restart(self) -> RealDriver:
        child = RealDriver(self.folder, self.make, self.instance)
        child.specs = self.specs
        child._names = self._names
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            child.close()
        for runner, handle in self.handles:
            runner.stop(handle, 0)
        self.runner.close()


class FakeDriver:
    """The fake: a run ends when the driver says so, as a unit test would."""

    real = False

    def __init__(self, folder: Path, runner: FakeProcessRunner | None = None) -> None:
        self.folder = folder
        self.fake = runner or FakeProcessRunner()
        # As a server whose runs go on while it is down: runs are handed over at restart.
        self.fake.runs_survive_restart = True
        self.runner: ProcessRunner = self.fake
        self._names = itertools.count()

    def start(self, job: Job, **changes: Any) -> RunHandle:
        name = f"run{next(self._names)}"
        fields: dict[str, Any] = {
            "argv": ("python", f"{name}.py"),
            "cwd": str(self.folder),
            "log_path": str(self.folder / "logs" / f"{name}.log"),
            "env_add": {},
        }
        fields.update(changes)
        handle = self.fake.start(RunSpec(**fields))
        # The fake writes no log: the driver writes what the job prints, as the run would.
        log = Path(handle.spec.log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"{line}\n" for line in (*job.lines, "ready")))
        if not job.forever:
            used = job.memory_mb * MB + 10 * MB
            self.fake.finish(
                handle,
                -job.signal if job.signal else job.exit_code,
                duration=job.seconds + 0.01,
                peak=used,
                avg=used // 2,
            )
        return handle

    def spec_of(self, handle: RunHandle) -> RunSpec:
        assert isinstance(handle, FakeHandle)
        return handle.spec

    def start_unstartable(self) -> RunHandle:
        self.fake.fail_start = "No such file or directory: 'no-such-program'"
        try:
            return self.start(Job())
        finally:
            self.fake.fail_start = None

    def ready(self, handle: RunHandle) -> None:
        assert handle in self.fake.started or handle in self.fake.adopted

    def alive(self, handle: RunHandle) -> bool:
        assert isinstance(handle, FakeHandle)
        return not handle.done.is_set()

    def restart(self) -> FakeDriver:
        fresh = FakeProcessRunner()
        fresh.adoptable = {h.pid: h.spec for h in self.fake.running()}
        return FakeDriver(self.folder, fresh)

    def close(self) -> None:
        for handle in self.fake.running():
            self.fake.stop(handle, 0)
        self.fake.close()


def until(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Wait for ``condition`` (polled), failing at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """True when ``pid`` is not alive (a zombie awaiting its reaper is not alive)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # type: ignore[no-any-return]
    except psutil.NoSuchProcess:
        return True


def own_peak_mb() -> int:
    """This process's (the server's) own peak resident size, VmHWM, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024 + 1
    raise AssertionError("no VmHWM in /proc/self/status")


_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="contract-wait")


def wait(runner: ProcessRunner, handle: RunHandle, timeout: float = DEADLINE) -> RunResult:
    """``runner.wait`` with a deadline (a hung wait fails the test instead of the suite)."""
    return _pool.submit(runner.wait, handle).result(timeout=timeout)


def runner_options() -> dict[str, Any]:
    return {"sample_interval": 0.1, "timeout_grace": 1.0, "leftover_grace": 0.5}


RUNNERS = ["psutil", "supervised", "fake"]


@pytest.fixture(params=RUNNERS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    instance = f"contract-{secrets.token_hex(4)}"
    made: Driver
    if request.param == "psutil":
        made = RealDriver(
            tmp_path, lambda i: PsutilProcessRunner(instance_id=i, **runner_options()), instance
        )
    elif request.param == "supervised":
        made = RealDriver(
            tmp_path,
            lambda i: SupervisedProcessRunner(instance_id=i, **runner_options()),
            instance,
        )
    else:
        made = FakeDriver(tmp_path)
    yield made
    made.close()


def needs_processes(driver: Driver, why: str) -> None:
    if not driver.real:
        pytest.skip(f"the fake runs no process: {why}")


# --- start and wait -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_wait_gives_the_exit_code(driver: Driver, code: int) -> None:
    """wait returns once the run has ended, with its exit code and nothing else to tell."""
    result = wait(driver.runner, driver.start(Job(exit_code=code)))
    assert result.exit_code == code
    assert not result.timed_out
    assert result.start_failed is None
    assert result.limit_exceeded is None


def test_a_run_ended_by_a_signal_has_minus_its_number(driver: Driver) -> None:
    """A run killed by signal N exits with -N."""
    result = wait(driver.runner, driver.start(Job(signal=signal.SIGUSR1)))
    assert result.exit_code == -signal.SIGUSR1


def test_duration_covers_the_run(driver: Driver) -> None:
    """The duration (seconds) is at least how long the run went on."""
    result = wait(driver.runner, driver.start(Job(seconds=0.3)))
    assert 0.3 <= result.duration < DEADLINE


def test_a_program_that_cannot_start_raises_oserror(driver: Driver) -> None:
    """start raises OSError (and leaves no run) when the program cannot be started."""
    with pytest.raises(OSError, match="no-such-program"):
        driver.start_unstartable()


# --- the log ----------------------------------------------------------------------------------


def test_stdout_and_stderr_go_to_the_log_in_order(driver: Driver) -> None:
    """Both streams land in the run's log, merged in the order they were written."""
    lines = tuple(f"line {i} of the run" for i in range(6))
    handle = driver.start(Job(lines=lines))
    wait(driver.runner, handle)
    text = Path(driver.spec_of(handle).log_path).read_text()
    found = [line for line in text.splitlines() if line.startswith("line ")]
    assert found == list(lines)


def test_the_log_shows_output_while_the_run_goes(driver: Driver) -> None:
    """Output is in the log before the run ends (a user follows a long run)."""
    handle = driver.start(Job(lines=("early bird",), forever=True))
    driver.ready(handle)
    assert "early bird" in Path(driver.spec_of(handle).log_path).read_text()
    assert driver.alive(handle)
    driver.runner.stop(handle, 5)


def test_the_run_gets_its_variables_path_and_cwd_but_no_secret(
    driver: Driver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """env_add and path_prepend reach the run, in its cwd; the server's CTM_* secrets do not."""
    needs_processes(driver, "no environment, PATH or cwd to show")
    monkeypatch.setenv("CTM_CONTRACT_SECRET", "hunter2")
    monkeypatch.setenv("CONTRACT_PLAIN", "passed on")
    bin_dir = str(tmp_path / "env-bin")
    handle = driver.start(
        Job(report=("CTM_CONTRACT_SECRET", "CONTRACT_PLAIN", "CONTRACT_ADDED")),
        env_add={"CONTRACT_ADDED": "added"},
        path_prepend=(bin_dir,),
    )
    assert wait(driver.runner, handle).exit_code == 0
    spec = driver.spec_of(handle)
    lines = Path(spec.log_path).read_text().splitlines()
    assert f"cwd {spec.cwd}" in lines
    assert f"path {bin_dir}" in lines
    assert "env CTM_CONTRACT_SECRET=<unset>" in lines
    assert "env CONTRACT_PLAIN=passed on" in lines
    assert "env CONTRACT_ADDED=added" in lines


# --- memory -----------------------------------------------------------------------------------


def test_peak_memory_is_never_below_what_the_run_held(driver: Driver) -> None:
    """A run holding 100 MB: the peak is at least that, the average positive and at most it."""
    result = wait(driver.runner, driver.start(Job(memory_mb=100, seconds=0.3)))
    assert result.exit_code == 0
    assert result.peak_memory >= 100 * MB
    assert 0 < result.avg_memory <= result.peak_memory


def test_a_short_run_still_reports_its_peak(driver: Driver, request: pytest.FixtureRequest) -> None:
    """A run that ends right after taking its memory, before any sample is due, still reports
    what it held (the port: never below the OS's own peak for the main process)."""
    if request.node.callspec.params["driver"] == "psutil":
        # Known gap (docs/runs.md, "About ru_maxrss"): a run's wait4 peak no larger than the
        # server's own peak is ignored, and the early VmHWM reads may all miss the last
        # milliseconds. The next test shows the part it does keep.
        # The in-process runner is not the default (the supervised one is, and passes); the
        # gap is stated in the port's docstring rather than hidden behind an xfail that
        # passes half the time.
        pytest.skip("in-process runner: a short run's peak below the server's own is not kept")
    result = wait(driver.runner, driver.start(Job(memory_mb=60)))
    assert result.peak_memory >= 60 * MB


def test_a_short_run_larger_than_the_server_reports_its_peak(driver: Driver) -> None:
    """A run that ends right after taking more memory than the server's own peak reports at
    least that (the OS's figure at reaping is the run's own then)."""
    held = own_peak_mb() + 40
    result = wait(driver.runner, driver.start(Job(memory_mb=held)))
    assert result.peak_memory >= held * MB


# --- stop -------------------------------------------------------------------------------------


def test_stop_ends_the_whole_tree_with_sigterm(driver: Driver) -> None:
    """stop returns once no process of the run is alive, escapees from its group included; the
    result says SIGTERM ended it."""
    handle = driver.start(Job(escapees=2, forever=True))
    driver.ready(handle)
    assert driver.alive(handle)
    driver.runner.stop(handle, 5)
    assert not driver.alive(handle)
    result = wait(driver.runner, handle)
    assert result.exit_code == -signal.SIGTERM
    assert not result.timed_out


def test_stop_kills_after_the_grace_what_ignores_sigterm(driver: Driver) -> None:
    """A tree that ignores SIGTERM is killed (SIGKILL) once the grace has passed, not before."""
    needs_processes(driver, "nothing to ignore SIGTERM")
    handle = driver.start(Job(escapees=1, ignore_term=True, forever=True))
    driver.ready(handle)
    began = time.monotonic()
    driver.runner.stop(handle, 0.5)
    assert time.monotonic() - began >= 0.5
    assert not driver.alive(handle)
    assert wait(driver.runner, handle).exit_code == -signal.SIGKILL


def test_wait_in_another_thread_returns_when_the_run_is_stopped(driver: Driver) -> None:
    """A wait already blocked (the server's run thread) returns the stopped run's result."""
    handle = driver.start(Job(forever=True))
    driver.ready(handle)
    waiting = _pool.submit(driver.runner.wait, handle)
    driver.runner.stop(handle, 5)
    assert waiting.result(timeout=DEADLINE).exit_code == -signal.SIGTERM


def test_stop_of_an_ended_run_changes_nothing(driver: Driver) -> None:
    """Stopping a run that already ended (a user's late click) keeps its result."""
    handle = driver.start(Job(exit_code=3))
    result = wait(driver.runner, handle)
    driver.runner.stop(handle, 1)
    assert wait(driver.runner, handle) == result


# --- timeout ----------------------------------------------------------------------------------


def test_timeout_ends_the_run(driver: Driver) -> None:
    """A run past its timeout_seconds is stopped (SIGTERM) and its result says timed out."""
    needs_processes(driver, "it ignores timeout_seconds (tests pass finish(timed_out=True))")
    handle = driver.start(Job(escapees=1, forever=True), timeout_seconds=0.5)
    result = wait(driver.runner, handle)
    assert result.timed_out
    assert result.exit_code == -signal.SIGTERM
    assert 0.5 <= result.duration < DEADLINE
    assert not driver.alive(handle)
    assert "timed out" in Path(driver.spec_of(handle).log_path).read_text()


# --- a restart of the server ------------------------------------------------------------------


def test_adopt_of_an_unknown_run_is_none(driver: Driver, tmp_path: Path) -> None:
    """adopt of a pid no earlier life started (nothing recorded of it) gives None."""
    later = driver.restart()
    assert later.runner.adopt(4_000_000, str(tmp_path / "logs" / "unknown.log")) is None


def test_adopt_follows_a_run_left_going(driver: Driver) -> None:
    """When runs survive a restart, a run goes on past its runner's close and the next life
    adopts it: it is not stale, stop ends it and wait gives its real end."""
    if not driver.runner.runs_survive_restart:
        pytest.skip("runs_survive_restart is False: runs end with the server")
    handle = driver.start(Job(escapees=1, forever=True))
    driver.ready(handle)
    driver.runner.close()
    assert driver.alive(handle)
    later = driver.restart()
    adopted = later.runner.adopt(handle.pid, driver.spec_of(handle).log_path)
    assert adopted is not None
    assert adopted.pid == handle.pid
    assert later.runner.kill_stale_runs(1.0) == 0
    assert later.alive(adopted)
    later.runner.stop(adopted, 5)
    assert not later.alive(adopted)
    assert wait(later.runner, adopted).exit_code == -signal.SIGTERM


def test_adopt_of_a_run_that_ended_meanwhile_gives_its_result_at_once(driver: Driver) -> None:
    """A run that ended while the server was down: adopt's handle has its real result."""
    if not driver.runner.runs_survive_restart:
        pytest.skip("runs_survive_restart is False: runs end with the server")
    needs_processes(driver, "adoptable holds runs still going only")
    handle = driver.start(Job(exit_code=3))
    until(lambda: not driver.alive(handle), "the run ended")
    later = driver.restart()
    adopted = later.runner.adopt(handle.pid, driver.spec_of(handle).log_path)
    assert adopted is not None
    assert wait(later.runner, adopted, timeout=5).exit_code == 3


def test_adopt_is_none_when_runs_do_not_survive(driver: Driver) -> None:
    """When runs end with the server, adopt never follows one (its end cannot be known)."""
    if driver.runner.runs_survive_restart:
        pytest.skip("runs_survive_restart is True: runs are adopted")
    handle = driver.start(Job(forever=True))
    driver.ready(handle)
    later = driver.restart()
    assert later.runner.adopt(handle.pid, driver.spec_of(handle).log_path) is None
    driver.runner.stop(handle, 5)


def test_kill_stale_runs_stops_what_was_not_adopted(driver: Driver) -> None:
    """At start-up, every process of an earlier life's run that was not adopted is stopped."""
    needs_processes(driver, "no earlier life left processes (kill_stale_runs is 0)")
    handle = driver.start(Job(escapees=1, forever=True))
    driver.ready(handle)
    later = driver.restart()
    assert later.runner.kill_stale_runs(1.0) >= 2
    assert not driver.alive(handle)
    assert wait(driver.runner, handle).exit_code == -signal.SIGTERM
    assert later.runner.kill_stale_runs(1.0) == 0
