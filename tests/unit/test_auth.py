"""Login, sessions, throttling and user creation in the core, with fakes."""

from __future__ import annotations

import attrs
import pytest

from ctm_core.auth import hash_token
from ctm_core.commands import (
    Credentials,
    NewEnvironment,
    NewTask,
    NewUser,
    Page,
    PasswordChange,
    UserUpdate,
)
from ctm_core.errors import (
    AdminRequired,
    AuthenticationRequired,
    InvalidCredentials,
    InvalidCredentialsFormat,
    TooManyLoginAttempts,
    UserExists,
    WrongPassword,
)
from ctm_core.models import ExecutionStatus
from tests.unit.conftest import World


def test_login_opens_a_session_stored_only_as_a_hash(world: World) -> None:
    """The token handed out is 256 bits and the repository keeps only its hash."""
    token, user = world.auth.login(
        Credentials(username="alice", password="password-alice"), "10.0.0.1"
    )
    assert user.username == "alice" and not user.is_admin
    assert len(token) >= 43
    assert world.repo.get_session(token) is None
    assert world.repo.get_session(hash_token(token)) is not None


def test_unknown_user_and_wrong_password_fail_alike(world: World) -> None:
    """Both raise the same InvalidCredentials with the same message."""
    with pytest.raises(InvalidCredentials) as a:
        world.auth.login(Credentials(username="nobody", password="whatever-pass"), "c")
    with pytest.raises(InvalidCredentials) as b:
        world.auth.login(Credentials(username="alice", password="wrong-password"), "c")
    assert a.value.message == b.value.message == "Invalid username or password"


def test_session_expires_after_15_idle_minutes(world: World) -> None:
    """A session unused for 15 minutes is refused; one used every 14 minutes lives on."""
    token, _ = world.auth.login(Credentials(username="alice", password="password-alice"), "c")
    for _ in range(5):
        world.clock.advance(14 * 60)
        assert world.auth.authenticate(token).username == "alice"
    world.clock.advance(15 * 60)
    with pytest.raises(AuthenticationRequired):
        world.auth.authenticate(token)


def test_a_sessions_use_is_written_at_most_once_a_minute(world: World) -> None:
    """Requests within a minute of the last written use write nothing; the next one does. Idle
    expiry counts from the written use, so it is exact to within that minute."""
    token, _ = world.auth.login(Credentials(username="alice", password="password-alice"), "c")
    opened = world.clock.now()
    world.clock.advance(30)
    world.auth.authenticate(token)
    session = world.repo.get_session(hash_token(token))
    assert session is not None and session.last_seen_at == opened
    world.clock.advance(30)
    world.auth.authenticate(token)
    session = world.repo.get_session(hash_token(token))
    assert session is not None and session.last_seen_at == world.clock.now()
    world.clock.advance(15 * 60)
    with pytest.raises(AuthenticationRequired):
        world.auth.authenticate(token)


def test_session_ends_at_its_absolute_lifetime(world: World) -> None:
    """Even a session in constant use ends after 12 hours."""
    token, _ = world.auth.login(Credentials(username="alice", password="password-alice"), "c")
    for _ in range(12 * 6 - 1):
        world.clock.advance(600)
        world.auth.authenticate(token)
    world.clock.advance(600)
    with pytest.raises(AuthenticationRequired):
        world.auth.authenticate(token)


def test_logout_ends_the_session_and_is_idempotent(world: World) -> None:
    """After logout the token is refused; a second logout does no harm."""
    token, _ = world.auth.login(Credentials(username="alice", password="password-alice"), "c")
    world.auth.logout(token)
    world.auth.logout(token)
    world.auth.logout(None)
    with pytest.raises(AuthenticationRequired):
        world.auth.authenticate(token)


def login(world: World, name: str, password: str, client: str = "c") -> str:
    return world.auth.login(
        Credentials.from_json({"username": name, "password": password}), client
    )[0]


def fail(world: World, name: str, client: str, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(InvalidCredentials):
            login(world, name, "wrong-password", client)


def test_sixth_failure_in_a_row_is_throttled_with_retry_after(world: World) -> None:
    """Five wrong passwords for one (username, address) pair, then 429-style refusal even with
    the right password, until retry_after has passed."""
    fail(world, "alice", "c", 5)
    with pytest.raises(TooManyLoginAttempts) as info:
        login(world, "alice", "password-alice", "c")
    assert info.value.retry_after == 15 * 60
    world.clock.advance(info.value.retry_after - 1)
    with pytest.raises(TooManyLoginAttempts):
        login(world, "alice", "password-alice", "c")
    world.clock.advance(1)
    login(world, "alice", "password-alice", "c")


def test_the_owner_logs_in_from_another_address_while_an_attacker_is_throttled(
    world: World,
) -> None:
    """An attacker's failures lock out only their own (username, address) pair: the owner,
    from an address with no recent failures, gets in at once, and so does another user from
    the attacker's address."""
    fail(world, "admin", "127.0.0.1", 5)
    with pytest.raises(TooManyLoginAttempts):
        login(world, "admin", "password-admin", "127.0.0.1")
    login(world, "admin", "password-admin", "127.0.0.2")
    login(world, "alice", "password-alice", "127.0.0.1")


def test_retry_after_grows_with_repeated_lockouts(world: World) -> None:
    """Each lockout of a pair within a day lasts twice the one before: 15, 30, 60 minutes."""
    waits = []
    for _ in range(3):
        fail(world, "alice", "c", 5)
        with pytest.raises(TooManyLoginAttempts) as info:
            login(world, "alice", "wrong-password", "c")
        waits.append(info.value.retry_after)
        world.clock.advance(info.value.retry_after)
    assert waits == [15 * 60, 30 * 60, 60 * 60]
    # A day later the past is forgotten: the next lockout is 15 minutes again.
    world.clock.advance(24 * 3600)
    world.auth.purge_sessions()
    fail(world, "alice", "c", 5)
    with pytest.raises(TooManyLoginAttempts) as info:
        login(world, "alice", "password-alice", "c")
    assert info.value.retry_after == 15 * 60


def test_failures_spread_out_do_not_lock(world: World) -> None:
    """Four failures, a quarter of an hour, four more: never five within the window."""
    fail(world, "alice", "c", 4)
    world.clock.advance(15 * 60)
    fail(world, "alice", "c", 4)
    login(world, "alice", "password-alice", "c")


def test_a_success_clears_only_its_own_pair(world: World) -> None:
    """The right password resets its own pair's count only: not another username's from the
    same address, nor the address's count (an attacker cannot wipe it by logging in to an
    account of their own)."""
    fail(world, "bob", "c", 4)
    fail(world, "alice", "c", 4)
    login(world, "alice", "password-alice", "c")
    fail(world, "alice", "c", 4)  # counted from zero again: 4 < 5
    login(world, "alice", "password-alice", "c")
    fail(world, "bob", "c")  # bob's fifth
    with pytest.raises(TooManyLoginAttempts):
        login(world, "bob", "password-bob", "c")
    for i in range(14):  # 5 of bob + 14 = 19 from the address
        fail(world, f"user{i}", "c")
    login(world, "alice", "password-alice", "c")
    fail(world, "user99", "c")  # the twentieth
    with pytest.raises(TooManyLoginAttempts):
        login(world, "admin", "password-admin", "c")


def test_one_address_guessing_many_usernames_is_locked_out_for_all(world: World) -> None:
    """Twenty failures from one address across usernames lock that address out for every
    username, the right password included; other addresses are not affected."""
    for i in range(20):
        fail(world, f"user{i}", "6.6.6.6")
    with pytest.raises(TooManyLoginAttempts) as info:
        login(world, "alice", "password-alice", "6.6.6.6")
    assert info.value.retry_after == 15 * 60
    login(world, "alice", "password-alice", "1.2.3.4")


def test_an_ipv6_client_is_counted_by_its_64_network(world: World) -> None:
    """Hopping between addresses of one /64 does not escape the count; another /64 is
    another client."""
    for i in range(5):
        fail(world, "alice", f"2001:db8:1:2::{i + 1}")
    with pytest.raises(TooManyLoginAttempts):
        login(world, "alice", "password-alice", "2001:db8:1:2:ffff::9")
    login(world, "alice", "password-alice", "2001:db8:1:3::1")


def test_a_disabled_user_cannot_log_in_and_loses_sessions(world: World) -> None:
    """Disabling ends the user's sessions at once; their right password is then refused as
    any wrong one is."""
    token = login(world, "alice", "password-alice")
    world.users.update_user(world.admin, "alice", UserUpdate(disabled=True))
    with pytest.raises(AuthenticationRequired):
        world.auth.authenticate(token)
    with pytest.raises(InvalidCredentials):
        login(world, "alice", "password-alice")
    world.users.update_user(world.admin, "alice", UserUpdate(disabled=False))
    login(world, "alice", "password-alice")


def test_a_user_keeps_at_most_max_sessions(world: World) -> None:
    """Beyond the cap a login ends the user's oldest session; the others keep working."""
    world.auth.policy = attrs.evolve(world.auth.policy, max_sessions=3)
    tokens = []
    for _ in range(5):
        tokens.append(login(world, "alice", "password-alice"))
        world.clock.advance(1)
    alive = []
    for token in tokens:
        try:
            world.auth.authenticate(token)
            alive.append(token)
        except AuthenticationRequired:
            pass
    assert alive == tokens[2:]


def test_changing_ones_password_checks_the_current_one(world: World) -> None:
    """The current password must be right (a wrong one counts as a failed login, so a stolen
    session cannot guess it); the new one works, the old one no longer, and every other
    session of the user ends while the one used stays."""
    here = login(world, "alice", "password-alice", "10.0.0.1")
    elsewhere = login(world, "alice", "password-alice", "10.0.0.2")
    actor = world.auth.authenticate(here, "10.0.0.1")
    with pytest.raises(WrongPassword):
        world.auth.change_password(
            actor, PasswordChange(current_password="nope", new_password="new-password"), here
        )
    ended = world.auth.change_password(
        actor,
        PasswordChange(current_password="password-alice", new_password="new-password"),
        here,
    )
    assert ended == 1
    world.auth.authenticate(here)
    with pytest.raises(AuthenticationRequired):
        world.auth.authenticate(elsewhere)
    with pytest.raises(InvalidCredentials):
        login(world, "alice", "password-alice", "10.0.0.3")
    login(world, "alice", "new-password", "10.0.0.3")
    for _ in range(5):
        with pytest.raises(WrongPassword):
            world.auth.change_password(
                actor, PasswordChange(current_password="x", new_password="new-password2"), here
            )
    with pytest.raises(TooManyLoginAttempts):
        world.auth.change_password(
            actor, PasswordChange(current_password="new-password", new_password="n3w-pass"), here
        )


def test_logins_are_audited_with_address_and_outcome(world: World) -> None:
    """A refused and an accepted login, and a logout, are recorded newest first; a throttled
    attempt (no password check) is not."""
    fail(world, "alice", "10.0.0.9", 5)
    with pytest.raises(TooManyLoginAttempts):
        login(world, "alice", "password-alice", "10.0.0.9")
    token = login(world, "alice", "password-alice", "10.0.0.1")
    world.auth.logout(token, "10.0.0.1")
    events, _ = world.audit.page(world.admin, Page(limit=10))
    got = [(e.action, e.actor, e.address, e.target, e.outcome) for e in events]
    assert got[:2] == [
        ("logout", "alice", "10.0.0.1", "alice", "ok"),
        ("login", "alice", "10.0.0.1", "alice", "ok"),
    ]
    assert got[2:7] == [("login", "alice", "10.0.0.9", "alice", "refused")] * 5
    assert len(got) == 7


def test_only_admins_create_users(world: World) -> None:
    """A non-admin gets AdminRequired; an admin creates a user who can log in."""
    with pytest.raises(AdminRequired):
        world.auth.create_user(
            world.alice, NewUser(username="carol", password="password-carol", is_admin=False)
        )
    world.auth.create_user(
        world.admin, NewUser(username="carol", password="password-carol", is_admin=False)
    )
    world.auth.login(Credentials(username="carol", password="password-carol"), "c")
    with pytest.raises(UserExists):
        world.auth.create_user(
            world.admin, NewUser(username="carol", password="password-other", is_admin=False)
        )


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("", "long-enough"),
        ("a b", "long-enough"),
        ("x" * 65, "long-enough"),
        ("ok", "short"),
        ("ok", "x" * 1025),
        (None, "long-enough"),
        ("ok", 12345678),
    ],
)
def test_bad_usernames_and_passwords_are_refused(
    world: World, username: object, password: object
) -> None:
    """Usernames of 1-64 safe characters and passwords of 8-1024 characters only."""
    with pytest.raises(InvalidCredentialsFormat):
        world.auth.create_user(
            world.admin, NewUser(username=username, password=password, is_admin=False)
        )


def test_bootstrap_creates_admin_once(world: World) -> None:
    """With users present nothing happens; on an empty store admin gets a generated password."""
    assert world.auth.bootstrap_admin(None) is None
    from tests.unit.conftest import make_world

    fresh = make_world()
    fresh.repo = type(fresh.repo)()
    fresh.auth.repo = fresh.repo
    generated = fresh.auth.bootstrap_admin(None)
    assert generated is not None and len(generated) >= 16
    _, user = fresh.auth.login(Credentials(username="admin", password=generated), "c")
    assert user.is_admin


def test_parallel_guesses_cannot_exceed_the_limit(world: World) -> None:
    """Twenty wrong logins at once: at most five passwords are checked, the rest get 429."""
    import threading

    checked = []
    real_verify = world.auth.hasher.verify

    def slow_verify(h: str, p: str) -> bool:
        checked.append(p)
        return real_verify(h, p)

    world.auth.hasher.verify = slow_verify  # type: ignore[method-assign]
    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def guess(i: int) -> None:
        barrier.wait()
        try:
            world.auth.login(
                Credentials.from_json({"username": "alice", "password": f"wrong-{i}"}), "c"
            )
        except (InvalidCredentials, TooManyLoginAttempts) as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(checked) == 5
    assert outcomes.count("TooManyLoginAttempts") == 15


def test_many_parallel_correct_logins_all_succeed(world: World) -> None:
    """Fifty people logging in at once from one address are all let in (no false 429)."""
    import threading

    tokens: list[str] = []
    barrier = threading.Barrier(50)

    def log_in() -> None:
        barrier.wait()
        tokens.append(
            world.auth.login(Credentials(username="alice", password="password-alice"), "10.0.0.1")[
                0
            ]
        )

    threads = [threading.Thread(target=log_in) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(tokens)) == 50


def test_a_disabled_owners_tasks_fire_nothing(world: World) -> None:
    """While alice is disabled her cron task's occurrences are recorded as skipped (one record
    counting them) and nothing runs; enabled again, the next occurrence runs."""
    world.envs.create(world.alice, NewEnvironment(name="e1"))
    created = world.tasks.create_task(
        world.alice,
        NewTask(script="print(1)", conda_env="e1", cron_expression="* * * * *"),
    )
    task_id = created.task.id
    world.users.update_user(world.admin, "alice", UserUpdate(disabled=True))
    for _ in range(3):
        world.clock.advance(60)
        world.scheduler.tick()
    assert world.runner.started == []
    [skipped] = world.repo.list_executions(task_id)
    assert skipped.status is ExecutionStatus.SKIPPED and skipped.skip_count == 3
    assert skipped.note == "skipped: the task's owner is disabled"
    world.users.update_user(world.admin, "alice", UserUpdate(disabled=False))
    world.clock.advance(60)
    world.scheduler.tick()
    assert len(world.runner.wait_started(1)) == 1


def test_a_wrong_current_password_is_audited(world: World) -> None:
    """A refused password change is in the audit log, as a refused login is."""
    token = login(world, "alice", "password-alice", "10.0.0.1")
    actor = world.auth.authenticate(token, "10.0.0.1")
    with pytest.raises(WrongPassword):
        world.auth.change_password(
            actor, PasswordChange(current_password="nope", new_password="new-password"), token
        )
    events, _ = world.audit.page(world.admin, Page(limit=1))
    [event] = events
    assert (event.action, event.actor, event.address, event.outcome) == (
        "user.password",
        "alice",
        "10.0.0.1",
        "refused",
    )
