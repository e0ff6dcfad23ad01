"""The rules that hold when two actors race, on the SQLite repository (a real file, its own
transactions and compare-and-set; no Python lock shared by the services).

- Two creates with one name: one task, the other gets ``TaskExists``; unnamed ones never collide.
- The per-user task limit holds against parallel creates.
- A delete racing a start: the run is stopped, nothing of the task is left, nothing hangs.
- A stop racing the run's own end: the run keeps one outcome, recorded once, and the task shows
  it; a stop that comes too late answers ``TaskNotRunning`` with the status the run ended with.
- Two firings of one occurrence start one run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ctm_adapters.fakes import FakeHandle, FakeProcessRunner
from ctm_adapters.sqlite import SqliteRepository
from ctm_core.commands import NewEnvironment, NewTask
from ctm_core.errors import TaskExists, TaskLimitReached, TaskNotRunning
from ctm_core.models import ExecutionStatus, RunPolicy, TaskStatus
from ctm_core.ports import RunSpec
from tests.unit.conftest import World, make_world

THREADS = 8


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    repo = SqliteRepository(tmp_path / "ctm.sqlite3")
    world = make_world(repo=repo)
    world.envs.create(world.alice, NewEnvironment(name="env"))
    yield world
    for handle in world.runner.running():
        world.runner.finish(handle, 0)
    world.coordinator.wait_idle(5)
    repo.close()


def together(n: int, action: Callable[[int], Any]) -> list[Any]:
    """Run ``action(i)`` in ``n`` threads released at once; each result, or the exception."""
    barrier = threading.Barrier(n)

    def one(i: int) -> Any:
        barrier.wait(5)
        try:
            return action(i)
        except Exception as exc:  # the rule under test is which ones raise
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        pause.wait(0.001)


def create(world: World, **body: Any) -> Any:
    body.setdefault("script", "print('hi')")
    body.setdefault("conda_env", "env")
    body.setdefault("reuse_env", True)
    return world.tasks.create_task(world.alice, NewTask.from_json(body))


def test_two_creates_with_one_name_make_one_task(sqlite_world: World) -> None:
    results = together(THREADS, lambda _i: create(sqlite_world, task_name="nightly"))
    created = [r for r in results if not isinstance(r, Exception)]
    assert len(created) == 1
    assert all(isinstance(r, TaskExists) for r in results if r not in created)
    assert [t.name for t in sqlite_world.repo.list_tasks()] == ["nightly"]


def test_unnamed_creates_in_parallel_each_get_their_own_name_and_script(
    sqlite_world: World,
) -> None:
    results = together(THREADS, lambda i: create(sqlite_world, script=f"print({i})"))
    assert not [r for r in results if isinstance(r, Exception)]
    tasks = sqlite_world.repo.list_tasks()
    assert sorted(t.name for t in tasks) == sorted(f"task_{t.id}.py" for t in tasks)
    scripts = {sqlite_world.files.files[t.script_path] for t in tasks}
    assert scripts == {f"print({i})" for i in range(THREADS)}


def test_the_task_limit_holds_against_parallel_creates(tmp_path: Path) -> None:
    repo = SqliteRepository(tmp_path / "ctm.sqlite3")
    world = make_world(repo=repo, policy=RunPolicy(max_tasks_per_user=3))
    world.envs.create(world.alice, NewEnvironment(name="env"))
    try:
        results = together(THREADS, lambda _i: create(world, cron_expression="0 0 1 1 *"))
        assert sum(not isinstance(r, Exception) for r in results) == 3
        assert all(isinstance(r, TaskLimitReached) for r in results if isinstance(r, Exception))
        assert repo.count_tasks_owned_by(world.alice.user_id) == 3
    finally:
        repo.close()


class GatedRunner(FakeProcessRunner):
    """A fake runner whose ``start`` waits at a gate: a start caught half-way."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def start(self, spec: RunSpec) -> FakeHandle:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().start(spec)


def gated_world(tmp_path: Path) -> tuple[World, GatedRunner, SqliteRepository]:
    repo = SqliteRepository(tmp_path / "ctm.sqlite3")
    runner = GatedRunner()
    world = make_world(repo=repo, runner=runner)
    world.envs.create(world.alice, NewEnvironment(name="env"))
    return world, runner, repo


def test_a_delete_racing_a_start_stops_the_run_and_leaves_nothing(tmp_path: Path) -> None:
    world, runner, repo = gated_world(tmp_path)
    try:
        task_id = create(world).task.id
        world.scheduler.tick()  # due now: fired, its run is starting
        assert runner.entered.wait(5)
        deleting = threading.Thread(target=world.tasks.delete_task, args=(world.alice, task_id))
        deleting.start()
        # The delete waits for the starting run: it cannot finish before the start does.
        deleting.join(0.2)
        assert deleting.is_alive()
        runner.gate.set()
        deleting.join(10)
        assert not deleting.is_alive()
        assert world.coordinator.wait_idle(5)
        assert runner.running() == []
        assert [h.pid for h in runner.started] == runner.stopped
        assert repo.list_tasks() == [] and repo.list_executions(task_id) == []
        assert repo.unfinished_executions() == []
    finally:
        runner.gate.set()
        repo.close()


def test_a_task_row_gone_while_its_run_starts_ends_the_run(tmp_path: Path) -> None:
    """The task is deleted from the store (not through the service) during the start: the
    start's record finds nothing to update, and the run is stopped at once."""
    world, runner, repo = gated_world(tmp_path)
    try:
        task_id = create(world).task.id
        world.scheduler.tick()
        assert runner.entered.wait(5)
        repo.delete_task(task_id)
        runner.gate.set()
        assert world.coordinator.wait_idle(5)
        assert runner.running() == []
        assert len(runner.stopped) == 1
        assert repo.list_executions(task_id) == []
    finally:
        runner.gate.set()
        repo.close()


def test_a_stop_racing_the_runs_own_end_keeps_one_outcome(sqlite_world: World) -> None:
    world = sqlite_world
    outcomes: set[str] = set()
    for round_ in range(20):
        task_id = create(world, task_name=f"race-{round_}").task.id
        world.scheduler.tick()
        handle = world.runner.wait_started(round_ + 1)[-1]
        wait_until(lambda t=task_id: world.repo.get_task(t).status is TaskStatus.RUNNING)
        results = together(
            2,
            lambda i, h=handle, t=task_id: (
                world.runner.finish(h, 0) if i == 0 else world.tasks.stop_task(world.alice, t)
            ),
        )
        stop_result = results[1]
        assert world.coordinator.wait_idle(5)
        executions = world.repo.list_executions(task_id)
        assert len(executions) == 1
        [execution] = executions
        task = world.repo.get_task(task_id)
        assert execution.status in (ExecutionStatus.COMPLETED, ExecutionStatus.STOPPED)
        assert task.status.value == execution.status.value
        assert task.last_execution_id == execution.id
        if isinstance(stop_result, TaskNotRunning):
            # Too late: the run had ended on its own and says so.
            assert execution.status is ExecutionStatus.COMPLETED
            assert "completed" in str(stop_result.error)
        else:  # the stop answers with the task as the run's end left it
            assert stop_result.status.value == execution.status.value
        outcomes.add(execution.status.value)
    assert outcomes  # every round ended with one of the two outcomes above


def test_two_firings_of_one_occurrence_start_one_run(sqlite_world: World) -> None:
    world = sqlite_world
    task_id = create(world, task_name="once").task.id
    task = world.repo.get_task(task_id)
    fired = together(THREADS, lambda _i: world.scheduler.fire(task, world.clock.now()))
    assert sum(fired) == 1
    world.runner.wait_started(1)
    assert len(world.repo.list_executions(task_id)) == 1
    assert world.repo.get_task(task_id).next_run_at is None
