"""Authentication and permission use cases: login, sessions, users, ownership checks."""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
from datetime import timedelta

import attrs

from ctm_core.commands import Credentials, NewUser
from ctm_core.errors import (
    AdminRequired,
    AuthenticationRequired,
    InvalidCredentials,
    NotOwner,
    TooManyLoginAttempts,
    UserExists,
)
from ctm_core.models import Principal, Session, User
from ctm_core.ports import Clock, PasswordHasher, Repository

ADMIN_USERNAME = "admin"


@attrs.frozen(kw_only=True)
class AuthPolicy:
    idle_timeout: timedelta = timedelta(minutes=15)
    touch_every: timedelta = timedelta(seconds=60)
    """A session's last use is written at most this often: idle expiry is exact to within it."""
    absolute_lifetime: timedelta = timedelta(hours=12)
    max_failures: int = 5
    failure_window: timedelta = timedelta(minutes=15)


def hash_token(token: str) -> str:
    """The only form of a session token the repository ever sees."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _principal(user: User) -> Principal:
    return Principal(user_id=user.id, username=user.username, is_admin=user.is_admin)


@attrs.define
class Authenticator:
    """Login, logout, session checks and user creation, over the ports they need."""

    repo: Repository
    hasher: PasswordHasher
    clock: Clock
    policy: AuthPolicy = attrs.field(factory=AuthPolicy)
    _attempts: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def login(self, credentials: Credentials, client: str) -> tuple[str, Principal]:
        """Check the credentials and open a session; return the cookie token and the user.

        Raises ``TooManyLoginAttempts`` once ``max_failures`` failures for this username or client
        fall within the window, and ``InvalidCredentials`` alike for unknown user and wrong
        password (with a dummy hash check, so both take about the same time).
        """
        name, password = credentials.username, credentials.password
        # One check at a time: the count, the slow hash check and the booking of a failure
        # happen together, so parallel guesses cannot slip past the limit. Blocked attempts
        # answer at once, without a hash check.
        with self._attempts:
            now = self.clock.now()
            since = now - self.policy.failure_window
            failures = self.repo.login_failures_since(
                username=name[:64], client=client, since=since
            )
            if len(failures) >= self.policy.max_failures:
                # The block lifts when enough failures have left the window.
                release = sorted(failures)[len(failures) - self.policy.max_failures]
                wait = (release + self.policy.failure_window - now).total_seconds()
                raise TooManyLoginAttempts(max(1, math.floor(wait) + 1))
            user = self.repo.get_user_by_name(name) if name else None
            ok = False
            if isinstance(password, str) and 0 < len(password) <= 1024:
                if user is None:
                    self.hasher.dummy_verify(password)
                else:
                    ok = self.hasher.verify(user.password_hash, password)
            if not ok or user is None:
                self.repo.add_login_failure(username=name[:64], client=client, at=now)
                raise InvalidCredentials()
        self.repo.clear_login_failures(username=name)
        token = secrets.token_urlsafe(32)
        self.repo.add_session(
            Session(token_hash=hash_token(token), user_id=user.id, created_at=now, last_seen_at=now)
        )
        return token, _principal(user)

    def authenticate(self, token: str | None) -> Principal:
        """The user behind a session token, renewing its idle timer.

        Raises ``AuthenticationRequired`` for a missing, unknown, idle-expired or too old session.
        """
        if not token or len(token) > 256:
            raise AuthenticationRequired()
        token_hash = hash_token(token)
        session = self.repo.get_session(token_hash)
        now = self.clock.now()
        if session is None:
            raise AuthenticationRequired()
        if (
            now - session.last_seen_at >= self.policy.idle_timeout
            or now - session.created_at >= self.policy.absolute_lifetime
        ):
            self.repo.delete_session(token_hash)
            raise AuthenticationRequired()
        user = self.repo.get_user(session.user_id)
        if user is None:
            self.repo.delete_session(token_hash)
            raise AuthenticationRequired()
        if now - session.last_seen_at >= self.policy.touch_every:
            self.repo.touch_session(token_hash, now)  # a write at most once a minute a session
        return _principal(user)

    def logout(self, token: str | None) -> None:
        """End the session if there is one. Idempotent."""
        if token and len(token) <= 256:
            self.repo.delete_session(hash_token(token))

    def purge_sessions(self) -> int:
        """Delete sessions that can no longer be used."""
        now = self.clock.now()
        return self.repo.delete_sessions_before(
            idle_before=now - self.policy.idle_timeout,
            created_before=now - self.policy.absolute_lifetime,
        )

    def create_user(self, actor: Principal, command: NewUser) -> User:
        """Add a user. Only admins may. Raises ``AdminRequired``, ``InvalidCredentialsFormat``
        and ``UserExists``."""
        require_admin(actor)
        return self.add_user(command)

    def add_user(self, command: NewUser) -> User:
        """Add a user without a permission check (CLI, bootstrap)."""
        command = command.checked()
        if self.repo.get_user_by_name(command.username) is not None:
            raise UserExists(command.username)
        return self.repo.add_user(
            username=command.username,
            password_hash=self.hasher.hash(command.password),
            is_admin=command.is_admin,
            created_at=self.clock.now(),
        )

    def bootstrap_admin(self, password: str | None) -> str | None:
        """On a first start (no users), create ``admin``. Return the generated password when none
        was given, ``None`` otherwise (or when users already exist)."""
        if self.repo.count_users() > 0:
            return None
        generated = None
        if not password:
            generated = password = secrets.token_urlsafe(18)
        self.add_user(NewUser(username=ADMIN_USERNAME, password=password, is_admin=True))
        return generated


def require_user(repo: Repository, actor: Principal) -> None:
    """Before a change that records ``actor`` as an owner: the actor must be a stored user (a
    library caller may build a ``Principal`` by hand). Raises ``AuthenticationRequired``."""
    user = repo.get_user(actor.user_id)
    if user is None or user.username != actor.username:
        raise AuthenticationRequired()


def require_admin(actor: Principal) -> None:
    if not actor.is_admin:
        raise AdminRequired()


def require_owner(actor: Principal, owner_id: int | None, action: str) -> None:
    """Admins may change anything; others only what they own. Raises ``NotOwner(action)``."""
    if actor.is_admin or (owner_id is not None and owner_id == actor.user_id):
        return
    raise NotOwner(action)
