"""Scheduling lateness: how late runs start against when they were due.

Runs the real core (scheduler loop on the system clock, SQLite store, real child processes)
and prints, for 100 one-shots due in the same second and for cron firings, the lateness of
each run's start (execution start_time - scheduled time) as p50/p99/max, next to the floor:
100 bare ``subprocess.Popen`` starts of the same interpreter from one thread.

    .venv/bin/python benchmarks/bench_scheduling.py [--in-process]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from ctm_adapters.clock import SystemClock
from ctm_adapters.fakes import FakeEnvironmentBackend
from ctm_adapters.files import LocalFileStore
from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.sqlite import SqliteRepository
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.environments import EnvironmentService, KeyedLocks
from ctm_core.models import Principal, RunEnvironment
from ctm_core.runs import RunCoordinator
from ctm_core.scheduler import Scheduler
from ctm_core.tasks import TaskService


class HostPython(FakeEnvironmentBackend):
    def run_environment(self, name: str) -> RunEnvironment:
        env = super().run_environment(name)
        return RunEnvironment(python=sys.executable, prefix=env.prefix,
                              variables=env.variables, path_prepend=())


SUPERVISED = "--in-process" not in sys.argv  # the server's runner, unless asked otherwise


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(label: str, values_ms: list[float]) -> None:
    print(f"  {label:<44} n={len(values_ms):>3}  p50 {pct(values_ms, .5):7.1f} ms"
          f"  p99 {pct(values_ms, .99):7.1f} ms  max {max(values_ms):7.1f} ms")


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


def build(tmp: Path, limit: int) -> tuple[Scheduler, TaskService, SqliteRepository,
                                          PsutilProcessRunner, Principal, RunCoordinator]:
    repo = SqliteRepository(str(tmp / "db.sqlite3"))
    files = LocalFileStore(str(tmp / "data"))
    runner: Any = (
        SupervisedProcessRunner(instance_id="bench-sched") if SUPERVISED else PsutilProcessRunner()
    )
    backend = HostPython()
    clock = SystemClock()
    locks, state = KeyedLocks(), threading.RLock()
    coord = RunCoordinator(repo=repo, backend=backend, runner=runner, files=files, clock=clock,
                           env_locks=locks, state_lock=state, max_concurrent=limit)
    sched = Scheduler(repo=repo, clock=clock, coordinator=coord, files=files, tz=UTC,
                      state_lock=state)
    tasks = TaskService(repo=repo, backend=backend,
                        environments=EnvironmentService(backend, repo, locks),
                        coordinator=coord, files=files, clock=clock, tz=UTC, env_locks=locks,
                        state_lock=state, on_change=sched.wake)
    user = repo.add_user(username="u", password_hash="x", is_admin=True, created_at=clock.now())
    actor = Principal(user_id=user.id, username="u", is_admin=True)
    return sched, tasks, repo, runner, actor, coord


async def one_shots(tmp: Path, limit: int) -> list[float]:
    sched, tasks, repo, runner, actor, coord = build(tmp, limit)
    loop_task = asyncio.create_task(sched.run())
    ids = [tasks.create_task(actor, {"script": "pass", "conda_env": "env",
                                     "delay_seconds": 2}).task.id for _ in range(100)]
    while not await asyncio.to_thread(coord.wait_idle, 0.1) or not all(
        repo.list_executions(i) for i in ids
    ):
        pass
    loop_task.cancel()
    late = []
    for i in ids:
        [ex] = repo.list_executions(i)
        assert ex.start_time and ex.scheduled_for
        late.append((ex.start_time - ex.scheduled_for).total_seconds() * 1000)
    runner.close()
    repo.close()
    return late


async def cron_firings(tmp: Path, seconds: int) -> list[float]:
    sched, tasks, repo, runner, actor, coord = build(tmp, 8)
    loop_task = asyncio.create_task(sched.run())
    ids = [tasks.create_task(actor, {"script": "pass", "conda_env": "env",
                                     "cron_expression": "* * * * * *"}).task.id
           for _ in range(5)]
    await asyncio.sleep(seconds)
    loop_task.cancel()
    await asyncio.to_thread(coord.wait_idle, 30)
    late = []
    for i in ids:
        for ex in repo.list_executions(i):
            if ex.start_time and ex.scheduled_for:
                late.append((ex.start_time - ex.scheduled_for).total_seconds() * 1000)
    runner.close()
    repo.close()
    return late


def main() -> None:
    kind = "supervised (as the server)" if SUPERVISED else "in-process"
    print(f"python {sys.version.split()[0]}, runner {kind}, lateness = run start - due time")
    floor = bare_floor(100)
    show("floor: 100 bare Popen starts (time to i-th)", floor)
    with tempfile.TemporaryDirectory() as d:
        show("100 one-shots due in the same second, limit 100",
             asyncio.run(one_shots(Path(d), 100)))
    with tempfile.TemporaryDirectory() as d:
        show("100 one-shots due in the same second, limit 2",
             asyncio.run(one_shots(Path(d), 2)))
    with tempfile.TemporaryDirectory() as d:
        show("cron '* * * * * *' x5 tasks for 10 s", asyncio.run(cron_firings(Path(d), 10)))


if __name__ == "__main__":
    main()
