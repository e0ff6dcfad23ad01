"""Contained runs, the core's side: per-task limits, the per-user task limit, what a run is
started with, and environments that other users' tasks cannot pin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ctm_core.commands import NewEnvironment, NewTask
from ctm_core.errors import EnvironmentInUse, InvalidInput, NotOwner, TaskLimitReached
from ctm_core.models import ExecutionStatus, RunPolicy, TaskStatus
from ctm_core.ports import RunLimits
from tests.unit.conftest import World, make_world

POLICY = RunPolicy(
    default_memory_limit_mb=2048.0,
    max_memory_limit_mb=4096.0,
    default_max_processes=64,
    max_max_processes=256,
    default_cpu_limit=None,
    max_cpu_limit=4.0,
    default_timeout_seconds=3600.0,
    network=True,
    max_tasks_per_user=2,
)


@pytest.fixture
def limited() -> Iterator[World]:
    w = make_world(policy=POLICY)
    yield w
    for h in w.runner.running():
        w.runner.finish(h, 0)


def create(world: World, who: Any = None, **body: Any) -> Any:
    body.setdefault("script", "print('hi')")
    body.setdefault("conda_env", "env")
    return world.tasks.create_task(who or world.alice, NewTask.from_json(body))


# --- task fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_limit_mb", 0),
        ("memory_limit_mb", -5),
        ("memory_limit_mb", True),
        ("memory_limit_mb", "512"),
        ("memory_limit_mb", float("nan")),
        ("memory_limit_mb", float("inf")),
        ("memory_limit_mb", 4096.5),
        ("max_processes", 0),
        ("max_processes", 1.5),
        ("max_processes", False),
        ("max_processes", "8"),
        ("max_processes", 257),
        ("max_processes", 10**30),
        ("cpu_limit", 0),
        ("cpu_limit", -1.0),
        ("cpu_limit", True),
        ("cpu_limit", 4.5),
        ("network", "yes"),
        ("network", 1),
        ("network", 0),
    ],
)
def test_bad_limit_fields_are_refused_naming_the_field(
    limited: World, field: str, value: object
) -> None:
    """A limit of the wrong type, out of range or over the server's maximum is an
    InvalidInput naming the field, and nothing is created."""
    with pytest.raises(InvalidInput) as info:
        create(limited, **{field: value})
    assert info.value.field == field
    assert limited.repo.list_tasks() == [] and limited.backend.envs == {}


def test_limit_fields_are_stored_as_given(limited: World) -> None:
    """Valid limits (up to the maxima) are stored on the task; an integral float is a count."""
    task = create(
        limited,
        memory_limit_mb=4096,
        max_processes=8.0,
        cpu_limit=0.5,
        network=False,
        timeout_seconds=30,
    ).task
    stored = limited.repo.get_task(task.id)
    assert (stored.memory_limit_mb, stored.max_processes, stored.cpu_limit, stored.network) == (
        4096.0,
        8,
        0.5,
        False,
    )
    assert isinstance(stored.max_processes, int) and stored.timeout_seconds == 30.0


def test_absent_limit_fields_stay_none(limited: World) -> None:
    """Absent or null limits and timeout stay None: the server's default applies at run time."""
    task = create(limited, network=None).task
    stored = limited.repo.get_task(task.id)
    assert (
        stored.memory_limit_mb,
        stored.max_processes,
        stored.cpu_limit,
        stored.network,
        stored.timeout_seconds,
    ) == (None, None, None, None, None)


def test_without_server_maxima_only_the_hard_ceilings_apply(world: World) -> None:
    """With no configured maximum, large limits are taken up to the built-in ceiling."""
    task = create(world, memory_limit_mb=1_000_000, max_processes=100_000, cpu_limit=512).task
    assert world.repo.get_task(task.id).max_processes == 100_000
    with pytest.raises(InvalidInput):
        create(world, max_processes=10**30)


# --- per-user task limit -----------------------------------------------------------------------


def test_non_admins_cannot_own_more_tasks_than_the_limit(limited: World) -> None:
    """The third task of a user limited to two is refused with the limit in the error."""
    first = create(limited).task
    create(limited)
    with pytest.raises(TaskLimitReached) as info:
        create(limited, conda_env="other-env")
    assert info.value.message == "Task limit reached"
    assert info.value.error == "At most 2 tasks per user"
    assert not limited.backend.exists("other-env")  # refused before anything changed
    create(limited, limited.bob)  # the limit is per user
    limited.tasks.delete_task(limited.alice, first.id)
    create(limited)  # a deleted task frees its place


def test_admins_have_no_task_limit(limited: World) -> None:
    """Admins may create tasks beyond the per-user limit."""
    for _ in range(3):
        create(limited, limited.admin)
    assert len(limited.repo.list_tasks()) == 3


# --- what a run is started with ----------------------------------------------------------------


def test_run_spec_uses_the_tasks_own_limits(limited: World) -> None:
    """A task's own limits, timeout and network choice reach the runner with its owner."""
    create(
        limited,
        memory_limit_mb=512,
        max_processes=16,
        cpu_limit=2,
        network=False,
        timeout_seconds=60,
    )
    limited.scheduler.tick()
    [handle] = limited.runner.wait_started(1)
    spec = handle.spec
    assert spec.limits == RunLimits(memory_mb=512.0, max_processes=16, cpu_cores=2.0)
    assert spec.timeout_seconds == 60.0 and spec.network is False
    assert (spec.owner, spec.owner_id) == ("alice", limited.alice.user_id)
    assert spec.prefix == "/fake/envs/env"


def test_run_spec_takes_server_defaults_for_absent_limits(limited: World) -> None:
    """Without its own limits a run gets the server's defaults and timeout."""
    create(limited)
    limited.scheduler.tick()
    [handle] = limited.runner.wait_started(1)
    assert handle.spec.limits == RunLimits(memory_mb=2048.0, max_processes=64, cpu_cores=None)
    assert handle.spec.timeout_seconds == 3600.0 and handle.spec.network is True


def test_server_without_network_cuts_every_run(world: World) -> None:
    """With the server's network off, a task asking for network still gets none."""
    world.coordinator.policy = RunPolicy(network=False)
    create(world, network=True)
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    assert handle.spec.network is False


def test_stored_script_runs_in_a_private_folder_reading_only_its_script(world: World) -> None:
    """A stored script: cwd is the run's own folder, the script the one read-only path."""
    task = create(world).task
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    [ex] = world.repo.list_executions(task.id)
    assert handle.spec.cwd == world.files.run_dir(ex.id)
    assert handle.spec.readonly_paths == (task.script_path,)


def test_path_script_runs_in_a_private_folder_reading_its_folder(world: World) -> None:
    """A path script: cwd is the run's own folder too; the script's folder is read-only."""
    world.files.files["/srv/jobs/report.py"] = ""
    task = create(world, world.admin, script="/srv/jobs/report.py").task
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    [ex] = world.repo.list_executions(task.id)
    assert handle.spec.cwd == world.files.run_dir(ex.id)
    assert handle.spec.readonly_paths == ("/srv/jobs",)
    assert handle.spec.owner == "admin"


def test_exceeded_limit_fails_the_run_with_its_reason(world: World) -> None:
    """A run ended by a limit is failed with the runner's text as its note."""
    task = create(world).task
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    world.runner.finish(handle, -9, limit_exceeded="memory limit 256 MB exceeded", timed_out=True)
    assert world.coordinator.wait_idle(5)
    [ex] = world.repo.list_executions(task.id)
    assert ex.status is ExecutionStatus.FAILED
    assert ex.note == "memory limit 256 MB exceeded"
    assert world.repo.get_task(task.id).status is TaskStatus.FAILED


def test_user_stop_wins_over_an_exceeded_limit(world: World) -> None:
    """A run stopped by its user is recorded stopped even if a limit ended it meanwhile."""
    task = create(world).task
    world.scheduler.tick()
    world.runner.wait_started(1)

    def stop_hitting_a_limit(handle: Any, grace_seconds: float) -> None:
        world.runner.finish(handle, -9, limit_exceeded="process limit 64 exceeded")

    world.runner.stop = stop_hitting_a_limit  # type: ignore[method-assign]
    world.tasks.stop_task(world.alice, task.id)
    [ex] = world.repo.list_executions(task.id)
    assert ex.status is ExecutionStatus.STOPPED and ex.note == "stopped by a user"


# --- environments other users' tasks cannot pin -----------------------------------------------


def test_owner_deletes_an_env_used_by_idle_tasks_of_others(world: World) -> None:
    """Bob's idle cron task does not pin alice's env; it keeps its history and its next run
    fails with a note that the environment was deleted."""
    world.envs.create(world.alice, NewEnvironment(name="shared"))
    task = create(world, world.bob, conda_env="shared", cron_expression="*/5 * * * *").task
    world.clock.advance(300)
    world.scheduler.tick()
    [first] = world.runner.wait_started(1)
    world.runner.finish(first, 0)
    assert world.coordinator.wait_idle(5)

    world.envs.delete(world.alice, "shared")

    assert not world.backend.exists("shared")
    assert world.repo.get_environment_owner("shared") is None
    kept = world.repo.get_task(task.id)
    assert kept.conda_env == "shared" and kept.cron_expression == "*/5 * * * *"
    world.clock.advance(300)
    world.scheduler.tick()
    assert world.coordinator.wait_idle(5)
    later, earlier = world.repo.list_executions(task.id)
    assert earlier.status is ExecutionStatus.COMPLETED
    assert later.status is ExecutionStatus.FAILED
    assert later.note == "environment 'shared' was deleted"
    assert len(world.runner.started) == 1


def test_a_running_task_pins_its_env(world: World) -> None:
    """While a task of the env runs, delete is refused naming it; once it ended, allowed."""
    world.envs.create(world.alice, NewEnvironment(name="shared"))
    task = create(world, world.bob, conda_env="shared").task
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    with pytest.raises(EnvironmentInUse) as info:
        world.envs.delete(world.alice, "shared")
    assert info.value.message == "Cannot delete environment that is referenced by tasks"
    assert info.value.referencing_tasks == [task.script_path]
    world.runner.finish(handle, 0)
    assert world.coordinator.wait_idle(5)
    world.envs.delete(world.alice, "shared")
    assert not world.backend.exists("shared")


def test_a_queued_run_pins_its_env() -> None:
    """A run waiting for a slot counts as active: its env cannot be deleted yet."""
    world = make_world(max_concurrent=1)
    world.envs.create(world.alice, NewEnvironment(name="busy"))
    world.envs.create(world.alice, NewEnvironment(name="shared"))
    create(world, conda_env="busy")
    world.scheduler.tick()
    [holder] = world.runner.wait_started(1)
    waiting = create(world, world.bob, conda_env="shared").task
    world.scheduler.tick()
    assert world.coordinator.is_active(waiting.id) and len(world.runner.started) == 1
    with pytest.raises(EnvironmentInUse) as info:
        world.envs.delete(world.alice, "shared")
    assert info.value.referencing_tasks == [waiting.script_path]
    world.runner.finish(holder, 0)
    world.runner.finish(world.runner.wait_started(2)[1], 0)
    assert world.coordinator.wait_idle(5)
    world.envs.delete(world.alice, "shared")


def test_only_the_owner_or_an_admin_deletes_a_shared_env(world: World) -> None:
    """Bob, whose tasks use alice's env, still may not delete it."""
    world.envs.create(world.alice, NewEnvironment(name="shared"))
    create(world, world.bob, conda_env="shared", cron_expression="0 0 * * *")
    with pytest.raises(NotOwner):
        world.envs.delete(world.bob, "shared")
    world.envs.delete(world.admin, "shared")
    assert len(world.repo.list_tasks()) == 1
