"""The scheduler driven by the fake clock: due times, misfires, overlaps, restarts."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctm_core.commands import Credentials, NewEnvironment, NewTask
from ctm_core.errors import InvalidInput, NotOwner, TaskAlreadyActive
from ctm_core.models import ExecutionStatus, TaskStatus
from tests.unit.conftest import World, make_world

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def settle(world: World, deadline: float = 5.0) -> None:
    """Wait (bounded) until every launched run has been recorded."""
    assert world.coordinator.wait_idle(deadline), "runs did not finish"


def run_until(world: World, horizon: datetime) -> None:
    """Advance the fake clock from due time to due time, as the loop would sleep."""
    while True:
        nxt = world.scheduler.tick()
        settle(world)
        if nxt > horizon:
            world.clock.set(horizon)
            world.scheduler.tick()
            settle(world)
            return
        world.clock.set(max(nxt, world.clock.now()))


def add_task(world: World, **schedule: object) -> int:
    if not world.backend.exists("env"):
        world.envs.create(world.alice, NewEnvironment(name="env"))
    return world.tasks.create_task(
        world.alice, NewTask.from_json({"script": "print('hi')", "conda_env": "env", **schedule})
    ).task.id


def test_immediate_task_runs_at_once_and_completes() -> None:
    """No cron, no delay: the task runs at creation time and ends completed."""
    world = make_world(start=T0, auto_exit_code=0)
    tid = add_task(world)
    world.scheduler.tick()
    settle(world)
    task = world.repo.get_task(tid)
    assert task.status is TaskStatus.COMPLETED
    assert task.next_run_at is None
    [ex] = world.repo.list_executions(tid)
    assert ex.status is ExecutionStatus.COMPLETED and ex.start_time == T0


def test_delay_runs_once_after_the_delay() -> None:
    """delay_seconds: 90 runs exactly once, 90 s after creation."""
    world = make_world(start=T0, auto_exit_code=0)
    tid = add_task(world, delay_seconds=90)
    run_until(world, T0 + timedelta(days=1))
    assert [(d, n) for t, d, n in world.scheduler.fired if t == tid] == [
        (T0 + timedelta(seconds=90), T0 + timedelta(seconds=90))
    ]


def test_cron_runs_every_occurrence_over_simulated_days() -> None:
    """A 15-minute cron task fires 96 times a day, each at its occurrence."""
    world = make_world(start=T0, auto_exit_code=0)
    tid = add_task(world, cron_expression="*/15 * * * *")
    run_until(world, T0 + timedelta(days=3))
    times = [d for t, d, _ in world.scheduler.fired if t == tid]
    assert len(times) == 3 * 96
    assert all(t.minute % 15 == 0 and t.second == 0 for t in times)
    assert len(world.repo.list_executions(tid)) == 3 * 96


def test_missed_cron_occurrences_run_once() -> None:
    """After 5 hours asleep, an hourly task runs once, then resumes its schedule."""
    world = make_world(start=T0, auto_exit_code=0)
    tid = add_task(world, cron_expression="0 * * * *")
    world.clock.set(T0 + timedelta(hours=5, minutes=30))
    world.scheduler.tick()
    settle(world)
    assert len(world.repo.list_executions(tid)) == 1
    assert world.repo.get_task(tid).next_run_at == T0 + timedelta(hours=6)


def test_overlapping_occurrence_is_skipped_and_recorded() -> None:
    """While a run of the task goes on, its next occurrence is recorded as skipped."""
    world = make_world(start=T0)
    tid = add_task(world, cron_expression="* * * * * */10")
    world.clock.set(T0 + timedelta(seconds=10))
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    world.clock.advance(10)
    world.scheduler.tick()
    statuses = sorted(e.status.value for e in world.repo.list_executions(tid))
    assert statuses == ["running", "skipped"]
    world.runner.finish(handle, 0)
    settle(world)
    assert world.repo.get_task(tid).status is TaskStatus.COMPLETED


def test_global_limit_queues_runs_in_order() -> None:
    """With a limit of 2, five due runs start two at a time, in the order they were due."""
    world = make_world(start=T0, max_concurrent=2)
    ids = [add_task(world, delay_seconds=i) for i in range(5)]
    scripts = [world.repo.get_task(i).script_path for i in ids]
    world.clock.advance(10)
    world.scheduler.tick()
    started = world.runner.wait_started(2)
    assert {h.spec.argv[-1] for h in started} == set(scripts[:2])
    assert world.coordinator.queued_count() == 3
    for n in range(2, 5):
        oldest = next(h for h in world.runner.started if h.spec.argv[-1] == scripts[n - 2])
        world.runner.finish(oldest, 0)
        handles = world.runner.wait_started(n + 1)
        assert handles[n].spec.argv[-1] == scripts[n]
        assert len(world.runner.running()) == 2
        assert world.coordinator.running <= 2
    for h in world.runner.running():
        world.runner.finish(h, 0)
    settle(world)
    assert world.coordinator.max_seen == 2
    assert all(world.repo.get_task(i).status is TaskStatus.COMPLETED for i in ids)


def test_restart_marks_running_failed_and_reruns_queued() -> None:
    """Recovery: a run left running is failed with a log line; a queued one runs."""
    world = make_world(start=T0)
    first = add_task(world)
    world.scheduler.tick()
    world.runner.wait_started(1)
    # A new process over the same store: what the old one left is resolved.
    fresh = make_world(start=T0 + timedelta(minutes=1), auto_exit_code=0)
    fresh.repo = world.repo
    fresh.scheduler.repo = fresh.coordinator.repo = world.repo
    fresh.scheduler.files = fresh.coordinator.files = world.files
    fresh.coordinator.backend = world.backend
    statuses: list[ExecutionStatus] = []
    fresh.scheduler.recover(
        lambda: statuses.extend(e.status for e in world.repo.list_executions(first))
    )
    assert statuses == [ExecutionStatus.RUNNING], "marked failed only after stale runs stopped"
    settle(fresh)
    [ex] = world.repo.list_executions(first)
    assert ex.status is ExecutionStatus.FAILED
    assert world.repo.get_task(first).status is TaskStatus.FAILED
    assert "server stopped" in world.files.files[ex.log_path or ""]
    for h in world.runner.running():
        world.runner.finish(h, 0)


def test_loop_sleeps_until_due_time_and_wakes_on_change() -> None:
    """The async loop fires a delayed task when the fake clock reaches it, not before."""
    world = make_world(start=T0, auto_exit_code=0)

    async def scenario() -> None:
        loop_task = asyncio.create_task(world.scheduler.run())
        tid = add_task(world, delay_seconds=30)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if world.clock.pending():
                break
        assert world.clock.pending()[0] == T0 + timedelta(seconds=30)
        assert world.repo.list_executions(tid) == []
        world.clock.advance(30)
        for _ in range(400):
            await asyncio.sleep(0.005)
            if world.repo.get_task(tid).status is TaskStatus.COMPLETED:
                break
        assert world.repo.get_task(tid).status is TaskStatus.COMPLETED
        loop_task.cancel()

    asyncio.run(scenario())


minutes = st.sampled_from(["*", "*/5", "*/7", "0", "15,45", "10-20", "3"])
hours = st.sampled_from(["*", "*/2", "9-17", "0", "6,18"])
dows = st.sampled_from(["*", "1-5", "0", "6"])
seconds = st.sampled_from([None, "0", "*/20", "30"])


@st.composite
def cron_expressions(draw: st.DrawFn) -> str:
    expr = f"{draw(minutes)} {draw(hours)} * * {draw(dows)}"
    sec = draw(seconds)
    return expr + (f" {sec}" if sec else "")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    crons=st.lists(cron_expressions(), min_size=1, max_size=3),
    delays=st.lists(st.integers(0, 40000), max_size=3),
)
def test_every_run_is_at_a_croniter_time_none_twice_none_missed(
    crons: list[str], delays: list[int]
) -> None:
    """Over 12 simulated hours, fired times equal croniter's occurrences exactly."""
    world = make_world(start=T0, auto_exit_code=0)
    horizon = T0 + timedelta(hours=12)
    cron_ids = {add_task(world, cron_expression=c): c for c in crons}
    delay_ids = {add_task(world, delay_seconds=d): d for d in delays}
    run_until(world, horizon)
    for tid, expr in cron_ids.items():
        itr = croniter(expr, T0)
        expected = []
        while (t := itr.get_next(datetime)) <= horizon:
            expected.append(t)
        fired = [d for t, d, _ in world.scheduler.fired if t == tid]
        assert fired == expected
        assert all(d == n for t, d, n in world.scheduler.fired if t == tid)
    for tid, delay in delay_ids.items():
        fired = [d for t, d, _ in world.scheduler.fired if t == tid]
        assert fired == [T0 + timedelta(seconds=delay)]


def test_retention_prunes_old_runs_and_their_logs() -> None:
    """Over 40 simulated days of a daily task, the hourly upkeep keeps only the last 30 days."""
    world = make_world(start=T0, auto_exit_code=0)
    tid = add_task(world, cron_expression="0 0 * * *")
    run_until(world, T0 + timedelta(days=40))
    fired = [d for t, d, _ in world.scheduler.fired if t == tid]
    kept = world.repo.list_executions(tid)
    assert len(fired) == 40
    assert len(kept) == 30
    assert all(e.end_time and e.end_time >= world.clock.now() - timedelta(days=31) for e in kept)
    assert len([p for p in world.files.deleted if p.endswith(".log")]) == 10


def test_maintenance_purges_expired_sessions() -> None:
    """The hourly maintenance hook ends sessions past their idle time."""
    world = make_world(start=T0)
    world.scheduler.on_maintenance = world.auth.purge_sessions
    token, _ = world.auth.login(Credentials(username="alice", password="password-alice"), "c")
    world.clock.advance(3600)
    world.scheduler.maintenance()
    from ctm_core.auth import hash_token

    assert world.repo.get_session(hash_token(token)) is None


def test_restart_adopts_a_run_the_runner_can_follow() -> None:
    """Recovery with a runner whose runs survive: the run left running is adopted, holds a slot,
    and is recorded with its real result when it ends."""
    world = make_world(start=T0)
    first = add_task(world)
    world.scheduler.tick()
    [old] = world.runner.wait_started(1)
    fresh = make_world(start=T0 + timedelta(minutes=1))
    fresh.repo = world.repo
    fresh.scheduler.repo = fresh.coordinator.repo = world.repo
    fresh.scheduler.files = fresh.coordinator.files = world.files
    fresh.coordinator.backend = world.backend
    fresh.runner.adoptable[old.pid] = old.spec
    seen: list[int] = []
    fresh.scheduler.recover(lambda: seen.append(len(fresh.runner.adopted)))
    assert seen == [1], "stale runs are stopped after adoption"
    [adopted] = fresh.runner.adopted
    assert adopted.pid == old.pid
    assert fresh.coordinator.is_active(first) and fresh.coordinator.running == 1
    [ex] = world.repo.list_executions(first)
    assert ex.status is ExecutionStatus.RUNNING
    fresh.runner.finish(adopted, 0, duration=4.0)
    settle(fresh)
    [ex] = world.repo.list_executions(first)
    assert ex.status is ExecutionStatus.COMPLETED and ex.exit_code == 0 and ex.duration == 4.0
    assert world.repo.get_task(first).status is TaskStatus.COMPLETED
    assert "server" not in world.files.files.get(ex.log_path or "", "")
    assert fresh.coordinator.running == 0


def test_shutdown_leaves_surviving_runs_going() -> None:
    """With a runner whose runs outlive the server, shutdown neither stops nor records them:
    they stay running in the store for the next server to adopt."""
    world = make_world(start=T0)
    world.runner.runs_survive_restart = True
    tid = add_task(world)
    world.scheduler.tick()
    [handle] = world.runner.wait_started(1)
    world.coordinator.stop_all(0.1)
    assert world.runner.stopped == []
    world.runner.finish(handle, 0)  # ends while the server goes down: the next one records it
    time.sleep(0.1)
    [ex] = world.repo.list_executions(tid)
    assert ex.status is ExecutionStatus.RUNNING


def test_shutdown_ends_runs_as_failed_with_a_reason() -> None:
    """A graceful shutdown stops runs and records why, never leaving them running."""
    world = make_world(start=T0)
    tid = add_task(world)
    world.scheduler.tick()
    world.runner.wait_started(1)
    world.coordinator.stop_all(0.1)
    [ex] = world.repo.list_executions(tid)
    assert ex.status is ExecutionStatus.FAILED
    assert ex.note == "ended because the server shut down"
    assert "server shut down" in world.files.files[ex.log_path or ""]


def test_a_failing_tick_never_ends_the_loop() -> None:
    """An unexpected error in one tick is reported, and the loop fires tasks afterwards."""
    world = make_world(start=T0, auto_exit_code=0)
    errors: list[BaseException] = []
    world.scheduler.on_error = errors.append
    real_list = world.repo.due_tasks
    calls = {"n": 0}

    def flaky(now: Any) -> list[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database hiccup")
        return real_list(now)

    world.repo.due_tasks = flaky  # type: ignore[method-assign]

    async def scenario() -> None:
        loop_task = asyncio.create_task(world.scheduler.run())
        tid = add_task(world)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if errors:
                break
        world.clock.advance(1)
        for _ in range(400):
            await asyncio.sleep(0.005)
            if world.repo.get_task(tid).status is TaskStatus.COMPLETED:
                break
        assert world.repo.get_task(tid).status is TaskStatus.COMPLETED
        loop_task.cancel()

    asyncio.run(scenario())
    assert [str(e) for e in errors] == ["database hiccup"]


def test_queued_runs_hold_no_thread_and_survive_shutdown() -> None:
    """Runs waiting for a slot use no thread; at shutdown they stay queued for the restart."""
    import threading

    world = make_world(start=T0, max_concurrent=1)
    ids = [add_task(world) for _ in range(30)]
    before = threading.active_count()
    world.scheduler.tick()
    world.runner.wait_started(1)
    assert world.coordinator.queued_count() == 29
    assert threading.active_count() <= before + 1
    world.coordinator.stop_all(0.1)
    statuses = [world.repo.list_executions(i)[0].status for i in ids]
    assert statuses[0] is ExecutionStatus.FAILED
    assert set(statuses[1:]) == {ExecutionStatus.QUEUED}


def test_a_task_in_its_own_time_zone_fires_at_the_right_utc_instant_across_dst() -> None:
    """The server is in New York, which moves its clocks on 2026-03-08; a task at 09:00
    Asia/Shanghai (no DST) fires at 01:00 UTC every day across that change, while a task at
    09:00 in the server's zone moves from 14:00 to 13:00 UTC."""
    start = datetime(2026, 3, 6, 2, 0, tzinfo=UTC)
    world = make_world(start=start, tz="America/New_York", auto_exit_code=0)
    shanghai = add_task(world, cron_expression="0 9 * * *", timezone="Asia/Shanghai")
    local = add_task(world, cron_expression="0 9 * * *")
    assert world.repo.get_task(shanghai).timezone == "Asia/Shanghai"
    fired: dict[int, list[datetime]] = {shanghai: [], local: []}
    for _ in range(4 * 24):  # four days, an hour at a time
        world.clock.advance(3600)
        world.scheduler.tick()
        settle(world)
        for tid, times in fired.items():
            times[:] = sorted(
                e.scheduled_for for e in world.repo.list_executions(tid) if e.scheduled_for
            )
    assert fired[shanghai] == [datetime(2026, 3, d, 1, 0, tzinfo=UTC) for d in (7, 8, 9, 10)]
    assert fired[local] == [
        datetime(2026, 3, 6, 14, 0, tzinfo=UTC),
        datetime(2026, 3, 7, 14, 0, tzinfo=UTC),
        datetime(2026, 3, 8, 13, 0, tzinfo=UTC),
        datetime(2026, 3, 9, 13, 0, tzinfo=UTC),
    ]


def test_an_unknown_or_malformed_time_zone_is_refused() -> None:
    world = make_world(start=T0)
    for zone, message in (
        ("Mars/Olympus_Mons", "Unknown time zone"),
        ("../../etc/passwd", "IANA time zone name"),
        ("Asia/Shanghai\n", "IANA time zone name"),
        (8, "must be a string"),
    ):
        with pytest.raises(InvalidInput, match=message) as refused:
            add_task(world, cron_expression="0 9 * * *", timezone=zone)
        assert refused.value.field == "timezone"
    assert world.repo.list_tasks() == []


def test_a_paused_task_fires_nothing_and_resumes_on_its_schedule() -> None:
    """Paused at 12:00, a */10 cron task fires nothing for 35 minutes; resumed at 12:35 it
    fires next at 12:40 (the missed occurrences are not made up); pause and resume are the
    owner's or an admin's."""
    world = make_world(start=T0, auto_exit_code=0)
    tid = add_task(world, cron_expression="*/10 * * * *")
    with pytest.raises(NotOwner):
        world.tasks.pause_task(world.bob, tid)
    assert world.tasks.pause_task(world.alice, tid).paused
    for _ in range(35):
        world.clock.advance(60)
        world.scheduler.tick()
    assert world.repo.list_executions(tid) == []
    resumed = world.tasks.resume_task(world.admin, tid)
    assert not resumed.paused
    assert resumed.next_run_at == T0 + timedelta(minutes=40)
    world.clock.advance(5 * 60)
    world.scheduler.tick()
    settle(world)
    [run] = world.repo.list_executions(tid)
    assert run.scheduled_for == T0 + timedelta(minutes=40)


def test_run_now_runs_outside_the_schedule_and_refuses_an_overlap() -> None:
    """A run now of a paused cron task starts at once without moving its schedule; a second
    one while the first runs is TaskAlreadyActive; another user may not run it."""
    world = make_world(start=T0)
    tid = add_task(world, cron_expression="0 * * * *")
    world.tasks.pause_task(world.alice, tid)
    execution = world.tasks.run_now(world.alice, tid)
    [handle] = world.runner.wait_started(1)
    assert world.repo.get_task(tid).next_run_at == T0 + timedelta(hours=1)
    with pytest.raises(TaskAlreadyActive):
        world.tasks.run_now(world.alice, tid)
    with pytest.raises(NotOwner):
        world.tasks.run_now(world.bob, tid)
    world.runner.finish(handle, 0)
    settle(world)
    stored = world.repo.get_execution(execution.id)
    assert stored is not None and stored.status is ExecutionStatus.COMPLETED
    assert world.repo.get_task(tid).paused
