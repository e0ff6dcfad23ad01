"""Scheduling lateness: how late runs start against when they were due, next to two peers.

Runs the real core (scheduler loop on the system clock, SQLite store, real child processes) and
prints, for 100 one-shots due at the same instant and for cron firings, the lateness of each
run's start (execution start_time - due time) as p50/p99/max, beside two peers measured in the
same run of this script:

- floor: 100 bare ``subprocess.Popen`` starts of ``python -c pass`` from one thread (time from
  t0 until the i-th call returned);
- APScheduler 3 with its defaults (``BackgroundScheduler``, ``ThreadPoolExecutor`` of 10
  workers, misfire grace 1 s): 100 date jobs due at the same instant, each doing one ``Popen``
  of the same ``python -c pass``; lateness = the job's start - its due time (jobs it skipped as
  misfired are counted).

Two figures per peer: "start" is the issue's measure (ctm: the execution's recorded start_time,
taken just before ``runner.start``; APScheduler: the job's first line), "up" is when the
process exists (``runner.start`` or ``Popen`` returned), the one to hold against the floor.
Since run starts share the environment lock they go on side by side, and "start" no longer
contains any start's cost.

ctm rows use the supervised runner (the server's default) or, with ``--in-process``,
``PsutilProcessRunner``; each with the sandbox off and, when bubblewrap can contain runs here,
on (a venv of ``/usr/bin/python3`` when root, as ``bench_sandbox.py``). Each row gives its
ratios to the floor and to APScheduler at p50 and p99. The runner is new for each row: the
fork server (supervised runner) starts with the burst's first run, as after a server start.

    .venv/bin/python -m pip install -e '.[bench]'   # APScheduler 3
    .venv/bin/python benchmarks/bench_scheduling.py [--in-process | --no-fork-server]
        [--no-sandbox] [--no-cron] [--repeat N]

``--no-fork-server``: the supervised runner with a new supervisor interpreter per run (as before
the fork server), for comparison. ``--repeat N``: everything N times over (floor, APScheduler and
the ctm rows in turn, so machine noise hits them alike); each figure is the median of the N.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ctm_adapters._sandbox import Identities, Sandbox
from ctm_adapters.clock import SystemClock
from ctm_adapters.fakes import FakeEnvironmentBackend
from ctm_adapters.files import LocalFileStore
from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.sqlite import SqliteRepository
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.commands import NewTask
from ctm_core.environments import EnvironmentService, KeyedLocks
from ctm_core.models import Principal, RunEnvironment
from ctm_core.runs import RunCoordinator
from ctm_core.scheduler import Scheduler
from ctm_core.tasks import TaskService

N = 100
DELAY = 3.0  # seconds from "now" to the burst's due time: room to create the 100 tasks


class HostPython(FakeEnvironmentBackend):
    """Every environment runs ``python`` (with ``prefix``: a venv, for the sandbox)."""

    def __init__(self, python: str = sys.executable, prefix: str | None = None) -> None:
        super().__init__()
        self.python, self.prefix = python, prefix

    def run_environment(self, name: str) -> RunEnvironment:
        env = super().run_environment(name)
        return RunEnvironment(
            python=self.python,
            prefix=self.prefix or env.prefix,
            variables=env.variables,
            path_prepend=(),
        )


class PinnedClock(SystemClock):
    """The system clock, except that ``now`` stays at ``pinned`` while it is set: the tasks
    created meanwhile are all due at the same instant."""

    pinned: datetime | None = None

    def now(self) -> datetime:
        return self.pinned or super().now()


class Timed:
    """A runner that notes when each ``start`` returned (the run's process exists)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.up: dict[str, datetime] = {}  # log path -> when its start returned

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def start(self, spec: Any) -> Any:
        handle = self.runner.start(spec)
        self.up[spec.log_path] = datetime.now(UTC)
        return handle


class Services:
    """The core on one SQLite file, as the server composes it."""

    def __init__(self, tmp: Path, runner: Any, limit: int, backend: HostPython) -> None:
        self.runner = runner = Timed(runner)
        self.repo = SqliteRepository(str(tmp / "db.sqlite3"))
        files = LocalFileStore(str(tmp / "data"), crossable=True)
        clock, self.create_clock = SystemClock(), PinnedClock()
        locks = KeyedLocks()
        self.coord = RunCoordinator(
            repo=self.repo,
            backend=backend,
            runner=runner,
            files=files,
            clock=clock,
            env_locks=locks,
            max_concurrent=limit,
        )
        self.sched = Scheduler(
            repo=self.repo, clock=clock, coordinator=self.coord, files=files, tz=UTC
        )
        self.tasks = TaskService(
            repo=self.repo,
            backend=backend,
            environments=EnvironmentService(backend, self.repo, locks),
            coordinator=self.coord,
            files=files,
            clock=self.create_clock,
            tz=UTC,
            env_locks=locks,
            on_change=self.sched.wake,
        )
        user = self.repo.add_user(
            username="u", password_hash="x", is_admin=True, created_at=clock.now()
        )
        self.actor = Principal(user_id=user.id, username="u", is_admin=True)

    def close(self) -> None:
        self.runner.close()
        self.repo.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Table:
    """Lateness figures by row, one list per repeat; shown as the median over repeats."""

    def __init__(self) -> None:
        self.runs: dict[str, list[list[float]]] = {}

    def add(self, label: str, values: list[float]) -> None:
        self.runs.setdefault(label, []).append(values)

    def p(self, label: str, q: float) -> float:
        return statistics.median(pct(values, q) for values in self.runs[label])

    def show(self, label: str, *peers: tuple[str, str]) -> None:
        if label not in self.runs:
            return
        p50, p99 = self.p(label, 0.5), self.p(label, 0.99)
        top = statistics.median(max(values) for values in self.runs[label])
        n = statistics.median(len(values) for values in self.runs[label])
        ratios = "".join(
            f"   {name} x{p50 / self.p(peer, 0.5):5.2f} / x{p99 / self.p(peer, 0.99):5.2f}"
            for name, peer in peers
            if peer in self.runs
        )
        print(f"  {label:<34} n={n:>3g}  p50 {p50:7.1f}  p99 {p99:7.1f}  max {top:7.1f} ms{ratios}")


def bare_floor(n: int) -> list[float]:
    """Time from t0 until each of n bare Popen calls has returned (started one after another)."""
    t0 = time.monotonic()
    out, procs = [], []
    for _ in range(n):
        procs.append(subprocess.Popen([sys.executable, "-c", "pass"]))
        out.append((time.monotonic() - t0) * 1000)
    for p in procs:
        p.wait()
    return out


def apscheduler_burst(n: int) -> tuple[list[float], list[float], int]:
    """APScheduler 3, defaults: n date jobs due at one instant, each one Popen. Lateness in ms
    of each job's start and of its Popen's return, and how many jobs it dropped as misfired
    (more than its misfire grace late; each is counted as late as when it was dropped, a
    lower bound: such a job never runs)."""
    from apscheduler.events import EVENT_JOB_MISSED  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from apscheduler.schedulers.background import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        BackgroundScheduler,
    )

    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # not a line per missed job
    late: list[float] = []
    up: list[float] = []
    procs: list[subprocess.Popen[bytes]] = []
    missed: list[object] = []
    lock = threading.Lock()

    def dropped(_event: object) -> None:
        at = (datetime.now(UTC) - due).total_seconds() * 1000
        with lock:
            missed.append(_event)
            late.append(at)
            up.append(at)

    due = datetime.now(UTC) + timedelta(seconds=DELAY)

    def job() -> None:
        started = datetime.now(UTC)
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        returned = datetime.now(UTC)
        with lock:
            late.append((started - due).total_seconds() * 1000)
            up.append((returned - due).total_seconds() * 1000)
            procs.append(proc)

    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_listener(dropped, EVENT_JOB_MISSED)
    for _ in range(n):
        scheduler.add_job(job, "date", run_date=due)
    scheduler.start()
    deadline = time.monotonic() + DELAY + 60
    while len(late) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    scheduler.shutdown(wait=True)
    for p in procs:
        p.wait()
    return late, up, len(missed)


async def one_shots(svc: Services, n: int) -> tuple[list[float], list[float], int]:
    """n one-shot tasks due at the same instant: each run's lateness in ms (recorded start, and
    when its process existed), and how many of them did not complete."""
    loop_task = asyncio.create_task(svc.sched.run())
    svc.create_clock.pinned = SystemClock().now()
    created = time.monotonic()
    ids = [
        svc.tasks.create_task(
            svc.actor,
            NewTask.from_json({"script": "pass", "conda_env": "env", "delay_seconds": DELAY}),
        ).task.id
        for _ in range(n)
    ]
    svc.create_clock.pinned = None
    if time.monotonic() - created > DELAY:
        print(f"  (creating the tasks took {time.monotonic() - created:.1f} s > {DELAY} s)")
    while not await asyncio.to_thread(svc.coord.wait_idle, 0.1) or not all(
        svc.repo.list_executions(i) for i in ids
    ):
        pass
    loop_task.cancel()
    late, up, failed = [], [], 0
    for i in ids:
        [ex] = svc.repo.list_executions(i)
        assert ex.start_time and ex.scheduled_for and ex.log_path
        late.append((ex.start_time - ex.scheduled_for).total_seconds() * 1000)
        up.append((svc.runner.up[ex.log_path] - ex.scheduled_for).total_seconds() * 1000)
        failed += ex.status.value != "completed"
    return late, up, failed


async def cron_firings(svc: Services, seconds: int) -> list[float]:
    loop_task = asyncio.create_task(svc.sched.run())
    ids = [
        svc.tasks.create_task(
            svc.actor,
            NewTask.from_json(
                {"script": "pass", "conda_env": "env", "cron_expression": "* * * * * *"}
            ),
        ).task.id
        for _ in range(5)
    ]
    await asyncio.sleep(seconds)
    loop_task.cancel()
    await asyncio.to_thread(svc.coord.wait_idle, 30)
    late = []
    for i in ids:
        for ex in svc.repo.list_executions(i):
            if ex.start_time and ex.scheduled_for:
                late.append((ex.start_time - ex.scheduled_for).total_seconds() * 1000)
    return late


def sandbox_setup(top: str) -> tuple[Sandbox, Identities, HostPython] | None:
    """A sandbox hiding the data folder, per-user identities and a venv, or None."""
    box = Sandbox.find(hidden=(os.path.join(top, "data"), os.path.join(top, "homes")))
    if box is None:
        return None
    ids = Identities(homes_dir=os.path.join(top, "homes"))
    try:
        box.check(ids.trial())
    except Exception as exc:  # noqa: BLE001 - any reason it cannot contain runs here
        print(f"  (no sandbox rows: {exc})")
        return None
    venv = os.path.join(top, "venv")
    python = "/usr/bin/python3" if os.geteuid() == 0 else sys.executable
    subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True)
    return box, ids, HostPython(os.path.join(venv, "bin", "python"), venv)


def make_runner(kind: str, instance: str, **options: Any) -> Any:
    if kind == "in-process":
        return PsutilProcessRunner(**options)
    if kind != "supervised":
        options["fork_server"] = False
    return SupervisedProcessRunner(instance_id=instance, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-process", action="store_true", help="PsutilProcessRunner")
    parser.add_argument(
        "--no-fork-server", action="store_true", help="a supervisor interpreter per run"
    )
    parser.add_argument("--no-sandbox", action="store_true", help="skip the sandboxed rows")
    parser.add_argument("--no-cron", action="store_true", help="skip the cron row")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure everything N times, show the medians"
    )
    args = parser.parse_args()
    runner_kind = (
        "in-process"
        if args.in_process
        else "supervisor interpreters"
        if args.no_fork_server
        else "supervised"
    )
    kind = "supervised (as the server)" if runner_kind == "supervised" else runner_kind
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; runner {kind}; "
        f"lateness = run start - due time; median of {args.repeat} repeat(s); ratios p50 / p99"
    )
    table = Table()
    floor, aps_start, aps_up = (
        "floor: 100 bare Popen (to i-th)",
        "APScheduler: start",
        "APScheduler: up",
    )
    missed, failed = 0, 0
    rows: list[tuple[str, int, bool]] = [("ctm, limit 100", 100, False), ("ctm, limit 2", 2, False)]
    with tempfile.TemporaryDirectory(prefix="ctm-bench-sched-") as top:
        os.chmod(top, 0o755)
        contained = None if args.no_sandbox else sandbox_setup(top)
        if contained is not None:
            rows.append(("ctm sandboxed, limit 100", 100, True))
        for repeat in range(args.repeat):
            table.add(floor, bare_floor(N))
            try:
                late, up, missing = apscheduler_burst(N)
            except ImportError:
                print("  (APScheduler 3 is not installed: pip install -e '.[bench]')")
            else:
                table.add(aps_start, late)
                table.add(aps_up, up)
                missed += missing
            for i, (label, limit, boxed) in enumerate(rows):
                work = Path(top) / f"r{repeat}-{i}"
                work.mkdir()
                instance = f"bench-sched-{repeat}-{i}"
                if boxed:
                    assert contained is not None
                    box, ids, backend = contained
                    runner = make_runner(runner_kind, instance, identities=ids, sandbox=box)
                else:
                    backend, runner = HostPython(), make_runner(runner_kind, instance)
                svc = Services(work, runner, limit, backend)
                try:
                    late, up, not_completed = asyncio.run(one_shots(svc, N))
                finally:
                    svc.close()
                table.add(f"{label}: start", late)
                table.add(f"{label}: up", up)
                failed += not_completed
        table.show(floor)
        table.show(aps_start, ("floor", floor))
        table.show(aps_up, ("floor", floor))
        for label, _limit, _boxed in rows:
            table.show(f"{label}: start", ("floor", floor), ("APScheduler", aps_start))
            table.show(f"{label}: up", ("floor", floor), ("APScheduler", aps_up))
        if missed:
            print(
                f"  APScheduler dropped {missed} job(s) as misfired (more than 1 s late; counted"
                " as late as when dropped)"
            )
        if failed:
            print(f"  ctm: {failed} run(s) did not complete")
        if not args.no_cron:
            work = Path(top) / "cron"
            work.mkdir()
            svc = Services(work, make_runner(runner_kind, "bench-sched-cron"), 8, HostPython())
            try:
                late = asyncio.run(cron_firings(svc, 10))
            finally:
                svc.close()
            table.add("cron * * * * * * x5 tasks, 10 s", late)
            table.show("cron * * * * * * x5 tasks, 10 s")
    print(f"  load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
