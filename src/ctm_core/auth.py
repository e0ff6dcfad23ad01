"""Authentication and permission use cases: login, sessions, users, ownership checks."""

from __future__ import annotations

import contextlib
import hashlib
import math
import secrets
import threading
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from ctm_core.commands import Credentials, NewUser, PasswordChange
from ctm_core.errors import (
    AdminRequired,
    AuthenticationRequired,
    InvalidCredentials,
    NotOwner,
    StorageUnavailable,
    TooManyLoginAttempts,
    UserExists,
    WrongPassword,
)
from ctm_core.models import Principal, Session, User, UserChange
from ctm_core.ports import Clock, PasswordHasher, Repository
from ctm_core.throttle import client_key, lockout_end

if TYPE_CHECKING:
    from ctm_core.audit import AuditLog

ADMIN_USERNAME = "admin"


@attrs.frozen(kw_only=True)
class AuthPolicy:
    idle_timeout: timedelta = timedelta(minutes=15)
    touch_every: timedelta = timedelta(seconds=60)
    """A session's last use is written at most this often: idle expiry is exact to within it."""
    absolute_lifetime: timedelta = timedelta(hours=12)
    max_failures: int = 5
    """Failures of one (username, address) pair within ``failure_window`` that lock it out."""
    address_max_failures: int = 20
    """Failures from one address, whatever the usernames, that lock the address out."""
    failure_window: timedelta = timedelta(minutes=15)
    """The window of those counts, and the first lockout's length (each next one is twice the
    one before, at most ``max_lockout``)."""
    failure_memory: timedelta = timedelta(hours=24)
    """How long failures are kept (and lockouts keep growing)."""
    max_lockout: timedelta = timedelta(hours=24)
    max_sessions: int = 20
    """Live sessions one user may have: a new login ends the oldest beyond it."""


def hash_token(token: str) -> str:
    """The only form of a session token the repository ever sees."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def principal_of(user: User, address: str | None = None) -> Principal:
    return Principal(
        user_id=user.id, username=user.username, is_admin=user.is_admin, address=address
    )


@attrs.define
class Authenticator:
    """Login, logout, session checks, password changes and user creation, over the ports they
    need. Password checks run in parallel (the caller bounds how many: the HTTP edge to the
    cores); each is counted against its (username, address) pair and its address before it
    starts, so parallel guesses cannot slip past a limit."""

    repo: Repository
    hasher: PasswordHasher
    clock: Clock
    policy: AuthPolicy = attrs.field(factory=AuthPolicy)
    audit: AuditLog | None = None
    _guard: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _checking: Counter[tuple[str, str]] = attrs.field(init=False, factory=Counter)
    """Password checks under way per (username, address key), each counted as a failure."""

    def login(self, credentials: Credentials, client: str) -> tuple[str, Principal]:
        """Check the credentials and open a session; return the cookie token and the user.

        Raises ``TooManyLoginAttempts`` while the (username, address) pair or the address is
        locked out (``AuthPolicy``; no password check then), and ``InvalidCredentials`` alike
        for an unknown user, a disabled one and a wrong password (with a dummy hash check for
        an unknown user, so all take about the same time).
        """
        name = credentials.username[:64]
        user = self._check_password(name, credentials.password, client)
        if user is None:
            self._record(name, "login", name, client, outcome="refused")
            raise InvalidCredentials()
        now = self.clock.now()
        token = secrets.token_urlsafe(32)
        self.repo.add_session(
            Session(
                token_hash=hash_token(token), user_id=user.id, created_at=now, last_seen_at=now
            ),
            max_per_user=self.policy.max_sessions,
        )
        self._record(user.username, "login", user.username, client)
        return token, principal_of(user, client)

    def _check_password(self, name: str, password: str, client: str) -> User | None:
        """The enabled user ``name`` when ``password`` is theirs, else None (the failure is
        booked for the pair and the address). Raises ``TooManyLoginAttempts`` without checking
        while either is locked out."""
        key = (name, client_key(client))
        with self._guard:
            now = self.clock.now()
            self._refuse_if_locked_out(key, now)
            self._checking[key] += 1
        try:
            user = self.repo.get_user_by_name(name) if name else None
            ok = False
            if isinstance(password, str) and 0 < len(password) <= 1024:
                if user is None:
                    self.hasher.dummy_verify(password)
                else:
                    ok = self.hasher.verify(user.password_hash, password)
            if not ok or user is None or user.disabled:
                self.repo.add_login_failure(username=name, client=key[1], at=now)
                return None
        finally:
            with self._guard:
                self._checking[key] -= 1
                if not self._checking[key]:
                    del self._checking[key]
        self.repo.clear_login_failures(username=name, client=key[1])
        return user

    def _refuse_if_locked_out(self, key: tuple[str, str], now: datetime) -> None:
        name, address = key
        p = self.policy
        failures = self.repo.login_failures_of_client(client=address, since=now - p.failure_memory)
        in_flight = [now] * sum(n for (_, a), n in self._checking.items() if a == address)
        pair = [at for at, who in failures if who == name] + [now] * self._checking[key]
        ends = (
            lockout_end(pair, limit=p.max_failures, window=p.failure_window, cap=p.max_lockout),
            lockout_end(
                [at for at, _ in failures] + in_flight,
                limit=p.address_max_failures,
                window=p.failure_window,
                cap=p.max_lockout,
            ),
        )
        until = max((end for end in ends if end is not None), default=None)
        if until is not None and until > now:
            raise TooManyLoginAttempts(max(1, math.ceil((until - now).total_seconds())))

    def authenticate(self, token: str | None, client: str | None = None) -> Principal:
        """The user behind a session token, renewing its idle timer (best effort: a renewal
        that cannot be written, on a full disk, does not fail the request).

        Raises ``AuthenticationRequired`` for a missing, unknown, idle-expired or too old
        session, and one of a disabled or deleted user.
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
            self._forget_session(token_hash)
            raise AuthenticationRequired()
        user = self.repo.get_user(session.user_id)
        if user is None or user.disabled:
            self._forget_session(token_hash)
            raise AuthenticationRequired()
        if now - session.last_seen_at >= self.policy.touch_every:
            with contextlib.suppress(StorageUnavailable):  # a write at most once a minute
                self.repo.touch_session(token_hash, now)
        return principal_of(user, client)

    def _forget_session(self, token_hash: str) -> None:
        with contextlib.suppress(StorageUnavailable):  # it is refused either way
            self.repo.delete_session(token_hash)

    def logout(self, token: str | None, client: str | None = None) -> None:
        """End the session if there is one. Idempotent."""
        if not token or len(token) > 256:
            return
        token_hash = hash_token(token)
        session = self.repo.get_session(token_hash)
        self.repo.delete_session(token_hash)
        user = None if session is None else self.repo.get_user(session.user_id)
        if user is not None:
            self._record(user.username, "logout", user.username, client)

    def change_password(self, actor: Principal, change: PasswordChange, token: str | None) -> int:
        """Change the caller's own password after checking the current one; end every other
        session of theirs (the one of ``token`` stays); return how many ended. A wrong current
        password counts as a failed login of the caller from their address: raises
        ``WrongPassword``, then ``TooManyLoginAttempts`` once locked out, and
        ``InvalidCredentialsFormat`` for a new password out of bounds."""
        change = change.checked()
        address = actor.address or "unknown"
        user = self._check_password(actor.username, change.current_password, address)
        if user is None or user.id != actor.user_id:
            self._record(actor, "user.password", actor.username, outcome="refused")
            raise WrongPassword()
        keep = hash_token(token) if token else None
        _, ended = self.repo.update_user(
            user.id,
            UserChange(password_hash=self.hasher.hash(change.new_password)),
            keep_session=keep,
        )
        self._record(actor, "user.password", user.username, sessions_ended=ended)
        return ended

    def purge_sessions(self) -> int:
        """Delete sessions that can no longer be used, and login failures past memory."""
        now = self.clock.now()
        self.repo.delete_login_failures_before(now - self.policy.failure_memory)
        return self.repo.delete_sessions_before(
            idle_before=now - self.policy.idle_timeout,
            created_before=now - self.policy.absolute_lifetime,
        )

    def _record(
        self,
        actor: Principal | str,
        action: str,
        target: str,
        address: str | None = None,
        outcome: str = "ok",
        **detail: Any,
    ) -> None:
        if self.audit is not None:
            self.audit.record(actor, action, target, address=address, outcome=outcome, **detail)

    def create_user(self, actor: Principal, command: NewUser) -> User:
        """Add a user. Only admins may. Raises ``AdminRequired``, ``InvalidCredentialsFormat``
        and ``UserExists``."""
        require_admin(actor)
        user = self.add_user(command)
        self._record(actor, "user.create", user.username, is_admin=user.is_admin)
        return user

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
