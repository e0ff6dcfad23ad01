"""Cron occurrences that come while the task still runs: consecutive skips make one record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ctm_core.commands import NewEnvironment, NewTask
from ctm_core.models import Execution, ExecutionStatus
from ctm_http._serialize import execution_body
from ctm_http.openapi import COMPONENT_SCHEMAS
from tests.unit.conftest import World, make_world

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def every_second_task(world: World) -> int:
    world.envs.create(world.alice, NewEnvironment(name="env"))
    return world.tasks.create_task(
        world.alice,
        NewTask.from_json(
            {"script": "print('hi')", "conda_env": "env", "cron_expression": "* * * * * *"}
        ),
    ).task.id


def tick_at(world: World, when: datetime) -> None:
    world.clock.set(when)
    world.scheduler.tick()


def skips(world: World, task_id: int) -> list[Execution]:
    return [e for e in world.repo.list_executions(task_id) if e.status is ExecutionStatus.SKIPPED]


def test_skips_during_one_long_run_make_one_record_with_count_and_times() -> None:
    """10 every-second occurrences skipped during one run are ONE skipped record: count 10, first
    and last skipped times those of the first and the tenth occurrence."""
    world = make_world(start=T0)
    tid = every_second_task(world)
    tick_at(world, T0 + SECOND)
    [handle] = world.runner.wait_started(1)
    for n in range(2, 12):
        tick_at(world, T0 + n * SECOND)
    [skip] = skips(world, tid)
    assert skip.skip_count == 10
    assert skip.first_skipped_at == T0 + 2 * SECOND
    assert skip.last_skipped_at == T0 + 11 * SECOND
    assert skip.scheduled_for == T0 + 2 * SECOND
    assert (skip.start_time, skip.end_time) == (T0 + 2 * SECOND, T0 + 11 * SECOND)
    assert len(world.repo.list_executions(tid)) == 2
    assert len(world.scheduler.fired) == 11, "every occurrence still counts as a firing"
    world.runner.finish(handle, 0)
    assert world.coordinator.wait_idle(5)


def test_a_run_between_skips_starts_a_new_skip_record() -> None:
    """Skips before and after a run that started in between are two records, not one."""
    world = make_world(start=T0)
    tid = every_second_task(world)
    tick_at(world, T0 + SECOND)
    [first] = world.runner.wait_started(1)
    for n in (2, 3, 4):
        tick_at(world, T0 + n * SECOND)
    world.runner.finish(first, 0)
    assert world.coordinator.wait_idle(5)
    tick_at(world, T0 + 5 * SECOND)  # runs: the task was idle
    second = world.runner.wait_started(2)[1]
    for n in (6, 7):
        tick_at(world, T0 + n * SECOND)
    later, earlier = skips(world, tid)
    assert (earlier.skip_count, earlier.first_skipped_at, earlier.last_skipped_at) == (
        3,
        T0 + 2 * SECOND,
        T0 + 4 * SECOND,
    )
    assert (later.skip_count, later.first_skipped_at, later.last_skipped_at) == (
        2,
        T0 + 6 * SECOND,
        T0 + 7 * SECOND,
    )
    assert len(world.repo.list_executions(tid)) == 4
    world.runner.finish(second, 0)
    assert world.coordinator.wait_idle(5)


def test_skip_records_are_kept_per_task() -> None:
    """Two busy tasks skipping at the same times each get their own skip record."""
    world = make_world(start=T0)
    one = every_second_task(world)
    two = world.tasks.create_task(
        world.alice,
        NewTask.from_json(
            {"script": "print(2)", "conda_env": "env", "cron_expression": "* * * * * *"}
        ),
    ).task.id
    tick_at(world, T0 + SECOND)
    world.runner.wait_started(2)
    for n in range(2, 5):
        tick_at(world, T0 + n * SECOND)
    assert [s.skip_count for s in skips(world, one)] == [3]
    assert [s.skip_count for s in skips(world, two)] == [3]
    for h in world.runner.running():
        world.runner.finish(h, 0)
    assert world.coordinator.wait_idle(5)


def test_a_skipped_record_is_serialized_with_its_count_and_times() -> None:
    """A skipped record's body carries skip_count and the first and last skipped times, formatted
    like the other times and declared in the Execution schema; other records do not."""
    skip = Execution(
        id="s",
        task_id=1,
        status=ExecutionStatus.SKIPPED,
        scheduled_for=T0 + SECOND,
        start_time=T0 + SECOND,
        end_time=T0 + 3 * SECOND,
        skip_count=3,
        first_skipped_at=T0 + SECOND,
        last_skipped_at=T0 + 3 * SECOND,
    )
    body = execution_body(skip, UTC)
    assert body["skip_count"] == 3
    assert body["first_skipped_at"] == "2026-05-01 12:00:01" == body["start_time"]
    assert body["last_skipped_at"] == "2026-05-01 12:00:03" == body["end_time"]
    schema = COMPONENT_SCHEMAS["Execution"]["properties"]
    assert {"skip_count", "first_skipped_at", "last_skipped_at"} <= set(schema)
    run = execution_body(Execution(id="r", task_id=1, status=ExecutionStatus.QUEUED), UTC)
    assert "skip_count" not in run
