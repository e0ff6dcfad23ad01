"""User administration: list, change (admin, disabled, password) and delete users. Admins only.

The rules that two admins acting at once could break (the last enabled admin stays; a user who
owns tasks is not deleted) are checked by the repository in the transaction of the change.
Disabling a user or setting their password ends every session of theirs at once.
"""

from __future__ import annotations

from typing import Any

import attrs

from ctm_core.audit import AuditLog
from ctm_core.auth import require_admin
from ctm_core.commands import UserUpdate
from ctm_core.errors import UserNotFound
from ctm_core.models import Principal, User, UserChange
from ctm_core.ports import PasswordHasher, Repository

OPERATOR = Principal(user_id=0, username="(server CLI)", is_admin=True, address="local")
"""The operator of ``ctm user ...`` on the server's machine: an admin, who can read and change
the data directory anyway. The audit log shows their changes as made by ``(server CLI)``."""


@attrs.frozen(kw_only=True)
class UserView:
    """A user as an admin sees them: with how many live sessions they have."""

    user: User
    sessions: int


@attrs.define
class UserAdmin:
    repo: Repository
    hasher: PasswordHasher
    audit: AuditLog | None = None

    def list_users(self, actor: Principal) -> list[UserView]:
        """Every user by name. Raises ``AdminRequired``."""
        require_admin(actor)
        counts = self.repo.count_sessions_by_user()
        users = sorted(self.repo.list_users(), key=lambda u: u.username)
        return [UserView(user=u, sessions=counts.get(u.id, 0)) for u in users]

    def get_user(self, actor: Principal, username: str) -> UserView:
        """One user. Raises ``AdminRequired`` and ``UserNotFound``."""
        require_admin(actor)
        user = self._find(username)
        return UserView(user=user, sessions=self._sessions(user))

    def update_user(
        self, actor: Principal, username: str, update: UserUpdate
    ) -> tuple[UserView, int]:
        """Make ``username`` admin or not, disable or enable them, set their password; return
        the user and how many sessions ended (disabling and a new password end them all).
        Raises ``AdminRequired``, ``UserNotFound``, ``LastAdmin`` (the last enabled admin
        demoted or disabled) and the ``InvalidInput`` family."""
        require_admin(actor)
        update = update.checked()
        user = self._find(username)
        change = UserChange(
            is_admin=update.is_admin,
            disabled=update.disabled,
            password_hash=None if update.password is None else self.hasher.hash(update.password),
        )
        updated, ended = self.repo.update_user(user.id, change)
        if self.audit is not None:
            detail: dict[str, Any] = {"sessions_ended": ended}
            if update.is_admin is not None:
                detail["is_admin"] = update.is_admin
            if update.disabled is not None:
                detail["disabled"] = update.disabled
            if update.password is not None:
                detail["password_set"] = True
            self.audit.record(actor, "user.update", user.username, **detail)
        return UserView(user=updated, sessions=self._sessions(updated)), ended

    def delete_user(self, actor: Principal, username: str) -> None:
        """Delete ``username`` and their sessions; the environments they own become owned by
        no one (admins manage them). Raises ``AdminRequired``, ``UserNotFound``, ``LastAdmin``
        and ``UserOwnsTasks`` (delete or hand over the tasks first, or disable the user)."""
        require_admin(actor)
        user = self._find(username)
        self.repo.delete_user(user.id)
        if self.audit is not None:
            self.audit.record(actor, "user.delete", user.username)

    def _find(self, username: str) -> User:
        user = self.repo.get_user_by_name(username) if isinstance(username, str) else None
        if user is None:
            raise UserNotFound(str(username)[:64])
        return user

    def _sessions(self, user: User) -> int:
        return self.repo.count_sessions_by_user().get(user.id, 0)
