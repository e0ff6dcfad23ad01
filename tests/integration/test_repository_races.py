"""Real races against the SQLite repository on a file: threads lined up on a barrier hit the same
rows at once, through one repository (the server's threads) or two on the same file (the server
and an admin CLI). What must hold is what the port promises: a compare-and-set claims an
occurrence once, a limit counted in the same transaction holds, and a reader never sees half of a
change made in one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from ctm_adapters._sqlite_store import READERS
from ctm_adapters.sqlite import SqliteRepository
from ctm_core.errors import TaskExists, TaskLimitReached
from ctm_core.models import Execution, ExecutionStatus, Task, TaskStatus
from tests.integration.test_repository_contract import (
    T0,
    at,
    make_execution,
    make_task,
    skip_at,
)

THREADS = 16
BARRIER_TIMEOUT = 60.0

_R = TypeVar("_R")


def minute_of(when: datetime) -> int:
    return (when - T0) // timedelta(minutes=1)


def occurrence(ident: str, task_id: int, minute: int, *, skipped: bool = False) -> Execution:
    """The execution the scheduler builds for the occurrence at ``minute``."""
    if skipped:
        return skip_at(ident, task_id, minute)
    return make_execution(ident, task_id, scheduled_for=at(minute))


def race(workers: int, work: Callable[[int], _R]) -> list[_R]:
    """Run ``work(0 .. workers-1)`` in as many threads, released together by a barrier; return
    their results in worker order (re-raising the first error)."""
    start = threading.Barrier(workers, timeout=BARRIER_TIMEOUT)

    def lined_up(worker: int) -> _R:
        start.wait()
        return work(worker)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(lined_up, w) for w in range(workers)]
        return [f.result() for f in futures]


def outcome(call: Callable[[], object]) -> object:
    """What ``call`` returned, or the class of the exception it raised."""
    try:
        return call()
    except Exception as exc:  # the race tests count which error each thread got
        return type(exc)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "ctm.sqlite3")


@pytest.fixture(params=["one-repository", "two-repositories"])
def repos(request: pytest.FixtureRequest, db_path: str) -> Iterator[list[SqliteRepository]]:
    """The repositories the racing threads use in turn: one shared, or two on one file."""
    count = 1 if request.param == "one-repository" else 2
    opened = [SqliteRepository(db_path) for _ in range(count)]
    try:
        yield opened
    finally:
        for repo in opened:
            repo.close()


def pick(repos: list[SqliteRepository], worker: int) -> SqliteRepository:
    return repos[worker % len(repos)]


# --- claiming one occurrence -------------------------------------------------------------------


@pytest.mark.parametrize("skipped", [False, True], ids=["queued", "skipped"])
def test_many_threads_claim_one_occurrence_exactly_once(
    repos: list[SqliteRepository], skipped: bool
) -> None:
    """THREADS firings of the same occurrence at once: exactly one is claimed and exactly one
    execution is stored (a skip counted once), round after round."""
    repo = repos[0]
    task = repo.add_task(make_task("cron", next_run_at=at(0)))
    for minute in range(10):

        def fire(worker: int, minute: int = minute) -> Execution | None:
            execution = occurrence(f"m{minute}-w{worker}", task.id, minute, skipped=skipped)
            return pick(repos, worker).claim_occurrence(
                execution, due=at(minute), next_run_at=at(minute + 1)
            )

        results = race(THREADS, fire)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, f"occurrence {minute} claimed {len(winners)} times"
        assert repo.get_task(task.id).next_run_at == at(minute + 1)
        stored = repo.list_executions(task.id)
        if skipped:
            [record] = stored
            assert record.skip_count == minute + 1
            assert (record.first_skipped_at, record.last_skipped_at) == (at(0), at(minute))
            assert winners[0] == record
        else:
            assert len(stored) == minute + 1
            [mine] = [e for e in stored if e.scheduled_for == at(minute)]
            assert winners[0] == mine


def test_claims_race_unschedule(repos: list[SqliteRepository]) -> None:
    """While threads claim a task's occurrences one after another, another unschedules it: a
    claim begun after unschedule_task returned is refused, and every claim that succeeded, and
    only those, stored an execution."""
    repo = repos[0]
    task = repo.add_task(make_task("cron", next_run_at=at(0)))
    unscheduled = threading.Event()

    def work(worker: int) -> list[str]:
        mine = pick(repos, worker)
        if worker == 0:
            for _ in range(20):  # let some claims land first, without sleeping
                mine.get_task(task.id)
            mine.unschedule_task(task.id)
            unscheduled.set()
            return []
        claimed = []
        for attempt in range(10_000):
            due = mine.get_task(task.id).next_run_at
            if due is None:
                break
            late = unscheduled.is_set()
            ident = f"w{worker}-{attempt}"
            got = mine.claim_occurrence(
                occurrence(ident, task.id, minute_of(due)),
                due=due,
                next_run_at=due + timedelta(minutes=1),
            )
            if late:
                assert got is None, "claimed after unschedule_task returned"
            if got is not None:
                claimed.append(ident)
        return claimed

    results = race(8, work)
    claimed = sorted(i for ids in results for i in ids)
    assert sorted(e.id for e in repo.list_executions(task.id)) == claimed
    minutes = sorted(
        minute_of(e.scheduled_for)
        for e in repo.list_executions(task.id)
        if e.scheduled_for is not None
    )
    assert minutes == list(range(len(claimed))), "each occurrence claimed once, none skipped"
    final = repo.get_task(task.id)
    assert (final.next_run_at, final.cron_expression) == (None, None)


def test_claims_and_run_records_race_delete_task(repos: list[SqliteRepository]) -> None:
    """A task deleted while its occurrence is claimed and its run recorded: no error escapes,
    and nothing of the task is left behind."""
    repo = repos[0]
    for round_ in range(15):
        task = repo.add_task(make_task(f"doomed-{round_}", next_run_at=at(0)))
        repo.add_execution(occurrence(f"r{round_}-queued", task.id, -1))
        running = Execution(
            id=f"r{round_}-queued",
            task_id=task.id,
            status=ExecutionStatus.RUNNING,
            start_time=at(0),
            pid=1234,
        )

        def work(worker: int, task: Task = task, running: Execution = running) -> object:
            mine = pick(repos, worker)
            if worker == 0:
                return mine.delete_task(task.id)
            if worker % 3 == 1:
                ident = f"{task.name}-w{worker}"
                return mine.claim_occurrence(
                    occurrence(ident, task.id, 0), due=at(0), next_run_at=at(1)
                )
            if worker % 3 == 2:
                return mine.record_run_start(running)
            ended = Execution(
                id=running.id,
                task_id=task.id,
                status=ExecutionStatus.COMPLETED,
                start_time=at(0),
                end_time=at(1),
                duration=60.0,
            )
            return mine.record_run_end(ended, only_if_latest=True)

        race(7, work)
        assert repo.get_task_by_name(task.name) is None
        assert repo.list_executions(task.id) == []
        assert repo.execution_page(limit=100, task_id=task.id) == []
    assert repo.list_tasks() == []


# --- limits and names --------------------------------------------------------------------------


def test_owner_limit_holds_when_many_threads_add_tasks(repos: list[SqliteRepository]) -> None:
    """THREADS add_task with owner_limit=L for one owner at once: exactly L are stored, the others
    get TaskLimitReached; another owner is not counted."""
    limit = 5
    repos[0].add_task(make_task("other-owner", owner_id=2), owner_limit=limit)

    def add(worker: int) -> object:
        task = make_task(f"t{worker}", owner_id=1)
        return outcome(lambda: pick(repos, worker).add_task(task, owner_limit=limit))

    results = race(THREADS, add)
    stored = [r for r in results if isinstance(r, Task)]
    assert len(stored) == limit
    assert results.count(TaskLimitReached) == THREADS - limit
    assert repos[0].count_tasks_owned_by(1) == limit
    assert sorted(t.name for t in repos[-1].list_tasks() if t.owner_id == 1) == sorted(
        t.name for t in stored
    )
    assert len({t.id for t in stored}) == limit


def test_same_name_added_by_two_threads_once(repos: list[SqliteRepository]) -> None:
    """Two threads adding a task of the same name at once: one is stored, the other gets
    TaskExists; round after round."""
    for round_ in range(25):
        name = f"same-{round_}"

        def add(worker: int, name: str = name) -> object:
            task = make_task(name, conda_env=f"env-{worker}")
            return outcome(lambda: pick(repos, worker).add_task(task))

        results = race(2, add)
        assert sum(isinstance(r, Task) for r in results) == 1, results
        assert results.count(TaskExists) == 1, results
        [winner] = [r for r in results if isinstance(r, Task)]
        assert repos[-1].get_task_by_name(name) == winner


def test_renames_to_one_name_race(repos: list[SqliteRepository]) -> None:
    """Threads renaming different tasks to one name at once: one gets it, the others get
    TaskExists and keep their name."""
    repo = repos[0]
    tasks = [repo.add_task(make_task(f"before-{n}")) for n in range(8)]

    def rename(worker: int) -> object:
        task = tasks[worker]
        return outcome(
            lambda: pick(repos, worker).set_task_script(
                task.id, name="wanted", script_path=f"/s/{worker}.py"
            )
        )

    results = race(len(tasks), rename)
    assert results.count(TaskExists) == len(tasks) - 1
    names = sorted(t.name for t in repo.list_tasks())
    assert names.count("wanted") == 1
    assert len(names) == len(set(names)) == len(tasks)


# --- readers while a writer writes -------------------------------------------------------------


READER_THREADS = READERS + 2
"""More readers than pooled read connections, so some wait for one."""


def test_readers_never_see_half_done_claims(repos: list[SqliteRepository]) -> None:
    """While a writer claims 300 occurrences one by one, readers never see a task moved past an
    occurrence whose execution is missing, nor an execution whose occurrence the task has not
    moved past."""
    writer_repo = repos[0]
    task = writer_repo.add_task(make_task("cron", next_run_at=at(0)))
    claims = 300
    done = threading.Event()

    def work(worker: int) -> int:
        mine = pick(repos, worker)
        if worker == 0:
            try:
                for minute in range(claims):
                    execution = occurrence(f"e{minute}", task.id, minute)
                    claimed = mine.claim_occurrence(
                        execution, due=at(minute), next_run_at=at(minute + 1)
                    )
                    assert claimed is not None
            finally:
                done.set()
            return claims
        checks = 0
        while True:
            finished = done.is_set()
            # Task first, executions after: a claim the task shows must already be stored.
            moved = minute_of(mine.get_task(task.id).next_run_at or at(-1))
            stored = len(mine.list_executions(task.id))
            assert stored >= moved, f"next_run_at moved {moved} times, {stored} stored"
            # Executions first, task after: a stored execution's claim must show on the task.
            page = mine.execution_page(limit=1, task_id=task.id)
            due = minute_of(mine.due_tasks(at(claims + 1))[0].next_run_at or at(-1))
            if page:
                assert page[0].scheduled_for is not None
                assert minute_of(page[0].scheduled_for) < due, "execution before its claim"
            checks += 1
            if finished:
                return checks

    results = race(1 + READER_THREADS, work)
    assert all(n >= 1 for n in results)
    assert len(writer_repo.list_executions(task.id)) == claims
    assert writer_repo.earliest_next_run() == at(claims)


def test_readers_see_run_start_and_end_whole(repos: list[SqliteRepository]) -> None:
    """While a writer claims, starts and ends 150 runs, list_tasks_with_latest always shows the
    task's status and its latest execution from the same change."""
    writer_repo = repos[0]
    task = writer_repo.add_task(make_task("cron", next_run_at=at(0)))
    runs = 150
    done = threading.Event()

    def write(mine: SqliteRepository) -> None:
        for minute in range(runs):
            ident = f"e{minute}"
            claimed = mine.claim_occurrence(
                occurrence(ident, task.id, minute), due=at(minute), next_run_at=at(minute + 1)
            )
            assert claimed is not None
            running = Execution(
                id=ident,
                task_id=task.id,
                status=ExecutionStatus.RUNNING,
                scheduled_for=at(minute),
                start_time=at(minute),
                pid=100 + minute,
            )
            assert mine.record_run_start(running)
            ended = Execution(
                id=ident,
                task_id=task.id,
                status=ExecutionStatus.FAILED if minute % 2 else ExecutionStatus.COMPLETED,
                scheduled_for=at(minute),
                start_time=at(minute),
                end_time=at(minute) + timedelta(seconds=30),
                duration=30.0,
                pid=100 + minute,
            )
            assert mine.record_run_end(ended)

    def work(worker: int) -> int:
        mine = pick(repos, worker)
        if worker == 0:
            try:
                write(mine)
            finally:
                done.set()
            return runs
        checks = 0
        while True:
            finished = done.is_set()
            [(seen, latest)] = mine.list_tasks_with_latest()
            if seen.last_execution_id is None:
                assert latest is None
                assert seen.status is TaskStatus.SCHEDULED
            else:
                assert latest is not None
                assert latest.id == seen.last_execution_id
                assert seen.status.value == latest.status.value, (seen.status, latest.status)
                assert seen.last_run_at == latest.start_time
                if latest.status.finished:
                    assert seen.last_run_duration == latest.duration
            # Execution first, task after: a run seen started or ended is the task's latest.
            newest = mine.latest_started(1)
            now_seen = mine.get_task(task.id)
            if newest:
                assert now_seen.last_execution_id is not None, "run started, task not told"
                assert int(now_seen.last_execution_id[1:]) >= int(newest[0].id[1:])
                if newest[0].status.finished and now_seen.last_execution_id == newest[0].id:
                    assert now_seen.status.value == newest[0].status.value
            checks += 1
            if finished:
                return checks

    results = race(1 + READER_THREADS, work)
    assert all(n >= 1 for n in results)
    summary = writer_repo.summarize_executions()
    assert (summary.finished, summary.completed, summary.timed) == (runs, runs // 2, runs)
    [(final, latest)] = writer_repo.list_tasks_with_latest()
    assert latest is not None
    assert (final.status, latest.id) == (TaskStatus.FAILED, f"e{runs - 1}")
