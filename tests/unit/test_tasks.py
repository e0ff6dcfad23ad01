"""Task use cases: validation, environments, scripts, stop, delete, stats."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from ctm_core.commands import NewEnvironment, NewTask
from ctm_core.errors import (
    InvalidCronExpression,
    InvalidDelay,
    InvalidInput,
    NotOwner,
    RequirementsFailed,
    ReuseMissingEnvironment,
    ScheduleConflict,
    ScriptNotFound,
    ScriptOutsideRoots,
    TaskExists,
    TaskNotFound,
    TaskNotRunning,
)
from ctm_core.models import ExecutionStatus, TaskStatus
from tests.unit.conftest import World


def create(world: World, who: Any = None, **body: Any) -> Any:
    body.setdefault("script", "print('hi')")
    body.setdefault("conda_env", "env")
    return world.tasks.create_task(who or world.alice, NewTask.from_json(body))


def test_content_script_is_stored_and_named_after_its_id(world: World) -> None:
    """Inline code is stored in the data dir; the task is called task_<id>.py."""
    created = create(world)
    task = created.task
    assert task.name == f"task_{task.id}.py"
    assert world.files.files[task.script_path] == "print('hi')"
    assert created.environment_message == "Created new environment 'env'"


def test_path_script_must_exist_and_names_the_task(world: World) -> None:
    """A .py path runs that file; missing files are refused."""
    world.files.files["/srv/jobs/report.py"] = ""
    task = create(world, world.admin, script="/srv/jobs/report.py").task
    assert task.name == "report.py" and task.script_path == "/srv/jobs/report.py"
    with pytest.raises(ScriptNotFound):
        create(world, world.admin, script="/srv/jobs/missing.py")


def test_non_admins_may_only_name_scripts_inside_script_roots(world: World) -> None:
    """Paths outside the configured roots are forbidden to ordinary users."""
    world.files.files["/etc/secret.py"] = ""
    world.files.files["/srv/jobs/ok.py"] = ""
    with pytest.raises(ScriptOutsideRoots):
        create(world, script="/etc/secret.py")
    world.tasks.script_roots = ["/srv/jobs"]
    assert create(world, script="/srv/jobs/ok.py").task.name == "ok.py"


def test_duplicate_task_names_are_refused(world: World) -> None:
    """Task names are unique."""
    create(world, task_name="nightly")
    with pytest.raises(TaskExists) as info:
        create(world, task_name="nightly")
    assert info.value.error == "Task with name 'nightly' already exists"


def test_reuse_env_requires_an_existing_environment(world: World) -> None:
    """reuse_env true and no such env: refused, nothing created."""
    with pytest.raises(ReuseMissingEnvironment):
        create(world, conda_env="nope", reuse_env=True)
    assert not world.backend.exists("nope")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"cron_expression": "* * * * *", "delay_seconds": 5}, ScheduleConflict),
        ({"cron_expression": "61 * * * *"}, InvalidCronExpression),
        ({"cron_expression": "not cron"}, InvalidCronExpression),
        ({"delay_seconds": -1}, InvalidDelay),
        ({"delay_seconds": "soon"}, InvalidDelay),
        ({"delay_seconds": True}, InvalidDelay),
        ({"script": ""}, InvalidInput),
        ({"script": 42}, InvalidInput),
        ({"conda_env": None}, InvalidInput),
        ({"conda_env": "../etc"}, InvalidInput),
        ({"reuse_env": "yes"}, InvalidInput),
        ({"task_name": 7}, InvalidInput),
        ({"requirements": ["six"]}, InvalidInput),
        ({"timeout_seconds": -3}, InvalidInput),
    ],
)
def test_bad_fields_are_refused_before_anything_changes(
    world: World, body: dict[str, Any], error: type[Exception]
) -> None:
    """Every invalid field is refused and no task or environment is created."""
    with pytest.raises(error):
        create(world, **body)
    assert world.repo.list_tasks() == [] and world.backend.envs == {}


def test_cron_error_carries_croniters_message(world: World) -> None:
    """The invalid-cron error says what croniter found wrong."""
    with pytest.raises(InvalidCronExpression) as info:
        create(world, cron_expression="61 * * * *")
    assert info.value.error is not None and "61" in info.value.error


def test_requirements_failure_in_new_env_removes_the_env(world: World) -> None:
    """A new env whose requirements fail is deleted again."""
    with pytest.raises(RequirementsFailed) as info:
        create(world, conda_env="fresh", requirements="six\nno-such-thing==1.0\n")
    assert info.value.message == "Failed to install requirements in new environment"
    assert info.value.details["failed_packages"] == ["no-such-thing==1.0"]
    assert not world.backend.exists("fresh") and world.repo.list_tasks() == []


def test_requirements_failure_in_existing_env_states_truthfully(world: World) -> None:
    """An existing env left unchanged by a failed install says so."""
    world.envs.create(world.alice, NewEnvironment(name="env"))
    with pytest.raises(RequirementsFailed) as info:
        create(world, requirements="no-such-thing\n")
    assert info.value.message == "Failed to install requirements in existing environment"
    assert info.value.details["environment_state"].startswith("Environment unchanged")


def test_requirements_install_in_existing_env(world: World) -> None:
    """Requirements go into the existing env and the message says so."""
    world.envs.create(world.alice, NewEnvironment(name="env"))
    created = create(world, requirements="six\n# comment\nattrs\n")
    assert created.environment_message == "Requirements installed in existing environment 'env'"
    assert {"six", "attrs"} <= {p.name for p in world.backend.get_environment("env").packages}


def test_requirements_into_someone_elses_env_is_forbidden(world: World) -> None:
    """Bob cannot install requirements into alice's environment."""
    world.envs.create(world.alice, NewEnvironment(name="env"))
    with pytest.raises(NotOwner):
        create(world, world.bob, requirements="six")


def test_stop_only_running_tasks_and_only_owners(world: World) -> None:
    """Stop: 400-style error unless running, forbidden to others, then stopped."""
    tid = create(world).task.id
    with pytest.raises(TaskNotRunning) as info:
        world.tasks.stop_task(world.alice, tid)
    assert info.value.details["current_status"] == "scheduled"
    world.scheduler.tick()
    world.runner.wait_started(1)
    with pytest.raises(NotOwner):
        world.tasks.stop_task(world.bob, tid)
    assert world.tasks.stop_task(world.alice, tid).status is TaskStatus.STOPPED
    assert world.repo.get_task(tid).status is TaskStatus.STOPPED
    [ex] = world.repo.list_executions(tid)
    assert ex.status is ExecutionStatus.STOPPED and ex.exit_code == -15
    with pytest.raises(TaskNotFound):
        world.tasks.stop_task(world.alice, 999)


def test_delete_stops_run_and_removes_everything(world: World) -> None:
    """Delete stops the run, drops executions, logs and the stored script."""
    task = create(world).task
    world.scheduler.tick()
    world.runner.wait_started(1)
    world.tasks.delete_task(world.alice, task.id)
    assert world.runner.stopped
    with pytest.raises(TaskNotFound):
        world.repo.get_task(task.id)
    assert task.script_path in world.files.deleted


def test_stats_and_history_agree_with_runs(world: World) -> None:
    """Counts, durations, success rate and the 7-day chart follow what ran."""
    ok = create(world, task_name="ok").task.id
    bad = create(world, task_name="bad").task.id
    world.scheduler.tick()
    handles = world.runner.wait_started(2)
    by_task = {h.spec.argv[-1]: h for h in handles}
    world.runner.finish(by_task[world.repo.get_task(ok).script_path], 0, duration=2.0)
    world.runner.finish(by_task[world.repo.get_task(bad).script_path], 1, duration=4.0)
    assert world.coordinator.wait_idle(5)
    stats = world.tasks.stats()
    assert stats.counts["completed"] == 1 and stats.counts["failed"] == 1
    assert (stats.min_duration, stats.max_duration, stats.avg_duration) == (2.0, 4.0, 3.0)
    assert stats.success_rate == 50.0
    assert stats.success_counts[-1] == 1 and stats.failed_counts[-1] == 1
    assert stats.dates[-1] == world.clock.now().date().isoformat()
    assert len(stats.recent) == 2
    assert {e.task_id for e, _ in world.tasks.history().items} == {ok, bad}
    world.clock.advance(timedelta(days=31).total_seconds())
    assert world.tasks.history().items == []


def test_run_in_missing_env_fails_with_a_reason(world: World) -> None:
    """If the env vanished, the run is recorded failed with a log line."""
    tid = create(world).task.id
    world.backend.envs.clear()
    world.scheduler.tick()
    assert world.coordinator.wait_idle(5)
    [ex] = world.repo.list_executions(tid)
    assert ex.status is ExecutionStatus.FAILED
    assert ex.note == "environment 'env' was deleted"


def test_run_waiting_during_a_rename_follows_the_new_name(world: World) -> None:
    """A run due while its env is being renamed waits, then starts in the renamed env."""

    world.envs.create(world.alice, NewEnvironment(name="e1"))
    tid = create(world, conda_env="e1").task.id
    with world.envs.locks.hold("e1"):  # a rename under way holds the env's lock
        world.scheduler.tick()
        world.backend.rename("e1", "e2")
        world.repo.rename_environment("e1", "e2")
        assert world.runner.started == []
    [handle] = world.runner.wait_started(1)
    assert handle.spec.argv[0] == "/fake/envs/e2/bin/python"
    world.runner.finish(handle, 0)
    assert world.coordinator.wait_idle(5)
    assert world.repo.get_task(tid).status is TaskStatus.COMPLETED


def test_outside_roots_is_refused_before_existence_is_checked(world: World) -> None:
    """A non-admin cannot learn whether a file outside the roots exists."""
    with pytest.raises(ScriptOutsideRoots):
        create(world, script="/etc/does-not-exist.py")


def test_a_failed_script_store_leaves_no_task(world: World) -> None:
    """If the script cannot be stored, the half-made task is removed again."""

    def broken(name: str, content: str) -> str:
        raise OSError("disk full")

    world.files.store_script = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        create(world)
    assert world.repo.list_tasks() == []
