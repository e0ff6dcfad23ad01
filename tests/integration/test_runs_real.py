"""The run coordinator with real child processes and a real SQLite store."""

from __future__ import annotations

import sys
from pathlib import Path

from ctm_adapters.bootstrap import build_services, stop_services
from ctm_adapters.fakes import FakeEnvironmentBackend
from ctm_adapters.files import LocalFileStore
from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.settings import Settings
from ctm_adapters.sqlite import SqliteRepository
from ctm_core.commands import NewTask, NewUser
from ctm_core.models import ExecutionStatus, Principal, RunEnvironment


class HostPythonBackend(FakeEnvironmentBackend):
    """Environments in memory whose interpreter is this test's own Python."""

    def run_environment(self, name: str) -> RunEnvironment:
        env = super().run_environment(name)
        return RunEnvironment(
            python=sys.executable, prefix=env.prefix, variables=env.variables, path_prepend=()
        )


def test_twenty_runs_with_a_limit_of_four(tmp_path: Path) -> None:
    """20 two-second runs, limit 4: all finish, and never more than 4 run at once."""
    svc = build_services(
        Settings(
            data_dir=str(tmp_path / "data"),
            timezone="UTC",
            max_concurrent_runs=4,
            max_runs_per_user=4,  # one user owns all 20: only the global limit counts here
        ),
        repo=SqliteRepository(str(tmp_path / "db.sqlite3")),
        backend=HostPythonBackend(),
        runner=PsutilProcessRunner(sample_interval=0.5),
        files=LocalFileStore(str(tmp_path / "data")),
    )
    tasks, scheduler, coordinator = svc.tasks, svc.scheduler, svc.coordinator
    user = svc.auth.add_user(NewUser(username="u", password="password-u", is_admin=True))
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
            tasks.create_task(actor, NewTask(script=script, conda_env="env")).task.id
            for _ in range(20)
        ]
        scheduler.tick()
        assert coordinator.wait_idle(60)
        for tid in ids:
            [ex] = svc.repo.list_executions(tid)
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
        stop_services(svc)
