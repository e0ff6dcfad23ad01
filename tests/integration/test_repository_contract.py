"""The Repository contract, run against both implementations (in memory and SQLite).

Then what only the SQLite file can show: persistence, migrations, WAL, foreign keys, file mode and
writes from several threads; and a property test that entities come back equal to what was stored.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from ctm_adapters.memory import InMemoryRepository
from ctm_adapters.sqlite import MIGRATIONS, SqliteRepository
from ctm_core.errors import TaskExists, TaskNotFound, UserExists
from ctm_core.models import Execution, ExecutionStatus, Session, Task, TaskStatus
from ctm_core.ports import Repository

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture(params=["memory", "sqlite"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    if request.param == "memory":
        yield InMemoryRepository()
    else:
        sqlite_repo = SqliteRepository(str(tmp_path / "ctm.sqlite3"))
        yield sqlite_repo
        sqlite_repo.close()


def make_task(name: str = "task", **changes: Any) -> Task:
    fields: dict[str, Any] = {
        "id": 0,
        "name": name,
        "owner_id": None,
        "script_path": "/srv/scripts/job.py",
        "script_stored": False,
        "conda_env": "env1",
        "requirements": None,
        "cron_expression": None,
        "delay_seconds": None,
        "timeout_seconds": None,
        "status": TaskStatus.SCHEDULED,
        "created_at": T0,
    }
    fields.update(changes)
    return Task(**fields)


def make_execution(ident: str, task_id: int, **changes: Any) -> Execution:
    fields: dict[str, Any] = {"id": ident, "task_id": task_id, "status": ExecutionStatus.QUEUED}
    fields.update(changes)
    return Execution(**fields)


def finished(ident: str, task_id: int, start: float, end: float, **changes: Any) -> Execution:
    return make_execution(
        ident,
        task_id,
        status=changes.pop("status", ExecutionStatus.COMPLETED),
        start_time=at(start),
        end_time=at(end),
        log_path=changes.pop("log_path", f"/logs/{ident}.log"),
        **changes,
    )


def add_user(repo: Repository, name: str = "alice", *, is_admin: bool = False) -> int:
    return repo.add_user(
        username=name, password_hash=f"hash-{name}", is_admin=is_admin, created_at=T0
    ).id


# --- users -------------------------------------------------------------------------------------


def test_add_user_returns_it_with_increasing_ids(repo: Repository) -> None:
    """add_user stores the user, gives increasing ids, and get_user/get_user_by_name find it."""
    alice = repo.add_user(username="alice", password_hash="h1", is_admin=True, created_at=T0)
    bob = repo.add_user(username="bob", password_hash="h2", is_admin=False, created_at=at(1))
    assert bob.id > alice.id
    assert (alice.username, alice.password_hash, alice.is_admin, alice.created_at) == (
        "alice",
        "h1",
        True,
        T0,
    )
    assert repo.get_user(alice.id) == alice
    assert repo.get_user(bob.id) == bob
    assert repo.get_user_by_name("bob") == bob
    assert repo.count_users() == 2


def test_missing_user_is_none(repo: Repository) -> None:
    """get_user and get_user_by_name return None for an unknown user; names match exactly."""
    add_user(repo, "alice")
    assert repo.get_user(999) is None
    assert repo.get_user_by_name("nobody") is None
    assert repo.get_user_by_name("Alice") is None
    assert repo.count_users() == 1


def test_duplicate_username_raises_user_exists(repo: Repository) -> None:
    """A second user with a taken username raises UserExists and stores nothing."""
    add_user(repo, "alice")
    with pytest.raises(UserExists):
        repo.add_user(username="alice", password_hash="x", is_admin=True, created_at=T0)
    assert repo.count_users() == 1
    user = repo.get_user_by_name("alice")
    assert user is not None
    assert not user.is_admin


# --- sessions ----------------------------------------------------------------------------------


def test_session_add_and_get(repo: Repository) -> None:
    """add_session stores a session that get_session returns; an unknown hash gives None."""
    uid = add_user(repo)
    session = Session(token_hash="abc", user_id=uid, created_at=T0, last_seen_at=at(1))
    repo.add_session(session)
    assert repo.get_session("abc") == session
    assert repo.get_session("nope") is None


def test_add_session_for_unknown_user_raises_lookup_error(repo: Repository) -> None:
    """A session of a user that does not exist is refused with LookupError."""
    with pytest.raises(LookupError):
        repo.add_session(Session(token_hash="abc", user_id=42, created_at=T0, last_seen_at=T0))
    assert repo.get_session("abc") is None


def test_duplicate_session_token_hash_raises_value_error(repo: Repository) -> None:
    """A second session with a stored token hash is refused; the first one stays."""
    alice, bob = add_user(repo, "alice"), add_user(repo, "bob")
    repo.add_session(Session(token_hash="abc", user_id=alice, created_at=T0, last_seen_at=T0))
    with pytest.raises(ValueError, match="token hash"):
        repo.add_session(Session(token_hash="abc", user_id=bob, created_at=T0, last_seen_at=T0))
    session = repo.get_session("abc")
    assert session is not None
    assert session.user_id == alice


def test_touch_session_moves_last_seen(repo: Repository) -> None:
    """touch_session changes last_seen_at only; touching an unknown hash does nothing."""
    uid = add_user(repo)
    repo.add_session(Session(token_hash="abc", user_id=uid, created_at=T0, last_seen_at=T0))
    repo.touch_session("abc", at(5))
    repo.touch_session("unknown", at(5))
    assert repo.get_session("abc") == Session(
        token_hash="abc", user_id=uid, created_at=T0, last_seen_at=at(5)
    )
    assert repo.get_session("unknown") is None


def test_delete_session_is_idempotent(repo: Repository) -> None:
    """delete_session removes one session and ignores an unknown hash."""
    uid = add_user(repo)
    for token in ("a", "b"):
        repo.add_session(Session(token_hash=token, user_id=uid, created_at=T0, last_seen_at=T0))
    repo.delete_session("a")
    repo.delete_session("a")
    assert repo.get_session("a") is None
    assert repo.get_session("b") is not None


def test_delete_sessions_before_idle_or_created(repo: Repository) -> None:
    """delete_sessions_before drops sessions idle before OR created before the bounds (strict)."""
    uid = add_user(repo)
    sessions = {
        "fresh": (at(0), at(60)),
        "idle": (at(0), at(9)),
        "old": (at(-100), at(60)),
        "idle_at_bound": (at(0), at(10)),
        "created_at_bound": (at(-50), at(60)),
    }
    for token, (created, seen) in sessions.items():
        repo.add_session(
            Session(token_hash=token, user_id=uid, created_at=created, last_seen_at=seen)
        )
    deleted = repo.delete_sessions_before(idle_before=at(10), created_before=at(-50))
    assert deleted == 2
    left = {t for t in sessions if repo.get_session(t) is not None}
    assert left == {"fresh", "idle_at_bound", "created_at_bound"}


# --- login throttling --------------------------------------------------------------------------


def test_login_failures_by_username_or_client(repo: Repository) -> None:
    """login_failures_since counts failures of this username OR this client, in time order."""
    repo.add_login_failure(username="alice", client="10.0.0.1", at=at(3))
    repo.add_login_failure(username="bob", client="10.0.0.2", at=at(1))
    repo.add_login_failure(username="carol", client="10.0.0.3", at=at(2))
    repo.add_login_failure(username="alice", client="10.0.0.2", at=at(4))
    got = repo.login_failures_since(username="alice", client="10.0.0.2", since=at(-60))
    assert got == [at(1), at(3), at(4)]
    assert repo.login_failures_since(username="dave", client="10.9.9.9", since=at(-60)) == []


def test_login_failures_since_is_inclusive(repo: Repository) -> None:
    """Only failures at or after ``since`` count."""
    for minute in (0, 5, 10):
        repo.add_login_failure(username="alice", client="c", at=at(minute))
    assert repo.login_failures_since(username="alice", client="x", since=at(5)) == [
        at(5),
        at(10),
    ]


def test_clear_login_failures_of_one_username(repo: Repository) -> None:
    """clear_login_failures removes that username's failures, not other users' ones."""
    repo.add_login_failure(username="alice", client="c1", at=at(1))
    repo.add_login_failure(username="bob", client="c1", at=at(2))
    repo.clear_login_failures(username="alice")
    assert repo.login_failures_since(username="alice", client="none", since=at(-1)) == []
    assert repo.login_failures_since(username="x", client="c1", since=at(-1)) == [at(2)]


# --- environment owners ------------------------------------------------------------------------


def test_environment_owner_set_get_forget(repo: Repository) -> None:
    """set_environment_owner records or replaces an owner; forget_environment drops the record."""
    alice, bob = add_user(repo, "alice"), add_user(repo, "bob")
    assert repo.get_environment_owner("env1") is None
    repo.set_environment_owner("env1", alice)
    repo.set_environment_owner("env2", bob)
    assert repo.get_environment_owner("env1") == alice
    repo.set_environment_owner("env1", bob)
    assert repo.get_environment_owner("env1") == bob
    repo.set_environment_owner("env1", None)
    assert repo.get_environment_owner("env1") is None
    repo.forget_environment("env2")
    repo.forget_environment("never-known")
    assert repo.get_environment_owner("env2") is None


def test_set_environment_owner_unknown_user_raises(repo: Repository) -> None:
    """An owner that is not a user is refused with LookupError."""
    with pytest.raises(LookupError):
        repo.set_environment_owner("env1", 404)
    assert repo.get_environment_owner("env1") is None


def test_rename_environment_moves_owner_and_tasks(repo: Repository) -> None:
    """rename_environment moves the owner and every task's conda_env; returns the task count."""
    uid = add_user(repo)
    repo.set_environment_owner("old", uid)
    t1 = repo.add_task(make_task("t1", conda_env="old"))
    t2 = repo.add_task(make_task("t2", conda_env="other"))
    t3 = repo.add_task(make_task("t3", conda_env="old"))
    assert repo.rename_environment("old", "new") == 2
    assert repo.get_environment_owner("new") == uid
    assert repo.get_environment_owner("old") is None
    assert [t.conda_env for t in (repo.get_task(i.id) for i in (t1, t2, t3))] == [
        "new",
        "other",
        "new",
    ]
    assert repo.tasks_using_environment("old") == []
    assert repo.rename_environment("absent", "elsewhere") == 0


def test_rename_environment_replaces_stale_target_record(repo: Repository) -> None:
    """A stale owner record under the new name is replaced by the old one's (or dropped)."""
    alice, bob = add_user(repo, "alice"), add_user(repo, "bob")
    repo.set_environment_owner("a", alice)
    repo.set_environment_owner("b", bob)
    repo.rename_environment("a", "b")
    assert repo.get_environment_owner("b") == alice
    repo.set_environment_owner("c", bob)
    repo.rename_environment("unowned", "c")
    assert repo.get_environment_owner("c") is None
    assert repo.rename_environment("b", "b") == 0
    assert repo.get_environment_owner("b") == alice


# --- tasks -------------------------------------------------------------------------------------


def test_add_task_assigns_increasing_ids(repo: Repository) -> None:
    """add_task ignores the given id, returns the task with a new increasing id, input intact."""
    given_task = make_task("first", id=77)
    first = repo.add_task(given_task)
    second = repo.add_task(make_task("second", id=first.id))
    assert given_task.id == 77
    assert second.id > first.id
    assert first == attrs.evolve(given_task, id=first.id)
    assert repo.get_task(first.id) == first
    assert repo.get_task_by_name("second") == second


def test_task_ids_are_not_reused(repo: Repository) -> None:
    """A deleted task's id is never given again."""
    a = repo.add_task(make_task("a"))
    b = repo.add_task(make_task("b"))
    repo.delete_task(b.id)
    c = repo.add_task(make_task("c"))
    assert c.id > b.id > a.id


def test_duplicate_task_name_raises_task_exists(repo: Repository) -> None:
    """A second task with a taken name raises TaskExists and stores nothing."""
    repo.add_task(make_task("dup"))
    with pytest.raises(TaskExists):
        repo.add_task(make_task("dup", conda_env="other"))
    assert len(repo.list_tasks()) == 1


def test_missing_task(repo: Repository) -> None:
    """get_task raises TaskNotFound for an unknown id; get_task_by_name gives None."""
    with pytest.raises(TaskNotFound):
        repo.get_task(12345)
    assert repo.get_task_by_name("ghost") is None


def test_update_task_stores_every_field(repo: Repository) -> None:
    """update_task replaces every field of the stored task."""
    uid = add_user(repo)
    task = repo.add_task(make_task("t"))
    changed = attrs.evolve(
        task,
        name="t-renamed",
        owner_id=uid,
        script_path="/other.py",
        script_stored=True,
        conda_env="env2",
        requirements="numpy==1.26\n",
        cron_expression="*/5 * * * *",
        delay_seconds=None,
        timeout_seconds=30.5,
        status=TaskStatus.FAILED,
        next_run_at=at(5),
        last_run_at=at(1),
        last_run_duration=1.25,
        last_execution_id="ex-1",
    )
    repo.update_task(changed)
    assert repo.get_task(task.id) == changed
    assert repo.get_task_by_name("t") is None


def test_update_task_errors(repo: Repository) -> None:
    """update_task raises TaskNotFound for an unknown id, TaskExists for a taken name."""
    repo.add_task(make_task("a"))
    b = repo.add_task(make_task("b"))
    with pytest.raises(TaskNotFound):
        repo.update_task(make_task("zzz", id=999))
    with pytest.raises(TaskExists):
        repo.update_task(attrs.evolve(b, name="a"))
    assert repo.get_task(b.id).name == "b"


def test_list_tasks_by_id(repo: Repository) -> None:
    """list_tasks returns every task ordered by id."""
    ids = [repo.add_task(make_task(name)).id for name in ("zeta", "alpha", "mid")]
    assert [t.id for t in repo.list_tasks()] == sorted(ids)
    assert [t.name for t in repo.list_tasks()] == ["zeta", "alpha", "mid"]


def test_delete_task_cascades_and_returns_log_paths(repo: Repository) -> None:
    """delete_task removes the task and its executions and returns their log paths."""
    doomed = repo.add_task(make_task("doomed"))
    kept = repo.add_task(make_task("kept"))
    repo.add_execution(finished("d1", doomed.id, 0, 1))
    repo.add_execution(finished("d2", doomed.id, 2, 3))
    repo.add_execution(make_execution("d3", doomed.id))
    repo.add_execution(finished("k1", kept.id, 0, 1))
    assert sorted(repo.delete_task(doomed.id)) == ["/logs/d1.log", "/logs/d2.log"]
    with pytest.raises(TaskNotFound):
        repo.get_task(doomed.id)
    assert repo.list_executions(doomed.id) == []
    assert repo.get_execution("d1") is None
    assert [e.id for e in repo.list_executions(kept.id)] == ["k1"]
    with pytest.raises(TaskNotFound):
        repo.delete_task(doomed.id)


def test_tasks_using_environment(repo: Repository) -> None:
    """tasks_using_environment returns the tasks whose conda_env is that name, by id."""
    a = repo.add_task(make_task("a", conda_env="x"))
    repo.add_task(make_task("b", conda_env="y"))
    c = repo.add_task(make_task("c", conda_env="x"))
    assert repo.tasks_using_environment("x") == [a, c]
    assert repo.tasks_using_environment("none") == []


def test_count_tasks_owned_by(repo: Repository) -> None:
    """count_tasks_owned_by counts one owner's tasks only."""
    repo.add_task(make_task("a", owner_id=1))
    repo.add_task(make_task("b", owner_id=2))
    repo.add_task(make_task("c", owner_id=1))
    assert (repo.count_tasks_owned_by(1), repo.count_tasks_owned_by(2)) == (2, 1)
    assert repo.count_tasks_owned_by(99) == 0


# --- executions --------------------------------------------------------------------------------


def test_add_get_update_execution(repo: Repository) -> None:
    """add_execution stores, get_execution reads back, update_execution replaces every field."""
    task = repo.add_task(make_task())
    execution = make_execution("ex1", task.id, scheduled_for=at(0))
    repo.add_execution(execution)
    assert repo.get_execution("ex1") == execution
    assert repo.get_execution("nope") is None
    done = attrs.evolve(
        execution,
        status=ExecutionStatus.FAILED,
        start_time=at(1),
        end_time=at(2),
        duration=60.0,
        peak_memory_mb=12.5,
        avg_memory_mb=10.1,
        exit_code=-9,
        log_path="/logs/ex1.log",
        pid=4242,
        note="timed out",
    )
    repo.update_execution(done)
    assert repo.get_execution("ex1") == done


def test_add_execution_errors(repo: Repository) -> None:
    """add_execution raises TaskNotFound for an unknown task and ValueError for a taken id."""
    task = repo.add_task(make_task())
    with pytest.raises(TaskNotFound):
        repo.add_execution(make_execution("ex", 999))
    repo.add_execution(make_execution("ex", task.id))
    with pytest.raises(ValueError, match="exists"):
        repo.add_execution(make_execution("ex", task.id, status=ExecutionStatus.RUNNING))
    stored = repo.get_execution("ex")
    assert stored is not None
    assert stored.status is ExecutionStatus.QUEUED


def test_update_unknown_execution_is_ignored(repo: Repository) -> None:
    """update_execution of an execution not stored (e.g. pruned) changes nothing."""
    task = repo.add_task(make_task())
    repo.update_execution(make_execution("ghost", task.id, status=ExecutionStatus.FAILED))
    assert repo.get_execution("ghost") is None
    assert repo.list_executions(task.id) == []


def test_list_executions_newest_first(repo: Repository) -> None:
    """Not started first, then by start time, then scheduled time, then latest stored first."""
    task = repo.add_task(make_task())
    other = repo.add_task(make_task("other"))
    repo.add_execution(finished("old", task.id, 0, 1, scheduled_for=at(0)))
    repo.add_execution(finished("new", task.id, 10, 11))
    repo.add_execution(finished("tie-sched-early", task.id, 5, 6, scheduled_for=at(4)))
    repo.add_execution(finished("tie-sched-late", task.id, 5, 6, scheduled_for=at(5)))
    repo.add_execution(finished("tie-unscheduled", task.id, 5, 6))
    repo.add_execution(make_execution("queued-a", task.id, scheduled_for=at(20)))
    repo.add_execution(make_execution("queued-b", task.id, scheduled_for=at(30)))
    repo.add_execution(make_execution("queued-c", task.id))
    repo.add_execution(make_execution("queued-d", task.id))
    repo.add_execution(finished("not-mine", other.id, 50, 51))
    assert [e.id for e in repo.list_executions(task.id)] == [
        "queued-d",
        "queued-c",
        "queued-b",
        "queued-a",
        "new",
        "tie-unscheduled",
        "tie-sched-late",
        "tie-sched-early",
        "old",
    ]
    assert repo.list_executions(999) == []


def test_executions_since(repo: Repository) -> None:
    """executions_since returns every task's executions started at or after ``since``, newest
    first, never ones not started."""
    a = repo.add_task(make_task("a"))
    b = repo.add_task(make_task("b"))
    repo.add_execution(finished("a-early", a.id, 0, 1))
    repo.add_execution(finished("a-bound", a.id, 5, 6))
    repo.add_execution(finished("b-late", b.id, 9, 10))
    repo.add_execution(make_execution("queued", b.id, scheduled_for=at(20)))
    assert [e.id for e in repo.executions_since(at(5))] == ["b-late", "a-bound"]


def test_finished_and_unfinished_executions(repo: Repository) -> None:
    """Finished means completed/failed/stopped; unfinished means queued/running; skipped in
    neither."""
    task = repo.add_task(make_task())
    statuses = {
        "c": ExecutionStatus.COMPLETED,
        "f": ExecutionStatus.FAILED,
        "s": ExecutionStatus.STOPPED,
        "q": ExecutionStatus.QUEUED,
        "r": ExecutionStatus.RUNNING,
        "k": ExecutionStatus.SKIPPED,
    }
    for minute, (ident, status) in enumerate(statuses.items()):
        repo.add_execution(make_execution(ident, task.id, status=status, start_time=at(minute)))
    assert [e.id for e in repo.all_finished_executions()] == ["s", "f", "c"]
    assert [e.id for e in repo.unfinished_executions()] == ["r", "q"]


def test_prune_executions(repo: Repository) -> None:
    """prune_executions deletes finished and skipped executions that ended before."""
    task = repo.add_task(make_task())
    repo.add_execution(finished("done-old", task.id, 0, 1))
    repo.add_execution(finished("failed-old", task.id, 0, 2, status=ExecutionStatus.FAILED))
    repo.add_execution(
        finished("stopped-old", task.id, 0, 3, status=ExecutionStatus.STOPPED, log_path=None)
    )
    repo.add_execution(finished("done-at-bound", task.id, 0, 10))
    repo.add_execution(finished("done-new", task.id, 20, 21))
    repo.add_execution(
        make_execution("running-old", task.id, status=ExecutionStatus.RUNNING, start_time=at(0))
    )
    repo.add_execution(
        finished("skipped-old", task.id, 0, 0, status=ExecutionStatus.SKIPPED, log_path=None)
    )
    repo.add_execution(make_execution("queued", task.id))
    assert sorted(repo.prune_executions(at(10))) == ["/logs/done-old.log", "/logs/failed-old.log"]
    assert {e.id for e in repo.list_executions(task.id)} == {
        "done-at-bound",
        "done-new",
        "running-old",
        "queued",
    }
    assert repo.prune_executions(at(10)) == []


def test_save_run_state_updates_task_and_execution(repo: Repository) -> None:
    """save_run_state stores both the task and the execution."""
    task = repo.add_task(make_task())
    execution = make_execution("ex", task.id)
    repo.add_execution(execution)
    execution.status = ExecutionStatus.RUNNING
    execution.start_time = at(1)
    execution.pid = 99
    task.status = TaskStatus.RUNNING
    task.last_run_at = at(1)
    task.last_execution_id = "ex"
    repo.save_run_state(task, execution)
    assert repo.get_task(task.id) == task
    assert repo.get_execution("ex") == execution


def test_save_run_state_is_all_or_nothing(repo: Repository) -> None:
    """When the task part fails (taken name, deleted task) the execution is not changed."""
    repo.add_task(make_task("taken"))
    task = repo.add_task(make_task("mine"))
    execution = make_execution("ex", task.id)
    repo.add_execution(execution)
    running = attrs.evolve(execution, status=ExecutionStatus.RUNNING, start_time=at(1))
    with pytest.raises(TaskExists):
        repo.save_run_state(attrs.evolve(task, name="taken"), running)
    assert repo.get_execution("ex") == execution
    assert repo.get_task(task.id) == task
    with pytest.raises(ValueError, match="not of task"):
        repo.save_run_state(attrs.evolve(task, id=task.id + 100), running)
    assert repo.get_execution("ex") == execution


def test_save_run_state_of_deleted_task_raises(repo: Repository) -> None:
    """save_run_state for a task deleted meanwhile raises TaskNotFound and stores nothing."""
    task = repo.add_task(make_task())
    execution = make_execution("ex", task.id)
    repo.add_execution(execution)
    repo.delete_task(task.id)
    with pytest.raises(TaskNotFound):
        repo.save_run_state(task, attrs.evolve(execution, status=ExecutionStatus.RUNNING))
    assert repo.get_execution("ex") is None


# --- values ------------------------------------------------------------------------------------


def test_entities_are_copied_in_and_out(repo: Repository) -> None:
    """Changing an entity passed in or handed out never changes what is stored."""
    task = make_task("t")
    stored = repo.add_task(task)
    task.conda_env = "changed-input"
    stored.conda_env = "changed-output"
    repo.get_task(stored.id).status = TaskStatus.FAILED
    repo.list_tasks()[0].name = "changed-list"
    fresh = repo.get_task(stored.id)
    assert (fresh.name, fresh.conda_env, fresh.status) == ("t", "env1", TaskStatus.SCHEDULED)
    execution = make_execution("ex", stored.id)
    repo.add_execution(execution)
    execution.status = ExecutionStatus.FAILED
    got = repo.get_execution("ex")
    assert got is not None
    got.note = "changed"
    again = repo.get_execution("ex")
    assert again is not None
    assert (again.status, again.note) == (ExecutionStatus.QUEUED, None)


def test_datetimes_come_back_aware_utc(repo: Repository) -> None:
    """A datetime stored in another zone comes back as the same instant, in UTC."""
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=plus2)
    task = repo.add_task(make_task(created_at=local, next_run_at=local))
    got = repo.get_task(task.id)
    assert got.created_at == local
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.next_run_at is not None
    assert got.next_run_at.isoformat() == "2024-05-01T12:00:00.000001+00:00"


def test_naive_datetimes_are_refused(repo: Repository) -> None:
    """Query bounds must be aware datetimes: a naive one raises ValueError."""
    naive = datetime(2024, 5, 1)  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive"):
        repo.executions_since(naive)
    with pytest.raises(ValueError, match="naive"):
        repo.prune_executions(naive)
    with pytest.raises(ValueError, match="naive"):
        repo.login_failures_since(username="a", client="b", since=naive)


def test_concurrent_writes_all_land(repo: Repository) -> None:
    """8 threads × 50 add_execution (with reads between) all land."""
    task = repo.add_task(make_task())
    start = threading.Barrier(8)

    def work(worker: int) -> None:
        start.wait()
        for n in range(50):
            ident = f"w{worker}-{n}"
            repo.add_execution(make_execution(ident, task.id, start_time=at(n)))
            assert repo.get_execution(ident) is not None

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(work, w) for w in range(8)]:
            future.result()
    assert len(repo.list_executions(task.id)) == 400


# --- SQLite only -------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "ctm.sqlite3")


def test_sqlite_data_survives_reopening(db_path: str) -> None:
    """Everything written is there after closing and opening the file again."""
    with SqliteRepository(db_path) as repo:
        uid = add_user(repo)
        task = repo.add_task(make_task(owner_id=uid))
        repo.add_execution(finished("ex", task.id, 0, 1))
        repo.set_environment_owner("env1", uid)
        repo.add_session(Session(token_hash="tok", user_id=uid, created_at=T0, last_seen_at=T0))
    with SqliteRepository(db_path) as repo:
        assert repo.get_task(task.id) == task
        assert [e.id for e in repo.list_executions(task.id)] == ["ex"]
        assert repo.get_environment_owner("env1") == uid
        assert repo.get_session("tok") is not None
        assert repo.count_users() == 1


def test_sqlite_migrations_applied_once(db_path: str) -> None:
    """Migrations are recorded by name and reopening applies none again."""
    SqliteRepository(db_path).close()
    SqliteRepository(db_path).close()
    db = Database(db_path)
    try:
        names = [r["name"] for r in db.table("_sqlite_migrations").rows]
        assert names == ["0001_initial_schema", "0002_task_run_limits_and_skip_runs"]
        assert MIGRATIONS.pending(db) == []
        assert {"users", "sessions", "login_failures", "environment_owners", "tasks"} <= set(
            db.table_names()
        )
        indexes = {i.name for i in db.table("executions").indexes}
        assert {"executions_task_id_start_time", "executions_status_end_time"} <= indexes
    finally:
        db.close()


def test_sqlite_wal_and_foreign_keys_on(db_path: str) -> None:
    """The file is in WAL mode and the repository's connection enforces foreign keys."""
    with SqliteRepository(db_path) as repo:
        conn = repo._db.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_sqlite_file_mode_is_0600(db_path: str, tmp_path: Path) -> None:
    """The database and its WAL are created 0600; a looser existing file is tightened."""
    with SqliteRepository(db_path) as repo:
        add_user(repo)
        assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(db_path + "-wal").st_mode) == 0o600
    loose = tmp_path / "loose.sqlite3"
    loose.touch()
    loose.chmod(0o644)
    SqliteRepository(str(loose)).close()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_sqlite_two_connections_write_concurrently(db_path: str) -> None:
    """Two repositories on one file (server and CLI) write at once; the busy timeout copes."""
    with SqliteRepository(db_path) as first, SqliteRepository(db_path) as second:
        task = first.add_task(make_task())

        def work(repo: SqliteRepository, worker: int) -> None:
            for n in range(25):
                repo.add_execution(make_execution(f"w{worker}-{n}", task.id))
                if n % 5 == 0:
                    repo.prune_executions(at(0))

        with ThreadPoolExecutor(4) as pool:
            jobs = [pool.submit(work, (first, second)[w % 2], w) for w in range(4)]
            for job in jobs:
                job.result()
        assert len(second.list_executions(task.id)) == 100


def test_sqlite_in_memory(tmp_path: Path) -> None:
    """ ":memory:" gives a throwaway repository and creates no file."""
    with SqliteRepository(":memory:") as repo:
        task = repo.add_task(make_task())
        assert repo.get_task(task.id) == task
    assert not (Path.cwd() / ":memory:").exists()


# --- property: what is stored comes back equal -------------------------------------------------

_offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
).map(timezone)
_moments = st.datetimes(
    min_value=datetime(1900, 1, 1),  # noqa: DTZ001
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC) | _offsets,
)
_text = st.text(max_size=40)
_numbers = st.none() | st.floats(allow_nan=False, allow_infinity=False)
_ints = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
_roundtrip = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_roundtrip
@given(
    task=st.builds(
        Task,
        id=st.just(0),
        name=st.text(min_size=1, max_size=40),
        owner_id=st.none(),
        script_path=_text,
        script_stored=st.booleans(),
        conda_env=_text,
        requirements=st.none() | st.text(max_size=200),
        cron_expression=st.none() | _text,
        delay_seconds=_numbers,
        timeout_seconds=_numbers,
        status=st.sampled_from(TaskStatus),
        created_at=_moments,
        next_run_at=st.none() | _moments,
        last_run_at=st.none() | _moments,
        last_run_duration=_numbers,
        last_execution_id=st.none() | _text,
    )
)
def test_task_roundtrip(repo: Repository, task: Task) -> None:
    """Any valid Task stored comes back equal, by id and by name."""
    stored = repo.add_task(task)
    try:
        expected = attrs.evolve(task, id=stored.id)
        assert stored == expected
        assert repo.get_task(stored.id) == expected
        assert repo.get_task_by_name(task.name) == expected
    finally:
        repo.delete_task(stored.id)


@_roundtrip
@given(
    execution=st.builds(
        Execution,
        id=_text,
        task_id=st.just(0),
        status=st.sampled_from(ExecutionStatus),
        scheduled_for=st.none() | _moments,
        start_time=st.none() | _moments,
        end_time=st.none() | _moments,
        duration=_numbers,
        peak_memory_mb=_numbers,
        avg_memory_mb=_numbers,
        exit_code=_ints,
        log_path=st.none() | _text,
        pid=_ints,
        note=st.none() | st.text(max_size=200),
    )
)
def test_execution_roundtrip(repo: Repository, execution: Execution) -> None:
    """Any valid Execution stored comes back equal."""
    task = repo.get_task_by_name("roundtrip") or repo.add_task(make_task("roundtrip"))
    execution = attrs.evolve(execution, id=f"{execution.id}-{uuid.uuid4()}", task_id=task.id)
    repo.add_execution(execution)
    assert repo.get_execution(execution.id) == execution


def test_add_execution_with_task_moves_schedule_atomically(repo: Repository) -> None:
    """A firing stores the execution and the task's new state together, or neither."""
    task = repo.add_task(make_task())
    task.next_run_at = at(99)
    repo.add_execution(make_execution("fired", task.id), task=task)
    assert repo.get_task(task.id).next_run_at == at(99)
    assert repo.get_execution("fired") is not None
    task.next_run_at = at(200)
    with pytest.raises(ValueError, match="exists"):
        repo.add_execution(make_execution("fired", task.id), task=task)
    assert repo.get_task(task.id).next_run_at == at(99)


def skip_at(ident: str, task_id: int, minute: float) -> Execution:
    """A skipped occurrence at ``minute``, as the scheduler hands it to ``record_skip``."""
    return make_execution(
        ident, task_id, status=ExecutionStatus.SKIPPED, scheduled_for=at(minute),
        start_time=at(minute), end_time=at(minute), skip_count=1,
        first_skipped_at=at(minute), last_skipped_at=at(minute),
    )


def test_record_skip_merges_consecutive_skips_into_one_record(repo: Repository) -> None:
    """Skips with nothing fired in between are one record: count, first and last times grow."""
    task = repo.add_task(make_task())
    repo.add_execution(make_execution("run", task.id, status=ExecutionStatus.RUNNING,
                                      start_time=at(0)))
    for minute in (1, 2, 3):
        task.next_run_at = at(minute + 1)
        stored = repo.record_skip(skip_at(f"skip-{minute}", task.id, minute), task=task)
        assert stored.id == "skip-1"
    assert stored.skip_count == 3
    [skip, run] = repo.list_executions(task.id)
    assert run.id == "run"
    assert skip == stored
    assert (skip.id, skip.status, skip.skip_count) == ("skip-1", ExecutionStatus.SKIPPED, 3)
    assert (skip.first_skipped_at, skip.last_skipped_at) == (at(1), at(3))
    assert (skip.scheduled_for, skip.start_time, skip.end_time) == (at(1), at(1), at(3))
    assert repo.get_task(task.id).next_run_at == at(4)


def test_record_skip_after_a_firing_starts_a_new_record(repo: Repository) -> None:
    """An execution stored after a skip record ends it: the next skip is a new record."""
    task = repo.add_task(make_task())
    repo.record_skip(skip_at("skip-a", task.id, 1), task=task)
    repo.record_skip(skip_at("skip-a2", task.id, 2), task=task)
    repo.add_execution(make_execution("queued", task.id, scheduled_for=at(3)))
    stored = repo.record_skip(skip_at("skip-b", task.id, 4), task=task)
    assert (stored.id, stored.skip_count) == ("skip-b", 1)
    assert (stored.first_skipped_at, stored.last_skipped_at) == (at(4), at(4))
    assert repo.get_execution("skip-a2") is None
    first = repo.get_execution("skip-a")
    assert first is not None and first.skip_count == 2
    other = repo.add_task(make_task("other"))
    assert repo.record_skip(skip_at("skip-other", other.id, 5), task=other).skip_count == 1
    assert repo.get_execution("skip-b") == stored, "another task's skips are its own"


def test_record_skip_errors_change_nothing(repo: Repository) -> None:
    """record_skip of a missing task raises TaskNotFound; a non-skipped one ValueError."""
    task = repo.add_task(make_task())
    gone = make_task("gone", id=task.id + 100)
    with pytest.raises(TaskNotFound):
        repo.record_skip(skip_at("s-gone", gone.id, 1), task=gone)
    with pytest.raises(ValueError, match="skipped"):
        repo.record_skip(make_execution("not-a-skip", task.id), task=task)
    with pytest.raises(ValueError, match="skipped"):
        repo.record_skip(skip_at("wrong-task", task.id + 1, 1), task=task)
    task.next_run_at = at(50)
    repo.add_execution(make_execution("taken", task.id, scheduled_for=at(0)))
    with pytest.raises(ValueError, match="exists"):
        repo.record_skip(skip_at("taken", task.id, 1), task=task)
    assert repo.get_task(task.id).next_run_at is None
    assert [e.id for e in repo.list_executions(task.id)] == ["taken"]


def test_concurrent_skips_are_all_counted(repo: Repository) -> None:
    """Skips recorded from several threads at once all land in one record's count."""
    task = repo.add_task(make_task())
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(
            lambda n: repo.record_skip(skip_at(f"s{n}", task.id, 1), task=task), range(40)
        ))
    [skip] = repo.list_executions(task.id)
    assert skip.skip_count == 40


def test_old_login_failures_are_forgotten(repo: Repository) -> None:
    """delete_login_failures_before drops only failures older than the bound."""
    repo.add_login_failure(username="u", client="c", at=at(0))
    repo.add_login_failure(username="u", client="c", at=at(20))
    assert repo.delete_login_failures_before(at(10)) == 1
    assert repo.login_failures_since(username="u", client="c", since=at(0)) == [at(20)]
