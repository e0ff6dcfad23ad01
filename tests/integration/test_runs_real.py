"""The run coordinator with real child processes and a real SQLite store."""

from __future__ import annotations

import sys
from pathlib import Path

from ctm_adapters.clock import SystemClock
from ctm_adapters.fakes import FakeEnvironmentBackend
from ctm_adapters.files import LocalFileStore
from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.sqlite import SqliteRepository
from ctm_core.commands import NewTask
from ctm_core.environments import EnvironmentService, KeyedLocks
from ctm_core.models import ExecutionStatus, Principal, RunEnvironment
from ctm_core.runs import RunCoordinator
from ctm_core.scheduler import Scheduler
from ctm_core.tasks import TaskService


class HostPythonBackend(FakeEnvironmentBackend):
    """Environments in memory whose interpreter is this test's own Python."""

    def run_environment(self, name: str) -> RunEnvironment:
        env = super().run_environment(name)
        return RunEnvironment(
            python=sys.executable, prefix=env.prefix, variables=env.variables, path_prepend=()
        )


def test_twenty_runs_with_a_limit_of_four(tmp_path: Path) -> None:
    """20 two-second runs, limit 4: all finish, and never more than 4 run at once."""
    from datetime import UTC

    repo = SqliteRepository(str(tmp_path / "db.sqlite3"))
    files = LocalFileStore(str(tmp_path / "data"))
    runner = PsutilProcessRunner(sample_interval=0.5)
    backend = HostPythonBackend()
    clock = SystemClock()
    locks = KeyedLocks()
    coordinator = RunCoordinator(
        repo=repo,
        backend=backend,
        runner=runner,
        files=files,
        clock=clock,
        env_locks=locks,
        max_concurrent=4,
    )
    envs = EnvironmentService(backend, repo, locks)
    scheduler = Scheduler(repo=repo, clock=clock, coordinator=coordinator, files=files, tz=UTC)
    tasks = TaskService(
        repo=repo,
        backend=backend,
        environments=envs,
        coordinator=coordinator,
        files=files,
        clock=clock,
        tz=UTC,
        env_locks=locks,
    )
    user = repo.add_user(username="u", password_hash="x", is_admin=True, created_at=clock.now())
    actor = Principal(user_id=user.id, username="u", is_admin=True)
    marks = tmp_path / "marks"
    script = (
        "import os, time\n"
        f"open({str(marks)!r}, 'a').write(f'+ {{time.monotonic()}}\\n')\n"
        "time.sleep(2)\n"
        f"open({str(marks)!r}, 'a').write(f'- {{time.monotonic()}}\\n')\n"
    )
    try:
        ids = [
            tasks.create_task(
                actor, NewTask.from_json({"script": script, "conda_env": "env"})
            ).task.id
            for _ in range(20)
        ]
        scheduler.tick()
        assert coordinator.wait_idle(60)
        for tid in ids:
            [ex] = repo.list_executions(tid)
            assert ex.status is ExecutionStatus.COMPLETED, ex
        events = sorted(
            (float(t), sign)
            for sign, t in (line.split() for line in marks.read_text().splitlines())
        )
        running = peak = 0
        for _, sign in events:
            running += 1 if sign == "+" else -1
            peak = max(peak, running)
        assert len(events) == 40
        assert peak == 4
        assert coordinator.max_seen == 4
    finally:
        runner.close()
        repo.close()
