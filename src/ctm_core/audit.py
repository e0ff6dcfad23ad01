"""The audit log: who did what to which user, environment or task, from where, and when.

Every login (accepted or refused after a password check), user change, environment change and
task change is recorded by the use case that made it, after it was made. Recording is best
effort: a change that was made is never reported as failed because its record could not be
written (a full disk); the failure goes to ``on_error`` (the server's log) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import attrs

from ctm_core.auth import require_admin
from ctm_core.commands import Page
from ctm_core.errors import CtmError, InvalidInput, PackageOperationFailed
from ctm_core.models import AuditEvent, Principal
from ctm_core.ports import Clock, Repository

ACTIONS = (
    "login",
    "logout",
    "user.create",
    "user.update",
    "user.delete",
    "user.password",
    "token.create",
    "token.delete",
    "environment.create",
    "environment.rename",
    "environment.install",
    "environment.remove",
    "environment.delete",
    "environment.requirements",
    "task.create",
    "task.stop",
    "task.pause",
    "task.resume",
    "task.run",
    "task.delete",
)
"""Every ``action`` an event may have."""


def _ignore(exc: Exception) -> None:
    pass


@attrs.define
class AuditLog:
    repo: Repository
    clock: Clock
    on_error: Callable[[Exception], None] = _ignore

    def record(
        self,
        actor: Principal | str | None,
        action: str,
        target: str,
        *,
        address: str | None = None,
        outcome: str = "ok",
        **detail: Any,
    ) -> None:
        """Record one event. ``actor`` is the caller (its address is taken from it), a username
        (a login), or None (ctm itself, or the CLI on the server)."""
        assert action in ACTIONS, action
        if isinstance(actor, Principal):
            address = address or actor.address
            actor = actor.username
        event = AuditEvent(
            id=0,
            at=self.clock.now(),
            actor=actor,
            address=address,
            action=action,
            target=target,
            outcome=outcome,
            detail=detail,
        )
        try:
            self.repo.add_audit_event(event)
        except (CtmError, OSError) as exc:  # StorageUnavailable: the change itself was made
            self.on_error(exc)

    def page(self, actor: Principal, page: Page) -> tuple[list[AuditEvent], str | None]:
        """Events newest first: ``page.limit`` of them, older than the event ``page.before``
        (an event id), and the ``before`` of the next page (None on the last). Admins only:
        raises ``AdminRequired``, and ``InvalidInput`` for a malformed cursor."""
        require_admin(actor)
        page = page.checked()
        before: int | None = None
        if page.before is not None:
            if not page.before.isdigit() or len(page.before) > 18:
                raise InvalidInput("before", "'before' must be an event id from a previous page")
            before = int(page.before)
        events = self.repo.audit_page(limit=page.limit + 1, before=before)
        more = len(events) > page.limit
        events = events[: page.limit]
        return events, str(events[-1].id) if more else None

    def prune(self, retention_days: int) -> int:
        """Forget events older than the retention period (0: keep all); return how many."""
        if retention_days <= 0:
            return 0
        return self.repo.prune_audit(self.clock.now() - timedelta(days=retention_days))


@contextmanager
def recorded(
    audit: AuditLog | None, actor: Principal, action: str, target: str, **detail: Any
) -> Iterator[dict[str, Any]]:
    """Record the change the block makes: ``ok`` when the block ends, ``failed`` when the
    environment tool failed (it may have changed something); nothing when it was refused before
    any change. The block may add details to the dict it is given."""
    extra: dict[str, Any] = {}
    try:
        yield extra
    except PackageOperationFailed as exc:
        if audit is not None:
            audit.record(actor, action, target, outcome="failed", **detail, error=exc.message)
        raise
    if audit is not None:
        audit.record(actor, action, target, **detail, **extra)
