"""Login, sessions, throttling and user creation in the core, with fakes."""

from __future__ import annotations

import pytest

from ctm_core.auth import hash_token
from ctm_core.commands import Credentials, NewUser
from ctm_core.errors import (
    AdminRequired,
    AuthenticationRequired,
    InvalidCredentials,
    InvalidCredentialsFormat,
    TooManyLoginAttempts,
    UserExists,
)
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


def test_sixth_failure_in_a_row_is_throttled_with_retry_after(world: World) -> None:
    """Five wrong passwords, then 429-style refusal even with the right password."""
    for _ in range(5):
        with pytest.raises(InvalidCredentials):
            world.auth.login(Credentials(username="alice", password="wrong-password"), "c")
    with pytest.raises(TooManyLoginAttempts) as info:
        world.auth.login(Credentials(username="alice", password="password-alice"), "c")
    assert 0 < info.value.retry_after <= 15 * 60 + 1
    world.clock.advance(info.value.retry_after)
    world.auth.login(Credentials(username="alice", password="password-alice"), "c")


def test_throttling_counts_failures_per_client_address_too(world: World) -> None:
    """One address guessing many usernames is slowed down as well."""
    for i in range(5):
        with pytest.raises(InvalidCredentials):
            world.auth.login(
                Credentials.from_json({"username": f"user{i}", "password": "wrong-password"}),
                "6.6.6.6",
            )
    with pytest.raises(TooManyLoginAttempts):
        world.auth.login(Credentials(username="alice", password="password-alice"), "6.6.6.6")
    world.auth.login(Credentials(username="alice", password="password-alice"), "1.2.3.4")


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
