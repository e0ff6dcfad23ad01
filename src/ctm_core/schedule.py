"""When tasks run: cron parsing, next run times and the misfire rule. Pure computation.

Cron expressions are read by croniter in the server's time zone: 5 fields, ``@hourly``-style
macros, or 6 fields with seconds last. All datetimes in and out are aware; results are UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo

from croniter import croniter

from ctm_core.errors import InvalidCronExpression, InvalidDelay, InvalidInput, ScheduleConflict

MAX_CRON_LENGTH = 200
MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600


def validate_cron(expression: object) -> str:
    """Return the expression when croniter accepts it; else ``InvalidCronExpression`` with
    croniter's own message."""
    if not isinstance(expression, str):
        raise InvalidCronExpression("expression must be a string")
    expr = expression.strip()
    if not expr or len(expr) > MAX_CRON_LENGTH:
        raise InvalidCronExpression("expression must be 1-200 characters")
    if not expr.startswith("@") and len(expr.split()) not in (5, 6):
        raise InvalidCronExpression(
            f"expected 5 fields (or 6 with seconds last), got {len(expr.split())}"
        )
    try:
        itr = croniter(expr, datetime(2000, 1, 1, tzinfo=UTC))
        itr.get_next(datetime)
    except Exception as exc:  # croniter raises several unrelated types for bad input
        raise InvalidCronExpression(str(exc) or type(exc).__name__) from None
    return expr


def validate_delay(delay: object) -> float:
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise InvalidDelay()
    try:
        value = float(delay)
    except OverflowError:  # a JSON integer beyond any float
        raise InvalidInput(
            "delay_seconds", f"'delay_seconds' must be at most {MAX_DELAY_SECONDS}"
        ) from None
    if value != value or value < 0:
        raise InvalidDelay()
    if value > MAX_DELAY_SECONDS:
        raise InvalidInput("delay_seconds", f"'delay_seconds' must be at most {MAX_DELAY_SECONDS}")
    return value


def validate_schedule(cron: object, delay: object) -> tuple[str | None, float | None]:
    """Both given: ``ScheduleConflict``; then each is validated on its own."""
    if cron is not None and delay is not None:
        raise ScheduleConflict()
    return (
        validate_cron(cron) if cron is not None else None,
        validate_delay(delay) if delay is not None else None,
    )


def next_cron_time(expression: str, after: datetime, tz: tzinfo) -> datetime:
    """The first occurrence strictly after ``after``, in UTC."""
    itr = croniter(expression, after.astimezone(tz))
    nxt: datetime = itr.get_next(datetime)
    if nxt.tzinfo is None:
        nxt = nxt.replace(tzinfo=tz)
    return nxt.astimezone(UTC)


def first_run_time(now: datetime, cron: str | None, delay: float | None, tz: tzinfo) -> datetime:
    """When a new task first runs: now, after its delay, or at its next cron occurrence."""
    if cron is not None:
        return next_cron_time(cron, now, tz)
    if delay is not None:
        return now + timedelta(seconds=delay)
    return now


Zones = Callable[[str], tzinfo]
"""Resolves an IANA zone name (raises ``LookupError`` or ``ValueError`` for an unknown one)."""


def task_zone(name: str | None, zones: Zones | None, default: tzinfo) -> tzinfo:
    """The zone a task's cron expression is read in: its own, else ``default`` (the server's).
    Raises ``InvalidInput`` (``timezone``) for a name ``zones`` does not know."""
    if name is None:
        return default
    if zones is None:
        raise InvalidInput("timezone", "This server has no time zone database")
    try:
        return zones(name)
    except (LookupError, ValueError, OSError):
        raise InvalidInput("timezone", f"Unknown time zone '{name}'") from None


def running_zone(name: str | None, zones: Zones | None, default: tzinfo) -> tzinfo:
    """The zone a stored task's cron is read in: ``task_zone``, or ``default`` when the zone
    left the zone database since the task was created."""
    try:
        return task_zone(name, zones, default)
    except InvalidInput:
        return default


def following_run_time(
    cron: str | None, scheduled_for: datetime, now: datetime, tz: tzinfo
) -> datetime | None:
    """After a run due at ``scheduled_for`` fired at ``now``: when the task runs next.

    One-shots never run again (``None``). A cron task continues with the occurrence after the
    one that fired; when that one is already past too (the server was down or busy), the missed
    occurrences are folded into the run that just fired, and the next is the first after ``now``.
    """
    if cron is None:
        return None
    nxt = next_cron_time(cron, scheduled_for, tz)
    if nxt <= now:
        nxt = next_cron_time(cron, now, tz)
    return nxt
