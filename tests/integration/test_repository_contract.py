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
from ctm_core.errors import (
    InvalidInput,
    LastAdmin,
    TaskExists,
    TaskLimitReached,
    TaskNotFound,
    UserExists,
    UserNotFound,
    UserOwnsTasks,
)
from ctm_core.models import (
    ApiToken,
    AuditEvent,
    Execution,
    ExecutionStatus,
    Session,
    Task,
    TaskStatus,
    UserChange,
)
from ctm_core.ports import ExecutionSummary, Repository

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


def session_of(user_id: int, token: str, minute: float = 0) -> Session:
    return Session(
        token_hash=token, user_id=user_id, created_at=at(minute), last_seen_at=at(minute)
    )


def test_list_users_by_id(repo: Repository) -> None:
    """list_users gives every user, by id, disabled ones too."""
    b, a = add_user(repo, "bob"), add_user(repo, "alice")
    repo.update_user(b, UserChange(disabled=True))
    assert [(u.id, u.username, u.disabled) for u in repo.list_users()] == [
        (b, "bob", True),
        (a, "alice", False),
    ]


def test_update_user_changes_only_what_is_given(repo: Repository) -> None:
    """update_user sets the given fields and keeps the others; it returns the stored user."""
    uid = add_user(repo, "alice")
    user, ended = repo.update_user(uid, UserChange(is_admin=True))
    assert (user.is_admin, user.disabled, user.password_hash, ended) == (
        True,
        False,
        "hash-alice",
        0,
    )
    assert repo.get_user(uid) == user
    user, _ = repo.update_user(uid, UserChange(password_hash="new"))
    assert (user.is_admin, user.password_hash) == (True, "new")


def test_disabling_or_a_new_password_ends_sessions(repo: Repository) -> None:
    """Disabling a user deletes every session of theirs; a new password every one but
    ``keep_session``; promoting them ends none. Other users' sessions stay."""
    alice, bob = add_user(repo, "alice"), add_user(repo, "bob")
    for token in ("a1", "a2", "a3"):
        repo.add_session(session_of(alice, token))
    repo.add_session(session_of(bob, "b1"))
    assert repo.update_user(bob, UserChange(is_admin=True))[1] == 0
    assert repo.count_sessions_by_user() == {alice: 3, bob: 1}
    assert repo.update_user(alice, UserChange(password_hash="x"), keep_session="a2")[1] == 2
    assert [t for t in ("a1", "a2", "a3") if repo.get_session(t)] == ["a2"]
    assert repo.update_user(alice, UserChange(disabled=True))[1] == 1
    assert repo.count_sessions_by_user() == {bob: 1}


def test_the_last_enabled_admin_stays(repo: Repository) -> None:
    """Demoting, disabling or deleting the only enabled admin raises LastAdmin and changes
    nothing; with a second admin it works."""
    root = add_user(repo, "root", is_admin=True)
    other = add_user(repo, "other", is_admin=True)
    repo.update_user(other, UserChange(disabled=True))  # a disabled admin does not count
    for attempt in (
        lambda: repo.update_user(root, UserChange(is_admin=False)),
        lambda: repo.update_user(root, UserChange(disabled=True)),
        lambda: repo.delete_user(root),
    ):
        with pytest.raises(LastAdmin):
            attempt()
        user = repo.get_user(root)
        assert user is not None and user.is_admin and not user.disabled
    repo.update_user(other, UserChange(disabled=False))
    repo.update_user(root, UserChange(is_admin=False))
    assert [u.username for u in repo.list_users() if u.is_admin] == ["other"]
    # Changing a non-admin never needs another admin.
    repo.update_user(root, UserChange(disabled=True))


def test_delete_user_refuses_a_task_owner_and_frees_environments(repo: Repository) -> None:
    """A user who owns tasks is not deleted (UserOwnsTasks with the count); once the tasks
    are gone the user, their sessions and their ownership of environments go."""
    alice = add_user(repo, "alice")
    repo.add_session(session_of(alice, "a1"))
    repo.set_environment_owner("env1", alice)
    task = repo.add_task(make_task(owner_id=alice))
    with pytest.raises(UserOwnsTasks) as refused:
        repo.delete_user(alice)
    assert refused.value.details["tasks"] == 1
    assert repo.get_user(alice) is not None and repo.get_session("a1") is not None
    repo.delete_task(task.id)
    repo.delete_user(alice)
    assert repo.get_user(alice) is None
    assert repo.get_session("a1") is None
    assert repo.get_environment_owner("env1") is None
    with pytest.raises(UserNotFound):
        repo.delete_user(alice)
    with pytest.raises(UserNotFound):
        repo.update_user(alice, UserChange(is_admin=True))


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


def test_add_session_keeps_the_newest_per_user(repo: Repository) -> None:
    """With max_per_user, add_session deletes the user's oldest sessions beyond it and says
    how many; other users' sessions are not counted nor touched."""
    alice, bob = add_user(repo, "alice"), add_user(repo, "bob")
    repo.add_session(session_of(bob, "b0", minute=-10))
    ended = [repo.add_session(session_of(alice, f"a{m}", m), max_per_user=3) for m in range(4)]
    assert ended == [0, 0, 0, 1]
    assert repo.get_session("a0") is None
    assert [t for t in ("a1", "a2", "a3", "b0") if repo.get_session(t)] == ["a1", "a2", "a3", "b0"]
    assert repo.add_session(session_of(alice, "a4", 4), max_per_user=1) == 3
    assert repo.count_sessions_by_user() == {alice: 1, bob: 1}


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


def test_login_failures_are_read_by_client(repo: Repository) -> None:
    """login_failures_of_client gives (time, username) of that client's failures, oldest
    first, whatever the usernames; other clients' failures are not in it."""
    repo.add_login_failure(username="alice", client="10.0.0.2", at=at(3))
    repo.add_login_failure(username="bob", client="10.0.0.2", at=at(1))
    repo.add_login_failure(username="alice", client="10.0.0.1", at=at(2))
    got = repo.login_failures_of_client(client="10.0.0.2", since=at(-60))
    assert got == [(at(1), "bob"), (at(3), "alice")]
    assert repo.login_failures_of_client(client="10.9.9.9", since=at(-60)) == []


def test_login_failures_since_is_inclusive(repo: Repository) -> None:
    """Only failures at or after ``since`` count."""
    for minute in (0, 5, 10):
        repo.add_login_failure(username="alice", client="c", at=at(minute))
    got = repo.login_failures_of_client(client="c", since=at(5))
    assert [t for t, _ in got] == [at(5), at(10)]


def test_clear_login_failures_of_one_pair(repo: Repository) -> None:
    """clear_login_failures removes that (username, client) pair's failures only: not the
    same username's from another client, nor other usernames' from that client."""
    repo.add_login_failure(username="alice", client="c1", at=at(1))
    repo.add_login_failure(username="bob", client="c1", at=at(2))
    repo.add_login_failure(username="alice", client="c2", at=at(3))
    repo.clear_login_failures(username="alice", client="c1")
    assert repo.login_failures_of_client(client="c1", since=at(-1)) == [(at(2), "bob")]
    assert repo.login_failures_of_client(client="c2", since=at(-1)) == [(at(3), "alice")]


def test_old_login_failures_are_forgotten(repo: Repository) -> None:
    """delete_login_failures_before drops only failures older than the bound."""
    repo.add_login_failure(username="u", client="c", at=at(0))
    repo.add_login_failure(username="u", client="c", at=at(20))
    assert repo.delete_login_failures_before(at(10)) == 1
    assert repo.login_failures_of_client(client="c", since=at(0)) == [(at(20), "u")]


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


def test_add_task_owner_limit_counts_that_owners_tasks(repo: Repository) -> None:
    """With owner_limit, an owner at the limit gets TaskLimitReached and nothing is stored."""
    repo.add_task(make_task("a1", owner_id=1), owner_limit=2)
    repo.add_task(make_task("b1", owner_id=2), owner_limit=2)
    repo.add_task(make_task("a2", owner_id=1), owner_limit=2)
    with pytest.raises(TaskLimitReached) as caught:
        repo.add_task(make_task("a3", owner_id=1), owner_limit=2)
    assert caught.value.limit == 2
    assert repo.get_task_by_name("a3") is None
    assert repo.count_tasks_owned_by(1) == 2
    repo.add_task(make_task("b2", owner_id=2), owner_limit=2)
    repo.add_task(make_task("a3", owner_id=1))
    assert repo.count_tasks_owned_by(1) == 3, "without owner_limit nothing is counted"
    with pytest.raises(TaskLimitReached):
        repo.add_task(make_task("c1", owner_id=3), owner_limit=0)


def test_add_task_owner_limit_frees_a_slot_on_delete(repo: Repository) -> None:
    """Deleting one of an owner's tasks makes room for one more under the same limit."""
    first = repo.add_task(make_task("a1", owner_id=1), owner_limit=1)
    with pytest.raises(TaskLimitReached):
        repo.add_task(make_task("a2", owner_id=1), owner_limit=1)
    repo.delete_task(first.id)
    assert repo.add_task(make_task("a2", owner_id=1), owner_limit=1).name == "a2"


def test_list_tasks_with_latest(repo: Repository) -> None:
    """Every task by id with its last_execution_id execution; None when it has none or it was
    pruned."""
    never = repo.add_task(make_task("never"))
    ran = repo.add_task(make_task("ran"))
    pruned = repo.add_task(make_task("pruned"))
    repo.add_execution(finished("ran-old", ran.id, 0, 1))
    repo.add_execution(finished("ran-new", ran.id, 2, 3, status=ExecutionStatus.FAILED))
    assert repo.record_run_end(finished("ran-new", ran.id, 2, 3, status=ExecutionStatus.FAILED))
    repo.add_execution(finished("gone", pruned.id, 0, 1))
    assert repo.record_run_end(finished("gone", pruned.id, 0, 1))
    repo.prune_executions(at(2))
    got = repo.list_tasks_with_latest()
    assert [(task.name, None if latest is None else latest.id) for task, latest in got] == [
        ("never", None),
        ("ran", "ran-new"),
        ("pruned", None),
    ]
    assert [task for task, _ in got] == repo.list_tasks()
    assert got[0][0] == never
    assert got[1][1] == repo.get_execution("ran-new")
    assert got[2][0].last_execution_id == "gone"


def test_due_tasks_earliest_first_at_or_before_now(repo: Repository) -> None:
    """due_tasks returns tasks whose next_run_at is at or before now (inclusive), earliest first;
    never unscheduled ones."""
    plus2 = timezone(timedelta(hours=2))
    repo.add_task(make_task("late", next_run_at=at(5)))
    repo.add_task(make_task("first", next_run_at=at(1).astimezone(plus2)))
    repo.add_task(make_task("unscheduled"))
    repo.add_task(make_task("future", next_run_at=at(5) + timedelta(microseconds=1)))
    repo.add_task(make_task("middle", next_run_at=at(3)))
    assert [t.name for t in repo.due_tasks(at(5))] == ["first", "middle", "late"]
    assert [t.name for t in repo.due_tasks(at(5).astimezone(plus2))] == [
        "first",
        "middle",
        "late",
    ]
    assert repo.due_tasks(at(1) - timedelta(microseconds=1)) == []
    [first] = repo.due_tasks(at(1))
    assert first == repo.get_task_by_name("first")


def test_earliest_next_run(repo: Repository) -> None:
    """earliest_next_run is the smallest next_run_at (in UTC); None when no task is scheduled."""
    assert repo.earliest_next_run() is None
    repo.add_task(make_task("unscheduled"))
    assert repo.earliest_next_run() is None
    plus2 = timezone(timedelta(hours=2))
    repo.add_task(make_task("later", next_run_at=at(10)))
    early = repo.add_task(make_task("early", next_run_at=at(3).astimezone(plus2)))
    earliest = repo.earliest_next_run()
    assert earliest == at(3)
    assert earliest is not None
    assert earliest.utcoffset() == timedelta(0)
    repo.unschedule_task(early.id)
    assert repo.earliest_next_run() == at(10)


def test_set_task_script_changes_name_and_path_only(repo: Repository) -> None:
    """set_task_script sets the name and script path and leaves every other field alone."""
    task = repo.add_task(
        make_task("old", cron_expression="* * * * *", next_run_at=at(1), owner_id=7)
    )
    repo.set_task_script(task.id, name="new", script_path="/srv/scripts/new.py")
    assert repo.get_task(task.id) == attrs.evolve(
        task, name="new", script_path="/srv/scripts/new.py"
    )
    assert repo.get_task_by_name("old") is None
    repo.set_task_script(task.id, name="new", script_path="/same-name.py")
    assert repo.get_task(task.id).script_path == "/same-name.py"


def test_set_task_script_errors_change_nothing(repo: Repository) -> None:
    """set_task_script raises TaskExists for a taken name and TaskNotFound for an unknown
    task; neither changes anything."""
    repo.add_task(make_task("taken"))
    task = repo.add_task(make_task("mine"))
    with pytest.raises(TaskExists):
        repo.set_task_script(task.id, name="taken", script_path="/other.py")
    assert repo.get_task(task.id) == task
    with pytest.raises(TaskNotFound):
        repo.set_task_script(task.id + 100, name="ghost", script_path="/other.py")
    with pytest.raises(TaskNotFound):
        repo.set_task_script(task.id + 100, name="taken", script_path="/other.py")
    assert [t.name for t in repo.list_tasks()] == ["taken", "mine"]


def test_unschedule_task_clears_schedule_only(repo: Repository) -> None:
    """unschedule_task clears next_run_at and cron_expression and nothing else; TaskNotFound for
    an unknown task."""
    task = repo.add_task(
        make_task(cron_expression="*/5 * * * *", next_run_at=at(5), status=TaskStatus.COMPLETED)
    )
    repo.unschedule_task(task.id)
    assert repo.get_task(task.id) == attrs.evolve(task, cron_expression=None, next_run_at=None)
    assert repo.due_tasks(at(100)) == []
    repo.unschedule_task(task.id)
    with pytest.raises(TaskNotFound):
        repo.unschedule_task(task.id + 100)


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


def test_unfinished_executions(repo: Repository) -> None:
    """unfinished_executions returns queued and running ones, newest first; never finished or
    skipped ones."""
    task = repo.add_task(make_task())
    for minute, status in enumerate(ExecutionStatus):
        repo.add_execution(
            make_execution(status.value, task.id, status=status, start_time=at(minute))
        )
    assert [e.id for e in repo.unfinished_executions()] == ["running", "queued"]


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


# --- runs: start and end -----------------------------------------------------------------------


def test_record_run_start_stores_execution_and_marks_task_running(repo: Repository) -> None:
    """record_run_start stores every field of the execution and sets the task's status,
    last_run_at and last_execution_id, nothing else."""
    task = repo.add_task(make_task(last_run_duration=4.5, cron_expression="* * * * *"))
    repo.add_execution(make_execution("ex", task.id, scheduled_for=at(0)))
    running = make_execution(
        "ex",
        task.id,
        status=ExecutionStatus.RUNNING,
        scheduled_for=at(0),
        start_time=at(1),
        pid=99,
        log_path="/logs/ex.log",
    )
    assert repo.record_run_start(running) is True
    assert repo.get_execution("ex") == running
    assert repo.get_task(task.id) == attrs.evolve(
        task, status=TaskStatus.RUNNING, last_run_at=at(1), last_execution_id="ex"
    )


def test_record_run_start_of_deleted_task_stores_nothing(repo: Repository) -> None:
    """record_run_start for a task deleted meanwhile returns False and stores nothing."""
    task = repo.add_task(make_task())
    execution = make_execution("ex", task.id)
    repo.add_execution(execution)
    repo.delete_task(task.id)
    running = attrs.evolve(execution, status=ExecutionStatus.RUNNING, start_time=at(1))
    assert repo.record_run_start(running) is False
    assert repo.get_execution("ex") is None
    assert repo.list_tasks() == []
    assert repo.latest_started(10) == []


def test_record_run_start_of_unknown_execution_stores_nothing(repo: Repository) -> None:
    """record_run_start of an execution not stored (e.g. pruned) returns False and changes
    neither it nor its task."""
    task = repo.add_task(make_task())
    running = make_execution("ghost", task.id, status=ExecutionStatus.RUNNING, start_time=at(1))
    assert repo.record_run_start(running) is False
    assert repo.get_execution("ghost") is None
    assert repo.get_task(task.id) == task


@pytest.mark.parametrize(
    ("status", "task_status"),
    [
        (ExecutionStatus.COMPLETED, TaskStatus.COMPLETED),
        (ExecutionStatus.FAILED, TaskStatus.FAILED),
        (ExecutionStatus.STOPPED, TaskStatus.STOPPED),
    ],
)
def test_record_run_end_stores_execution_and_task_state(
    repo: Repository, status: ExecutionStatus, task_status: TaskStatus
) -> None:
    """record_run_end stores the ended execution and sets the task's status, last_execution_id,
    last_run_at (its start) and last_run_duration, nothing else."""
    task = repo.add_task(make_task(next_run_at=at(60)))
    repo.add_execution(make_execution("ex", task.id))
    assert repo.record_run_start(
        make_execution("ex", task.id, status=ExecutionStatus.RUNNING, start_time=at(1))
    )
    ended = finished("ex", task.id, 1, 3, status=status, duration=120.0, exit_code=0, pid=5)
    assert repo.record_run_end(ended) is True
    assert repo.get_execution("ex") == ended
    assert repo.get_task(task.id) == attrs.evolve(
        task,
        status=task_status,
        last_execution_id="ex",
        last_run_at=at(1),
        last_run_duration=120.0,
    )


def test_record_run_end_only_if_latest_leaves_a_newer_run_alone(repo: Repository) -> None:
    """With only_if_latest the execution is stored but the task keeps its state when its
    last_execution_id is another execution."""
    task = repo.add_task(make_task())
    repo.add_execution(make_execution("old", task.id, status=ExecutionStatus.RUNNING))
    repo.add_execution(make_execution("new", task.id))
    newer = make_execution("new", task.id, status=ExecutionStatus.RUNNING, start_time=at(5))
    assert repo.record_run_start(newer)
    before = repo.get_task(task.id)
    interrupted = finished("old", task.id, 1, 2, status=ExecutionStatus.FAILED, duration=60.0)
    assert repo.record_run_end(interrupted, only_if_latest=True) is True
    assert repo.get_execution("old") == interrupted
    assert repo.get_task(task.id) == before
    assert before.last_execution_id == "new"
    assert before.status is TaskStatus.RUNNING


def test_record_run_end_only_if_latest_changes_task_when_it_is_latest_or_none(
    repo: Repository,
) -> None:
    """With only_if_latest the task follows when its last_execution_id is this execution or
    none."""
    fresh = repo.add_task(make_task("fresh"))
    repo.add_execution(make_execution("first", fresh.id))
    assert repo.record_run_end(
        finished("first", fresh.id, 0, 1, status=ExecutionStatus.FAILED, duration=1.0),
        only_if_latest=True,
    )
    got = repo.get_task(fresh.id)
    assert (got.status, got.last_execution_id, got.last_run_at, got.last_run_duration) == (
        TaskStatus.FAILED,
        "first",
        at(0),
        1.0,
    )
    ran = repo.add_task(make_task("ran"))
    repo.add_execution(make_execution("mine", ran.id))
    assert repo.record_run_start(
        make_execution("mine", ran.id, status=ExecutionStatus.RUNNING, start_time=at(2))
    )
    assert repo.record_run_end(finished("mine", ran.id, 2, 3, duration=2.0), only_if_latest=True)
    got = repo.get_task(ran.id)
    assert (got.status, got.last_execution_id, got.last_run_duration) == (
        TaskStatus.COMPLETED,
        "mine",
        2.0,
    )


def test_record_run_end_without_only_if_latest_takes_over_the_task(repo: Repository) -> None:
    """Without only_if_latest the ended execution becomes the task's latest run even when
    another one was."""
    task = repo.add_task(make_task())
    repo.add_execution(make_execution("a", task.id))
    repo.add_execution(make_execution("b", task.id))
    assert repo.record_run_start(
        make_execution("b", task.id, status=ExecutionStatus.RUNNING, start_time=at(2))
    )
    assert repo.record_run_end(finished("a", task.id, 1, 2, status=ExecutionStatus.STOPPED))
    got = repo.get_task(task.id)
    assert (got.status, got.last_execution_id, got.last_run_at) == (
        TaskStatus.STOPPED,
        "a",
        at(1),
    )


def test_record_run_end_of_unknown_execution_stores_nothing(repo: Repository) -> None:
    """record_run_end of an execution not stored (pruned, or its task deleted) returns False
    and changes nothing."""
    task = repo.add_task(make_task())
    assert repo.record_run_end(finished("ghost", task.id, 0, 1)) is False
    assert repo.get_execution("ghost") is None
    assert repo.get_task(task.id) == task
    repo.add_execution(make_execution("doomed", task.id))
    repo.delete_task(task.id)
    assert repo.record_run_end(finished("doomed", task.id, 0, 1), only_if_latest=True) is False
    assert repo.get_execution("doomed") is None


# --- claiming occurrences ----------------------------------------------------------------------


def queued_for(ident: str, task_id: int, minute: float) -> Execution:
    """A queued firing of the occurrence at ``minute``, as the scheduler builds it."""
    return make_execution(ident, task_id, scheduled_for=at(minute))


def skip_at(ident: str, task_id: int, minute: float) -> Execution:
    """A skipped occurrence at ``minute``, as the scheduler hands it to ``claim_occurrence``."""
    return make_execution(
        ident,
        task_id,
        status=ExecutionStatus.SKIPPED,
        scheduled_for=at(minute),
        start_time=at(minute),
        end_time=at(minute),
        skip_count=1,
        first_skipped_at=at(minute),
        last_skipped_at=at(minute),
    )


def test_claim_occurrence_stores_queued_execution_and_moves_schedule(repo: Repository) -> None:
    """A claim of the task's next run stores the queued execution, returns it as stored and moves
    next_run_at, changing nothing else of the task."""
    task = repo.add_task(make_task(cron_expression="* * * * *", next_run_at=at(1)))
    execution = queued_for("fired", task.id, 1)
    stored = repo.claim_occurrence(execution, due=at(1), next_run_at=at(2))
    assert stored == execution
    assert repo.get_execution("fired") == execution
    assert repo.get_task(task.id) == attrs.evolve(task, next_run_at=at(2))
    last = repo.claim_occurrence(queued_for("last", task.id, 2), due=at(2), next_run_at=None)
    assert last is not None
    assert repo.get_task(task.id).next_run_at is None
    assert repo.earliest_next_run() is None
    assert [e.id for e in repo.list_executions(task.id)] == ["last", "fired"]


def test_claim_occurrence_twice_claims_once(repo: Repository) -> None:
    """A second claim of the same occurrence returns None and stores nothing."""
    task = repo.add_task(make_task(next_run_at=at(1)))
    assert repo.claim_occurrence(queued_for("one", task.id, 1), due=at(1), next_run_at=at(2))
    assert (
        repo.claim_occurrence(queued_for("two", task.id, 1), due=at(1), next_run_at=at(3)) is None
    )
    assert repo.get_execution("two") is None
    assert [e.id for e in repo.list_executions(task.id)] == ["one"]
    assert repo.get_task(task.id).next_run_at == at(2)


def test_claim_occurrence_refused_when_next_run_moved(repo: Repository) -> None:
    """When the task's next_run_at is no longer ``due`` (rescheduled meanwhile), the claim
    returns None, stores nothing and leaves the schedule alone."""
    task = repo.add_task(make_task(next_run_at=at(5)))
    for due in (at(4), at(5) + timedelta(microseconds=1)):
        assert (
            repo.claim_occurrence(queued_for("stale", task.id, 4), due=due, next_run_at=at(9))
            is None
        )
        assert (
            repo.claim_occurrence(skip_at("stale-skip", task.id, 4), due=due, next_run_at=None)
            is None
        )
    assert repo.list_executions(task.id) == []
    assert repo.get_task(task.id) == task


def test_claim_occurrence_due_is_an_instant_not_a_zone(repo: Repository) -> None:
    """``due`` given in another zone is the same occurrence and is claimed."""
    task = repo.add_task(make_task(next_run_at=at(1)))
    plus2 = timezone(timedelta(hours=2))
    stored = repo.claim_occurrence(
        queued_for("fired", task.id, 1), due=at(1).astimezone(plus2), next_run_at=at(2)
    )
    assert stored is not None
    assert repo.get_task(task.id).next_run_at == at(2)


def test_claim_occurrence_refused_after_unschedule(repo: Repository) -> None:
    """Once unschedule_task returns, no occurrence of the task can be claimed."""
    task = repo.add_task(make_task(cron_expression="* * * * *", next_run_at=at(1)))
    repo.unschedule_task(task.id)
    assert repo.claim_occurrence(queued_for("q", task.id, 1), due=at(1), next_run_at=at(2)) is None
    assert repo.claim_occurrence(skip_at("s", task.id, 1), due=at(1), next_run_at=at(2)) is None
    assert repo.list_executions(task.id) == []
    got = repo.get_task(task.id)
    assert (got.next_run_at, got.cron_expression) == (None, None)


def test_claim_occurrence_refused_for_deleted_task(repo: Repository) -> None:
    """A claim for a task deleted meanwhile returns None and stores nothing (no error)."""
    task = repo.add_task(make_task(next_run_at=at(1)))
    repo.delete_task(task.id)
    assert repo.claim_occurrence(queued_for("q", task.id, 1), due=at(1), next_run_at=at(2)) is None
    assert repo.claim_occurrence(skip_at("s", task.id, 1), due=at(1), next_run_at=at(2)) is None
    assert repo.get_execution("q") is None
    assert repo.get_execution("s") is None


def test_claim_occurrence_with_taken_id_raises_and_changes_nothing(repo: Repository) -> None:
    """A new record whose id is taken raises ValueError; the schedule does not move."""
    task = repo.add_task(make_task(next_run_at=at(1)))
    repo.add_execution(make_execution("taken", task.id, status=ExecutionStatus.COMPLETED))
    with pytest.raises(ValueError, match="exists"):
        repo.claim_occurrence(queued_for("taken", task.id, 1), due=at(1), next_run_at=at(2))
    with pytest.raises(ValueError, match="exists"):
        repo.claim_occurrence(skip_at("taken", task.id, 1), due=at(1), next_run_at=at(2))
    assert repo.get_task(task.id).next_run_at == at(1)
    [stored] = repo.list_executions(task.id)
    assert stored.status is ExecutionStatus.COMPLETED


@pytest.mark.parametrize(
    "malformed",
    [
        {"skip_count": 0},
        {"first_skipped_at": None},
        {"last_skipped_at": None},
    ],
)
def test_claim_occurrence_malformed_skip_raises_and_changes_nothing(
    repo: Repository, malformed: dict[str, Any]
) -> None:
    """A skipped execution without its count or skip times raises ValueError; nothing changes."""
    task = repo.add_task(make_task(next_run_at=at(1)))
    repo.add_execution(skip_at("earlier", task.id, 0))
    bad = attrs.evolve(skip_at("bad", task.id, 1), **malformed)
    with pytest.raises(ValueError, match="skipped"):
        repo.claim_occurrence(bad, due=at(1), next_run_at=at(2))
    assert repo.get_task(task.id).next_run_at == at(1)
    assert repo.list_executions(task.id) == [skip_at("earlier", task.id, 0)]


def test_claim_occurrence_merges_consecutive_skips_into_one_record(repo: Repository) -> None:
    """Skips with nothing fired in between are one record: its count, last skip and end time
    grow; the first skip's id, start and scheduled time stay."""
    task = repo.add_task(make_task(next_run_at=at(1)))
    repo.add_execution(
        make_execution("run", task.id, status=ExecutionStatus.RUNNING, start_time=at(0))
    )
    for minute in (1, 2, 3):
        stored = repo.claim_occurrence(
            skip_at(f"skip-{minute}", task.id, minute), due=at(minute), next_run_at=at(minute + 1)
        )
        assert stored is not None
        assert (stored.id, stored.skip_count) == ("skip-1", minute)
    [skip, run] = repo.list_executions(task.id)
    assert run.id == "run"
    assert skip == stored
    assert (skip.id, skip.status, skip.skip_count) == ("skip-1", ExecutionStatus.SKIPPED, 3)
    assert (skip.first_skipped_at, skip.last_skipped_at) == (at(1), at(3))
    assert (skip.scheduled_for, skip.start_time, skip.end_time) == (at(1), at(1), at(3))
    assert repo.get_execution("skip-2") is None
    assert repo.get_task(task.id).next_run_at == at(4)


def test_claim_occurrence_skip_after_a_firing_starts_a_new_record(repo: Repository) -> None:
    """An execution stored after a skip record ends it: the next skip is a new record; another
    task's skips are its own."""
    task = repo.add_task(make_task(next_run_at=at(1)))
    repo.claim_occurrence(skip_at("skip-a", task.id, 1), due=at(1), next_run_at=at(2))
    repo.claim_occurrence(skip_at("skip-a2", task.id, 2), due=at(2), next_run_at=at(3))
    repo.claim_occurrence(queued_for("queued", task.id, 3), due=at(3), next_run_at=at(4))
    stored = repo.claim_occurrence(skip_at("skip-b", task.id, 4), due=at(4), next_run_at=at(5))
    assert stored is not None
    assert (stored.id, stored.skip_count) == ("skip-b", 1)
    assert (stored.first_skipped_at, stored.last_skipped_at) == (at(4), at(4))
    assert repo.get_execution("skip-a2") is None
    first = repo.get_execution("skip-a")
    assert first is not None
    assert first.skip_count == 2
    other = repo.add_task(make_task("other", next_run_at=at(5)))
    own = repo.claim_occurrence(skip_at("skip-other", other.id, 5), due=at(5), next_run_at=None)
    assert own is not None
    assert (own.id, own.skip_count) == ("skip-other", 1)
    assert repo.get_execution("skip-b") == stored


def test_claim_occurrence_skip_is_not_merged_into_a_finished_run(repo: Repository) -> None:
    """A skip after a finished (not skipped) latest execution is a new record."""
    task = repo.add_task(make_task(next_run_at=at(5)))
    repo.add_execution(finished("done", task.id, 0, 1))
    stored = repo.claim_occurrence(skip_at("skip", task.id, 5), due=at(5), next_run_at=None)
    assert stored == skip_at("skip", task.id, 5)
    done = repo.get_execution("done")
    assert done is not None
    assert done.skip_count == 0


def test_claims_from_many_threads_claim_each_occurrence_once(repo: Repository) -> None:
    """Threads racing through 40 skipped occurrences claim each exactly once: one record counts
    them all."""
    task = repo.add_task(make_task(next_run_at=at(0)))
    start = threading.Barrier(8, timeout=30)

    def work(worker: int) -> int:
        start.wait()
        claimed = 0
        for attempt in range(1000):
            due = repo.get_task(task.id).next_run_at
            if due is None:
                break
            minute = (due - T0) // timedelta(minutes=1)
            following = None if minute >= 39 else at(minute + 1)
            skip = skip_at(f"w{worker}-{attempt}", task.id, minute)
            if repo.claim_occurrence(skip, due=due, next_run_at=following) is not None:
                claimed += 1
        return claimed

    with ThreadPoolExecutor(8) as pool:
        counts = [f.result() for f in [pool.submit(work, w) for w in range(8)]]
    assert sum(counts) == 40
    [skip] = repo.list_executions(task.id)
    assert (skip.skip_count, skip.first_skipped_at, skip.last_skipped_at) == (40, at(0), at(39))


# --- reading executions in pages ---------------------------------------------------------------


def walk(repo: Repository, limit: int, **filters: Any) -> list[Execution]:
    """Every page of execution_page, each cursor the last id of the page before."""
    pages: list[Execution] = []
    before: str | None = None
    for _ in range(1000):
        page = repo.execution_page(limit=limit, before=before, **filters)
        assert len(page) <= limit
        if not page:
            return pages
        pages.extend(page)
        before = page[-1].id
    raise AssertionError("execution_page never ran out")


def add_history(repo: Repository) -> tuple[Task, Task]:
    """Two tasks whose executions tie in every way the order knows of."""
    task = repo.add_task(make_task("task"))
    other = repo.add_task(make_task("other"))
    for ident, task_id, start, sched, status in [
        ("old", task.id, 0, 0, ExecutionStatus.COMPLETED),
        ("tie-a", task.id, 5, 4, ExecutionStatus.COMPLETED),
        ("o-tie", other.id, 5, 4, ExecutionStatus.FAILED),
        ("tie-b", task.id, 5, 4, ExecutionStatus.FAILED),
        ("tie-manual", task.id, 5, None, ExecutionStatus.STOPPED),
        ("manual-1", task.id, 7, None, ExecutionStatus.COMPLETED),
        ("manual-2", task.id, 7, None, ExecutionStatus.COMPLETED),
        ("o-manual", other.id, 7, None, ExecutionStatus.COMPLETED),
        ("skip", task.id, 8, 8, ExecutionStatus.SKIPPED),
        ("o-skip", other.id, 8, 8, ExecutionStatus.SKIPPED),
        ("running", task.id, 9, 9, ExecutionStatus.RUNNING),
    ]:
        repo.add_execution(
            make_execution(
                ident,
                task_id,
                status=status,
                start_time=at(start),
                end_time=None if status is ExecutionStatus.RUNNING else at(start + 1),
                scheduled_for=None if sched is None else at(sched),
            )
        )
    for ident, task_id, sched in [
        ("queued-1", task.id, 20),
        ("queued-2", task.id, 20),
        ("o-queued", other.id, 20),
        ("queued-manual-1", task.id, None),
        ("queued-manual-2", task.id, None),
    ]:
        repo.add_execution(
            make_execution(ident, task_id, scheduled_for=None if sched is None else at(sched))
        )
    return task, other


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100])
def test_execution_page_walk_is_list_executions(repo: Repository, limit: int) -> None:
    """Walking a task's pages with ``before`` yields exactly list_executions, in order, with no
    duplicate nor gap, ties (same start and scheduled time), queued and unscheduled included."""
    task, other = add_history(repo)
    for of in (task, other):
        expected = [e.id for e in repo.list_executions(of.id)]
        assert [e.id for e in walk(repo, limit, task_id=of.id)] == expected
    assert [e.id for e in repo.list_executions(task.id)] == [
        "queued-manual-2",
        "queued-manual-1",
        "queued-2",
        "queued-1",
        "running",
        "skip",
        "manual-2",
        "manual-1",
        "tie-manual",
        "tie-b",
        "tie-a",
        "old",
    ]
    assert walk(repo, limit, task_id=task.id) == repo.list_executions(task.id)


@pytest.mark.parametrize("limit", [1, 4, 100])
def test_execution_page_of_every_task_keeps_each_tasks_order(repo: Repository, limit: int) -> None:
    """Without task_id, the walk holds every execution once, in one order that agrees with each
    task's list_executions."""
    task, other = add_history(repo)
    everything = walk(repo, limit)
    ids = [e.id for e in everything]
    assert len(ids) == len(set(ids))
    assert ids == [e.id for e in repo.execution_page(limit=1000)]
    for of in (task, other):
        assert [e for e in everything if e.task_id == of.id] == repo.list_executions(of.id)
    assert ids[:3] == ["queued-manual-2", "queued-manual-1", "o-queued"]
    assert ids[-1] == "old"


def test_execution_page_edges(repo: Repository) -> None:
    """A page stops at ``limit``; an unknown cursor, the last one, or limit 0 give []."""
    task, _ = add_history(repo)
    all_ids = [e.id for e in repo.list_executions(task.id)]
    assert [e.id for e in repo.execution_page(limit=3, task_id=task.id)] == all_ids[:3]
    assert [
        e.id for e in repo.execution_page(limit=3, task_id=task.id, before=all_ids[4])
    ] == all_ids[5:8]
    assert repo.execution_page(limit=3, task_id=task.id, before="no-such-id") == []
    assert repo.execution_page(limit=3, before="no-such-id") == []
    assert repo.execution_page(limit=3, task_id=task.id, before=all_ids[-1]) == []
    assert repo.execution_page(limit=0, task_id=task.id) == []
    assert repo.execution_page(limit=5, task_id=task.id + 100) == []


@pytest.mark.parametrize("limit", [1, 3, 100])
def test_execution_page_without_skipped(repo: Repository, limit: int) -> None:
    """include_skipped=False leaves skipped records out and keeps the rest in order."""
    task, _ = add_history(repo)
    expected = [
        e.id for e in repo.list_executions(task.id) if e.status is not ExecutionStatus.SKIPPED
    ]
    got = [e.id for e in walk(repo, limit, task_id=task.id, include_skipped=False)]
    assert got == expected
    everything = walk(repo, limit, include_skipped=False)
    assert all(e.status is not ExecutionStatus.SKIPPED for e in everything)
    assert len(everything) == len(walk(repo, 100)) - 2
    after_skip = repo.execution_page(
        limit=100, task_id=task.id, before="skip", include_skipped=False
    )
    assert [e.id for e in after_skip] == expected[expected.index("running") + 1 :]


@pytest.mark.parametrize("limit", [1, 2, 100])
def test_execution_page_started_since(repo: Repository, limit: int) -> None:
    """started_since keeps executions started at or after it (of every task, or one), newest
    first, never ones not started."""
    task, other = add_history(repo)
    got = [e.id for e in walk(repo, limit, started_since=at(7))]
    assert got[0] == "running"
    assert set(got) == {"running", "skip", "o-skip", "manual-1", "manual-2", "o-manual"}
    assert got.index("manual-2") < got.index("manual-1")
    everything = [e.id for e in walk(repo, 100)]
    assert got == [i for i in everything if i in set(got)]
    assert [e.id for e in walk(repo, limit, started_since=at(7), task_id=other.id)] == [
        "o-skip",
        "o-manual",
    ]
    assert [
        e.id for e in walk(repo, limit, started_since=at(7), task_id=task.id, include_skipped=False)
    ] == ["running", "manual-2", "manual-1"]
    assert repo.execution_page(limit=10, started_since=at(9) + timedelta(microseconds=1)) == []
    plus2 = timezone(timedelta(hours=2))
    assert [e.id for e in repo.execution_page(limit=10, started_since=at(9).astimezone(plus2))] == [
        "running"
    ]


_slots = st.none() | st.integers(min_value=0, max_value=3)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.tuples(_slots, _slots, st.booleans(), st.sampled_from(ExecutionStatus)), max_size=25
    ),
    limit=st.integers(min_value=1, max_value=6),
)
def test_execution_page_walk_property(
    repo: Repository, rows: list[tuple[int | None, int | None, bool, ExecutionStatus]], limit: int
) -> None:
    """For any executions (many ties), walking pages yields list_executions exactly."""
    task = repo.add_task(make_task(f"walk-{uuid.uuid4()}"))
    other = repo.add_task(make_task(f"other-{uuid.uuid4()}"))
    try:
        for n, (start, sched, mine, status) in enumerate(rows):
            repo.add_execution(
                make_execution(
                    f"{task.id}-{n}",
                    task.id if mine else other.id,
                    status=status,
                    start_time=None if start is None else at(start),
                    scheduled_for=None if sched is None else at(sched),
                )
            )
        assert walk(repo, limit, task_id=task.id) == repo.list_executions(task.id)
        assert walk(repo, limit, task_id=other.id) == repo.list_executions(other.id)
    finally:
        repo.delete_task(task.id)
        repo.delete_task(other.id)


def test_latest_started_running_or_finished_newest_first(repo: Repository) -> None:
    """latest_started returns the ``limit`` running or finished executions started last, newest
    first; never queued or skipped ones."""
    add_history(repo)
    assert [e.id for e in repo.latest_started(6)] == [
        "running",
        "o-manual",
        "manual-2",
        "manual-1",
        "tie-manual",
        "tie-b",
    ]
    assert [e.id for e in repo.latest_started(100)][-3:] == ["o-tie", "tie-a", "old"]
    assert len(repo.latest_started(100)) == 9
    assert repo.latest_started(0) == []


def test_latest_started_empty(repo: Repository) -> None:
    """With only queued and skipped executions, latest_started is empty."""
    task = repo.add_task(make_task())
    repo.add_execution(make_execution("q", task.id, scheduled_for=at(0)))
    repo.add_execution(skip_at("s", task.id, 1))
    assert repo.latest_started(10) == []


# --- aggregates --------------------------------------------------------------------------------


def test_summarize_executions_empty(repo: Repository) -> None:
    """With no finished execution every count is 0 and there is no min or max."""
    task = repo.add_task(make_task())
    repo.add_execution(make_execution("q", task.id))
    repo.add_execution(skip_at("s", task.id, 0))
    empty = ExecutionSummary(
        finished=0,
        completed=0,
        timed=0,
        total_duration=0.0,
        min_duration=None,
        max_duration=None,
    )
    assert repo.summarize_executions() == empty
    assert repo.summarize_executions(environment="env1") == empty


def test_summarize_executions_counts_and_durations(repo: Repository) -> None:
    """Finished (completed, failed, stopped) executions are counted, with min, max and total (so
    average) of those that have a duration; per environment when asked."""
    env1 = repo.add_task(make_task("one", conda_env="env1"))
    env1b = repo.add_task(make_task("one-b", conda_env="env1"))
    env2 = repo.add_task(make_task("two", conda_env="env2"))
    for ident, task, status, duration in [
        ("c1", env1, ExecutionStatus.COMPLETED, 1.5),
        ("c2", env1b, ExecutionStatus.COMPLETED, 4.0),
        ("c3", env1, ExecutionStatus.COMPLETED, None),
        ("f1", env1, ExecutionStatus.FAILED, 2.5),
        ("s1", env2, ExecutionStatus.STOPPED, 0.5),
        ("c4", env2, ExecutionStatus.COMPLETED, 10.0),
        ("r1", env1, ExecutionStatus.RUNNING, 100.0),
        ("q1", env1, ExecutionStatus.QUEUED, 200.0),
        ("k1", env2, ExecutionStatus.SKIPPED, 300.0),
    ]:
        repo.add_execution(
            make_execution(ident, task.id, status=status, start_time=at(0), duration=duration)
        )
    every = repo.summarize_executions()
    assert every == ExecutionSummary(
        finished=6,
        completed=4,
        timed=5,
        total_duration=18.5,
        min_duration=0.5,
        max_duration=10.0,
    )
    assert every.total_duration / every.timed == pytest.approx(3.7)
    assert repo.summarize_executions(environment="env1") == ExecutionSummary(
        finished=4,
        completed=3,
        timed=3,
        total_duration=8.0,
        min_duration=None,  # the extremes are only kept over every execution
        max_duration=None,
    )
    assert repo.summarize_executions(environment="env2") == ExecutionSummary(
        finished=2,
        completed=1,
        timed=2,
        total_duration=10.5,
        min_duration=None,
        max_duration=None,
    )
    assert repo.summarize_executions(environment="nowhere").finished == 0
    repo.rename_environment("env2", "env3")
    assert repo.summarize_executions(environment="env3").finished == 2
    assert repo.summarize_executions(environment="env2").finished == 0


def test_count_outcomes_buckets_start_inclusive_end_exclusive(repo: Repository) -> None:
    """Each completed or failed execution counts in the interval [b[i], b[i+1]) its end falls
    in; stopped, skipped, running and out-of-range ones are not counted."""
    task = repo.add_task(make_task())
    tick = timedelta(microseconds=1)
    ends: list[tuple[str, ExecutionStatus, datetime]] = [
        ("before-range", ExecutionStatus.COMPLETED, at(0) - tick),
        ("at-b0", ExecutionStatus.COMPLETED, at(0)),
        ("just-before-b1", ExecutionStatus.FAILED, at(10) - tick),
        ("at-b1", ExecutionStatus.COMPLETED, at(10)),
        ("at-b1-failed", ExecutionStatus.FAILED, at(10)),
        ("mid-2", ExecutionStatus.FAILED, at(25)),
        ("just-before-end", ExecutionStatus.COMPLETED, at(30) - tick),
        ("at-end", ExecutionStatus.COMPLETED, at(30)),
        ("stopped", ExecutionStatus.STOPPED, at(5)),
        ("skipped", ExecutionStatus.SKIPPED, at(5)),
        ("running", ExecutionStatus.RUNNING, at(5)),
        ("queued", ExecutionStatus.QUEUED, at(5)),
    ]
    for ident, status, end in ends:
        repo.add_execution(
            make_execution(ident, task.id, status=status, start_time=at(-1), end_time=end)
        )
    repo.add_execution(make_execution("no-end", task.id, status=ExecutionStatus.COMPLETED))
    boundaries = [at(0), at(10), at(20), at(30)]
    assert repo.count_outcomes(boundaries) == [(1, 1), (1, 1), (1, 1)]
    plus2 = timezone(timedelta(hours=2))
    assert repo.count_outcomes([b.astimezone(plus2) for b in boundaries]) == [
        (1, 1),
        (1, 1),
        (1, 1),
    ]
    assert repo.count_outcomes([at(0), at(30)]) == [(3, 3)]
    assert repo.count_outcomes([at(10), at(10) + tick]) == [(1, 1)]
    assert repo.count_outcomes([at(100), at(200)]) == [(0, 0)]
    assert repo.count_outcomes([at(0)]) == []
    assert repo.count_outcomes([]) == []


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


def test_a_paused_task_is_never_due(repo: Repository) -> None:
    """set_task_paused keeps the task and sets its next run; while paused it is not in
    due_tasks nor earliest_next_run; resumed it is again."""
    paused = repo.add_task(make_task("p", next_run_at=at(1)))
    other = repo.add_task(make_task("o", next_run_at=at(5)))
    repo.set_task_paused(paused.id, True, at(1))
    assert repo.get_task(paused.id).paused
    assert [t.id for t in repo.due_tasks(at(10))] == [other.id]
    assert repo.earliest_next_run() == at(5)
    repo.set_task_paused(paused.id, False, at(2))
    assert [t.id for t in repo.due_tasks(at(10))] == [paused.id, other.id]
    assert repo.earliest_next_run() == at(2)
    with pytest.raises(TaskNotFound):
        repo.set_task_paused(999, True, None)


# --- API tokens --------------------------------------------------------------------------------


def api_token(user_id: int, token_hash: str, **changes: Any) -> ApiToken:
    fields: dict[str, Any] = {
        "id": 0,
        "user_id": user_id,
        "name": "ci ✓",
        "token_hash": token_hash,
        "created_at": T0,
        "expires_at": at(60),
    }
    fields.update(changes)
    return ApiToken(**fields)


def test_tokens_are_stored_found_listed_touched_and_deleted(repo: Repository) -> None:
    alice, bob = add_user(repo, "alice"), add_user(repo, "bob")
    a = repo.add_token(api_token(alice, "ha"))
    b = repo.add_token(api_token(bob, "hb", expires_at=None))
    assert b.id > a.id
    assert repo.get_token(a.id) == a
    assert repo.get_token_by_hash("hb") == b
    assert repo.get_token_by_hash("nope") is None
    assert [t.id for t in repo.list_tokens(alice)] == [a.id]
    assert [t.id for t in repo.list_tokens()] == [a.id, b.id]
    repo.touch_token(a.id, at(5))
    stored = repo.get_token(a.id)
    assert stored is not None and stored.last_used_at == at(5)
    repo.delete_token(a.id)
    repo.delete_token(a.id)
    assert repo.get_token(a.id) is None
    with pytest.raises(LookupError):
        repo.add_token(api_token(999, "hx"))


def test_tokens_per_user_are_capped(repo: Repository) -> None:
    alice, bob = add_user(repo, "alice"), add_user(repo, "bob")
    for n in range(3):
        repo.add_token(api_token(alice, f"h{n}"), max_per_user=3)
    with pytest.raises(InvalidInput):
        repo.add_token(api_token(alice, "h3"), max_per_user=3)
    repo.add_token(api_token(bob, "hb"), max_per_user=3)
    assert len(repo.list_tokens(alice)) == 3


def test_tokens_go_with_disabling_a_new_password_and_deletion(repo: Repository) -> None:
    alice, bob = add_user(repo, "alice"), add_user(repo, "bob")
    repo.add_token(api_token(alice, "a1"))
    repo.add_token(api_token(bob, "b1"))
    add_user(repo, "root", is_admin=True)
    repo.update_user(bob, UserChange(is_admin=True))
    assert len(repo.list_tokens(bob)) == 1  # a promotion ends nothing
    repo.update_user(alice, UserChange(password_hash="new"))
    assert repo.list_tokens(alice) == []
    repo.add_token(api_token(alice, "a2"))
    repo.update_user(alice, UserChange(disabled=True))
    assert repo.list_tokens(alice) == []
    repo.delete_user(bob)
    assert repo.list_tokens() == []


# --- audit -------------------------------------------------------------------------------------


def event(minute: float, action: str = "login", **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "id": 0,
        "at": at(minute),
        "actor": "alice",
        "address": "10.0.0.1",
        "action": action,
        "target": "alice",
    }
    fields.update(changes)
    return AuditEvent(**fields)


def test_audit_events_page_newest_first(repo: Repository) -> None:
    """Events come back newest first with growing ids, every field as stored (detail as
    JSON, unicode kept), a page at a time with the ``before`` cursor."""
    for minute in range(5):
        repo.add_audit_event(event(minute, detail={"n": minute, "name": "zé ✓"}))
    first = repo.audit_page(limit=2)
    assert [e.detail["n"] for e in first] == [4, 3]
    assert first[0].id > first[1].id
    assert first[0] == attrs.evolve(event(4, detail={"n": 4, "name": "zé ✓"}), id=first[0].id)
    rest = repo.audit_page(limit=10, before=first[-1].id)
    assert [e.detail["n"] for e in rest] == [2, 1, 0]
    assert repo.audit_page(limit=10, before=rest[-1].id) == []
    none = repo.add_audit_event(event(6, actor=None, address=None, outcome="refused"))
    assert none is None
    newest = repo.audit_page(limit=1)[0]
    assert (newest.actor, newest.address, newest.outcome) == (None, None, "refused")


def test_prune_audit_forgets_old_events(repo: Repository) -> None:
    """prune_audit deletes events older than the bound and says how many; ids keep growing."""
    for minute in (0, 10, 20):
        repo.add_audit_event(event(minute))
    assert repo.prune_audit(at(15)) == 2
    kept = repo.audit_page(limit=10)
    assert [e.at for e in kept] == [at(20)]
    repo.add_audit_event(event(30))
    assert repo.audit_page(limit=1)[0].id > kept[0].id


def test_naive_datetimes_are_refused(repo: Repository) -> None:
    """Query bounds must be aware datetimes: a naive one raises ValueError."""
    naive = datetime(2024, 5, 1)  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive"):
        repo.execution_page(limit=10, started_since=naive)
    with pytest.raises(ValueError, match="naive"):
        repo.prune_executions(naive)
    with pytest.raises(ValueError, match="naive"):
        repo.login_failures_of_client(client="b", since=naive)
    with pytest.raises(ValueError, match="naive"):
        repo.due_tasks(naive)
    with pytest.raises(ValueError, match="naive"):
        repo.count_outcomes([at(0), naive])
    with pytest.raises(ValueError, match="naive"):
        repo.count_outcomes([naive, at(0), at(1)])


@pytest.mark.parametrize("status", [ExecutionStatus.QUEUED, ExecutionStatus.SKIPPED])
def test_claim_occurrence_naive_times_raise_and_change_nothing(
    repo: Repository, status: ExecutionStatus
) -> None:
    """A naive ``due`` or ``next_run_at`` raises ValueError, and nothing of the claim is stored:
    no execution, no grown skip count, no moved schedule."""
    naive = datetime(2024, 5, 1, 12, 2)  # noqa: DTZ001
    task = repo.add_task(make_task(next_run_at=at(1)))
    repo.add_execution(skip_at("earlier", task.id, 0))
    fresh = (
        skip_at("new", task.id, 1)
        if status is ExecutionStatus.SKIPPED
        else queued_for("new", task.id, 1)
    )
    with pytest.raises(ValueError, match="naive"):
        repo.claim_occurrence(fresh, due=at(1).replace(tzinfo=None), next_run_at=at(2))
    with pytest.raises(ValueError, match="naive"):
        repo.claim_occurrence(fresh, due=at(1), next_run_at=naive)
    assert repo.get_task(task.id).next_run_at == at(1)
    assert repo.list_executions(task.id) == [skip_at("earlier", task.id, 0)]


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
        assert names == [
            "0001_initial_schema",
            "0002_task_run_limits_and_skip_runs",
            "0003_indexes_for_paged_reads",
            "0004_run_aggregates",
            "0005_user_admin_and_audit",
            "0006_api_tokens",
            "0007_task_time_zone",
            "0008_task_paused",
        ]
        assert MIGRATIONS.pending(db) == []
        assert {"users", "sessions", "login_failures", "environment_owners", "tasks"} <= set(
            db.table_names()
        )
        indexes = {i.name for i in db.table("executions").indexes}
        assert {
            "executions_task_newest",
            "executions_newest",
            "executions_status_end_time",
            "executions_status_duration",
        } <= indexes
        assert not {"executions_task_id_start_time", "executions_start_time"} & indexes
    finally:
        db.close()


def test_sqlite_wal_and_foreign_keys_on(db_path: str) -> None:
    """The file is in WAL mode; the write and read connections enforce foreign keys and wait
    for a busy file; the read ones cannot write."""
    with SqliteRepository(db_path) as repo:
        conn = repo._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        with repo._reader() as reader:
            assert reader is not conn
            assert reader.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert reader.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
            assert reader.execute("PRAGMA query_only").fetchone()[0] == 1
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


def _brute_force(repo: Repository, task_ids: list[int]) -> tuple[int, int, int, float]:
    every = [e for t in task_ids for e in repo.list_executions(t) if e.status.finished]
    timed = [e.duration for e in every if e.duration is not None]
    completed = sum(e.status is ExecutionStatus.COMPLETED for e in every)
    return len(every), completed, len(timed), sum(timed)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "end", "reopen", "prune", "delete"]),
            st.integers(0, 2),
            st.sampled_from(list(ExecutionStatus)),
            st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
            st.integers(0, 300),
        ),
        max_size=40,
    )
)
def test_sqlite_aggregates_follow_every_change(tmp_path: Path, steps: list[Any]) -> None:
    """The stats' stored aggregates (kept by triggers) equal a count over the executions
    themselves after any mix of inserts, updates, prunes and task deletes."""
    repo = SqliteRepository(tmp_path / f"agg-{uuid.uuid4().hex}.sqlite3")
    try:
        tasks = [repo.add_task(make_task(f"t{i}", conda_env=f"env{i % 2}")).id for i in range(3)]
        alive = list(tasks)
        stored: list[Execution] = []
        for n, (action, which, status, duration, minute) in enumerate(steps):
            if action == "add" and alive:
                ex = make_execution(
                    f"e{n}",
                    alive[which % len(alive)],
                    status=status,
                    duration=duration,
                    start_time=at(minute),
                    end_time=at(minute + 1) if status.finished else None,
                )
                repo.add_execution(ex)
                stored.append(ex)
            elif action in ("end", "reopen") and stored:
                ex = stored[which % len(stored)]
                ex.status = status if action == "end" else ExecutionStatus.RUNNING
                ex.duration, ex.end_time = duration, at(minute)
                repo.update_execution(ex)
            elif action == "prune":
                repo.prune_executions(at(minute))
            elif action == "delete" and alive:
                gone = alive.pop(which % len(alive))
                repo.delete_task(gone)
                stored = [e for e in stored if e.task_id != gone]
        summary = repo.summarize_executions()
        finished_, completed, timed, total = _brute_force(repo, alive)
        assert (summary.finished, summary.completed, summary.timed) == (finished_, completed, timed)
        assert summary.total_duration == pytest.approx(total, abs=1e-6)
        # Edges on and off the 15-minute slots, intervals shorter and longer than one.
        edges = [at(m) for m in (-10, 0, 7.5, 15, 16, 29, 31, 44, 46, 61, 100, 200, 310)]
        every = [e for t in alive for e in repo.list_executions(t)]
        expected = [
            (
                sum(
                    e.status is ExecutionStatus.COMPLETED
                    and e.end_time is not None
                    and a <= e.end_time < b
                    for e in every
                ),
                sum(
                    e.status is ExecutionStatus.FAILED
                    and e.end_time is not None
                    and a <= e.end_time < b
                    for e in every
                ),
            )
            for a, b in zip(edges, edges[1:], strict=False)
        ]
        assert repo.count_outcomes(edges) == expected
    finally:
        repo.close()


def test_sqlite_aggregates_are_built_from_older_databases(db_path: str) -> None:
    """A database from before the aggregates gets them from the executions it already has."""
    with SqliteRepository(db_path) as fresh:
        task = fresh.add_task(make_task("old"))
    raw = sqlite3.connect(db_path)
    # Back to the schema of before 0004, and rows an older ctm wrote without the triggers.
    for trigger in ("insert", "delete", "update"):
        raw.execute(f"DROP TRIGGER executions_aggregate_{trigger}")
    raw.execute("DROP TABLE run_totals")
    raw.execute("DROP TABLE run_outcomes")
    raw.execute("DELETE FROM _sqlite_migrations WHERE name = '0004_run_aggregates'")
    for i, status in enumerate(["completed", "completed", "failed", "stopped"]):
        raw.execute(
            "INSERT INTO executions (id, task_id, status, start_time, end_time, duration,"
            " skip_count) VALUES (?, ?, ?, ?, ?, ?, 0)",
            (
                f"old{i}",
                task.id,
                status,
                "2026-05-01T12:00:00.000000+00:00",
                "2026-05-01T12:01:00.000000+00:00",
                float(i + 1),
            ),
        )
    raw.commit()
    raw.close()
    with SqliteRepository(db_path) as repo:
        summary = repo.summarize_executions()
        assert (summary.finished, summary.completed, summary.timed) == (4, 2, 4)
        assert summary.total_duration == pytest.approx(10.0)
        edges = [datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC)]
        assert repo.count_outcomes(edges) == [(2, 1)]


def test_task_names_by_id(repo: Repository) -> None:
    a = repo.add_task(make_task("a"))
    b = repo.add_task(make_task("b"))
    repo.set_task_script(b.id, name="b2", script_path="/x.py")
    assert repo.task_names() == {a.id: "a", b.id: "b2"}
    repo.delete_task(a.id)
    assert repo.task_names() == {b.id: "b2"}
