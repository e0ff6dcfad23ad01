"""Fair share of run slots: per-user FIFO queues served in turn, and a per-user run limit."""

from __future__ import annotations

from datetime import UTC, datetime

from ctm_adapters.fakes import FakeHandle
from ctm_core.commands import NewEnvironment, NewTask
from ctm_core.models import Principal, RunPolicy, TaskStatus
from tests.unit.conftest import World, make_world

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def fair_world(*, max_concurrent: int, per_user: int | None) -> World:
    return make_world(
        start=T0, max_concurrent=max_concurrent, policy=RunPolicy(max_runs_per_user=per_user)
    )


def queue_runs(world: World, user: Principal, count: int) -> list[int]:
    """Create ``count`` tasks of ``user`` due in one second, fire them (in creation order) and
    return their ids."""
    env = f"env-{user.username}"
    if not world.backend.exists(env):
        world.envs.create(user, NewEnvironment(name=env))
    ids = [
        world.tasks.create_task(
            user, NewTask.from_json({"script": f"print({n})", "conda_env": env, "delay_seconds": 1})
        ).task.id
        for n in range(count)
    ]
    world.clock.advance(1)
    world.scheduler.tick()
    return ids


def task_of(world: World, handle: FakeHandle) -> int:
    """The task whose script the fake run was started with."""
    script = handle.spec.argv[-1]
    return next(t.id for t in world.repo.list_tasks() if t.script_path == script)


def owner_of(world: World, handle: FakeHandle) -> int | None:
    return world.repo.get_task(task_of(world, handle)).owner_id


def finish_all(world: World) -> None:
    """Finish runs until none is running or queued (bounded)."""
    for _ in range(500):
        for h in world.runner.running():
            world.runner.finish(h, 0)
        if world.coordinator.wait_idle(0.05):
            return
    raise AssertionError("runs did not finish")


def test_a_long_queue_of_one_user_delays_another_by_one_slot_at_most() -> None:
    """With A's 50 runs waiting, B's one run takes the first slot that frees, before A's next."""
    world = fair_world(max_concurrent=2, per_user=2)
    alice, bob = world.alice, world.bob
    queue_runs(world, alice, 50)
    first_two = world.runner.wait_started(2)
    assert world.coordinator.queued_count() == 48
    [bob_task] = queue_runs(world, bob, 1)
    assert world.coordinator.queued_count() == 49
    assert len(world.runner.started) == 2, "no free slot yet: B waits too"
    world.runner.finish(first_two[0], 0)
    third = world.runner.wait_started(3)[2]
    assert task_of(world, third) == bob_task
    assert world.coordinator.running_of(alice.user_id) == 1
    finish_all(world)
    assert world.coordinator.max_seen == 2


def test_a_user_at_the_per_user_limit_is_passed_over_for_free_slots() -> None:
    """Global 4, per-user 2: A's 10 runs never hold more than 2 slots; B's run starts at once."""
    world = fair_world(max_concurrent=4, per_user=2)
    alice, bob = world.alice, world.bob
    alice_tasks = queue_runs(world, alice, 10)
    world.runner.wait_started(2)
    assert world.coordinator.running == 2, "two slots stay free: A is at its limit"
    assert world.coordinator.queued_count() == 8
    [bob_task] = queue_runs(world, bob, 1)
    assert task_of(world, world.runner.wait_started(3)[2]) == bob_task
    for n in range(3, 11):
        running = world.runner.running()
        assert sum(owner_of(world, h) == alice.user_id for h in running) <= 2
        assert world.coordinator.running_of(alice.user_id) <= 2
        oldest_alice = next(h for h in running if owner_of(world, h) == alice.user_id)
        world.runner.finish(oldest_alice, 0)
        started = world.runner.wait_started(n + 1)
        assert owner_of(world, started[n]) == alice.user_id
    assert world.coordinator.queued_count() == 0
    assert world.coordinator.running_of(alice.user_id) <= 2
    finish_all(world)
    assert world.coordinator.max_seen == 3
    assert all(world.repo.get_task(t).status is TaskStatus.COMPLETED for t in alice_tasks)
    assert world.coordinator.running_of(alice.user_id) == 0


def test_free_slots_go_round_robin_across_users() -> None:
    """Three users with three queued runs each are served A, B, C, A, B, C, ... in turn, each
    user's runs in the order they were due."""
    world = fair_world(max_concurrent=1, per_user=None)
    users = [world.alice, world.bob, world.admin]
    ids = {u.user_id: queue_runs(world, u, 3) for u in users}
    started = world.runner.wait_started(1)
    for n in range(1, 9):
        world.runner.finish(started[n - 1], 0)
        started = world.runner.wait_started(n + 1)
    order = [task_of(world, h) for h in started]
    a, b, c = (ids[u.user_id] for u in users)
    assert order == [a[0], b[0], c[0], a[1], b[1], c[1], a[2], b[2], c[2]]
    finish_all(world)


def test_adopted_runs_count_towards_their_owners_limit() -> None:
    """A run adopted at start-up holds one of its owner's slots: the owner's queued runs wait."""
    world = fair_world(max_concurrent=4, per_user=1)
    alice = world.alice
    [first] = queue_runs(world, alice, 1)
    [handle] = world.runner.wait_started(1)
    [execution] = world.repo.list_executions(first)
    # A new server over the same store adopts the run the old one left going.
    fresh = make_world(
        start=world.clock.now(), max_concurrent=4, policy=RunPolicy(max_runs_per_user=1)
    )
    fresh.repo = fresh.coordinator.repo = fresh.scheduler.repo = fresh.tasks.repo = world.repo
    fresh.coordinator.files = fresh.scheduler.files = world.files
    fresh.coordinator.backend = fresh.tasks.backend = world.backend
    fresh.runner.adoptable[handle.pid] = handle.spec
    assert fresh.coordinator.adopt(execution)
    assert fresh.coordinator.running_of(alice.user_id) == 1
    second = world.tasks.create_task(
        alice,
        NewTask.from_json({"script": "print(2)", "conda_env": "env-alice", "delay_seconds": 1}),
    ).task.id
    fresh.clock.advance(1)
    fresh.scheduler.tick()
    assert fresh.coordinator.is_active(second)
    assert fresh.coordinator.queued_count() == 1
    assert fresh.runner.started == []
    fresh.runner.finish(fresh.runner.adopted[0], 0)
    [started] = fresh.runner.wait_started(1)
    assert task_of(fresh, started) == second
    finish_all(fresh)
    world.runner.finish(handle, 0)


def test_stopping_a_queued_run_takes_it_out_of_its_users_queue() -> None:
    """Stopping a queued run records it stopped and leaves the other users' turns unchanged."""
    world = fair_world(max_concurrent=1, per_user=None)
    alice_tasks = queue_runs(world, world.alice, 2)
    [bob_task] = queue_runs(world, world.bob, 1)
    [first] = world.runner.wait_started(1)
    assert world.coordinator.queued_count() == 2
    assert world.coordinator.stop(bob_task)
    assert world.coordinator.queued_count() == 1
    assert world.repo.get_task(bob_task).status is TaskStatus.STOPPED
    world.runner.finish(first, 0)
    assert task_of(world, world.runner.wait_started(2)[1]) == alice_tasks[1]
    finish_all(world)
