"""Runs whose start or end the store refuses (disk full): the end is written again after a growing
pause on the clock, the run never stays ``running`` once its process is gone, and stop says so."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from ctm_adapters.memory import InMemoryRepository
from ctm_core.commands import NewTask
from ctm_core.errors import StorageUnavailable, TaskNotRunning
from ctm_core.models import Execution, ExecutionStatus, TaskStatus
from tests.unit.conftest import World, make_world


class FullRepository(InMemoryRepository):
    """An in-memory repository whose disk is full for the next ``refuse_ends`` run ends and
    ``refuse_starts`` run starts."""

    def __init__(self, *, refuse_ends: int = 0, refuse_starts: int = 0) -> None:
        super().__init__()
        self.refuse_ends = refuse_ends
        self.refuse_starts = refuse_starts
        self.end_tries = 0

    def record_run_end(self, execution: Execution, *, only_if_latest: bool = False) -> bool:
        self.end_tries += 1
        if self.refuse_ends > 0:
            self.refuse_ends -= 1
            raise StorageUnavailable("disk full")
        return super().record_run_end(execution, only_if_latest=only_if_latest)

    def record_run_start(self, execution: Execution) -> bool:
        if self.refuse_starts > 0:
            self.refuse_starts -= 1
            raise StorageUnavailable("disk full")
        return super().record_run_start(execution)


def full_world(**refusals: int) -> tuple[World, FullRepository]:
    repo = FullRepository(**refusals)
    return make_world(repo=repo, max_concurrent=1), repo


def create(world: World, **body: Any) -> int:
    body.setdefault("script", "print('hi')")
    body.setdefault("conda_env", "env")
    return world.tasks.create_task(world.alice, NewTask.from_json(body)).task.id


def next_pause(world: World, timeout: float = 5.0) -> datetime:
    """The time the coordinator's retry sleeps until (waiting for it to go to sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = world.clock.pending()
        if pending:
            return pending[0]
        time.sleep(0.002)
    raise AssertionError("no retry is waiting on the clock")


def test_a_refused_end_is_written_again_after_a_growing_pause() -> None:
    """Three refusals: tries after 1, 2 and 4 s on the clock; the fourth records it."""
    world, repo = full_world(refuse_ends=3)
    tid = create(world)
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    world.runner.finish(handle, 0)
    for pause in (1, 2, 4):
        assert next_pause(world) == world.clock.now() + timedelta(seconds=pause)
        assert world.coordinator.is_active(tid)
        assert world.repo.get_task(tid).status is TaskStatus.RUNNING
        world.clock.advance(pause)
    assert world.coordinator.wait_idle(5)
    assert repo.end_tries == 4
    [execution] = world.repo.list_executions(tid)
    assert execution.status is ExecutionStatus.COMPLETED and execution.exit_code == 0
    assert world.repo.get_task(tid).status is TaskStatus.COMPLETED


def test_the_pause_between_tries_stops_growing_at_its_maximum() -> None:
    """Doubling stops at ``end_retry_max`` (10 s)."""
    world, _repo = full_world(refuse_ends=6)
    create(world)
    world.scheduler.tick()
    world.runner.finish(world.runner.wait_started(1)[0], 0)
    pauses = []
    for _ in range(5):
        pause = (next_pause(world) - world.clock.now()).total_seconds()
        pauses.append(pause)
        world.clock.advance(pause)
    assert pauses == [1, 2, 4, 8, 10]
    assert next_pause(world) == world.clock.now() + timedelta(seconds=10)
    world.clock.advance(10)
    assert world.coordinator.wait_idle(5)


def test_a_run_waiting_for_its_end_frees_its_slot_and_keeps_its_task_active() -> None:
    """With one slot, the next task runs meanwhile; the waiting task is still active."""
    world, _repo = full_world(refuse_ends=1)
    first = create(world, task_name="first")
    second = create(world, task_name="second")
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    world.runner.finish(handle, 0)
    later = world.runner.wait_started(2)[1]
    assert world.coordinator.is_active(first) and world.coordinator.is_active(second)
    world.runner.finish(later, 0)
    next_pause(world)
    world.clock.advance(1)
    assert world.coordinator.wait_idle(5)
    assert world.repo.get_task(first).status is TaskStatus.COMPLETED
    assert world.repo.get_task(second).status is TaskStatus.COMPLETED


def test_stop_ends_the_process_and_says_when_the_stop_cannot_be_recorded() -> None:
    """Stop while the disk is full: the process ends, stop raises StorageUnavailable, and
    the run is recorded stopped once the store takes it."""
    world, _repo = full_world(refuse_ends=1)
    tid = create(world)
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    with pytest.raises(StorageUnavailable, match="disk full"):
        world.tasks.stop_task(world.alice, tid)
    assert world.runner.stopped == [handle.pid]
    assert world.coordinator.is_active(tid)
    next_pause(world)
    world.clock.advance(1)
    assert world.coordinator.wait_idle(5)
    [execution] = world.repo.list_executions(tid)
    assert execution.status is ExecutionStatus.STOPPED and execution.note == "stopped by a user"
    assert world.repo.get_task(tid).status is TaskStatus.STOPPED


def test_stop_of_a_run_that_ended_before_its_end_was_recorded() -> None:
    """Its process is gone: stop says the store is unavailable (at once, no grace waited),
    and the run keeps its own outcome when recorded; a stop after that is refused as usual."""
    world, _repo = full_world(refuse_ends=1)
    tid = create(world)
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    world.runner.finish(handle, 3)
    next_pause(world)
    world.coordinator.stop_grace = 60.0  # a stop waiting for the grace would fail the test
    with pytest.raises(StorageUnavailable):
        world.coordinator.stop(tid, timeout=60.0)
    assert world.runner.stopped == []
    world.clock.advance(1)
    assert world.coordinator.wait_idle(5)
    assert world.repo.get_task(tid).status is TaskStatus.FAILED
    with pytest.raises(TaskNotRunning) as info:
        world.tasks.stop_task(world.alice, tid)
    assert info.value.details["current_status"] == "failed"


def test_stopping_a_queued_run_while_the_store_is_full() -> None:
    """A queued run stopped while the disk is full leaves its queue for good, and is recorded
    stopped later."""
    world, repo = full_world()
    running = create(world, task_name="running")
    queued = create(world, task_name="queued")
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    assert world.coordinator.queued_count() == 1
    repo.refuse_ends = 1
    with pytest.raises(StorageUnavailable):
        world.coordinator.stop(queued)
    assert world.coordinator.queued_count() == 0
    next_pause(world)
    world.clock.advance(1)
    world.runner.finish(handle, 0)
    assert world.coordinator.wait_idle(5)
    assert len(world.runner.started) == 1
    [execution] = world.repo.list_executions(queued)
    assert execution.status is ExecutionStatus.STOPPED
    assert world.repo.get_task(running).status is TaskStatus.COMPLETED


def test_a_run_whose_start_cannot_be_recorded_is_stopped_and_fails() -> None:
    """No run goes on that the store does not show: it is stopped, and fails with a note."""
    world, _repo = full_world(refuse_starts=1)
    tid = create(world)
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    assert world.coordinator.wait_idle(5)
    assert world.runner.stopped == [handle.pid]
    [execution] = world.repo.list_executions(tid)
    assert execution.status is ExecutionStatus.FAILED
    assert execution.note == "stopped: its start could not be recorded (disk full)"


def test_a_run_that_cannot_get_its_folder_fails_to_start() -> None:
    """A working folder the disk cannot give is a start failure, recorded with its reason."""
    world, _repo = full_world()
    tid = create(world)

    def full(execution_id: str) -> str:
        raise OSError(28, "No space left on device")

    world.files.run_dir = full  # type: ignore[method-assign]
    world.scheduler.tick()
    assert world.coordinator.wait_idle(5)
    assert world.runner.started == []
    [execution] = world.repo.list_executions(tid)
    assert execution.status is ExecutionStatus.FAILED
    assert execution.note == "could not start: [Errno 28] No space left on device"


def test_the_end_of_a_run_lost_in_a_restart_is_retried() -> None:
    """Recovery marks a lost run failed even when the store first refuses it."""
    world, repo = full_world()
    tid = create(world)
    world.scheduler.tick()
    world.runner.wait_started(1)
    fresh = make_world(start=world.clock.now())  # a new process over the same store
    fresh.repo = fresh.scheduler.repo = fresh.coordinator.repo = repo
    fresh.scheduler.files = fresh.coordinator.files = world.files
    repo.refuse_ends = 1
    fresh.scheduler.recover()
    assert fresh.coordinator.is_active(tid)
    assert next_pause(fresh) == fresh.clock.now() + timedelta(seconds=1)
    fresh.clock.advance(1)
    assert fresh.coordinator.wait_idle(5)
    assert repo.get_task(tid).status is TaskStatus.FAILED
    for h in world.runner.running():
        world.runner.finish(h, 0)
