"""The scheduler: fires due tasks, sleeps until the next due time or a change, prunes old runs.

It never polls with a fixed tick: it computes the earliest ``next_run_at`` and sleeps on the
Clock port until then, or until ``wake()`` says a task was added, changed or deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo

import attrs

from ctm_core.models import Execution, ExecutionStatus, Task
from ctm_core.ports import Clock, FileStore, Repository
from ctm_core.runs import RunCoordinator
from ctm_core.schedule import Zones, following_run_time, running_zone
from ctm_core.tasks import new_execution_id

FIRED_KEPT = 10_000
MAINTENANCE_EVERY = timedelta(hours=1)
RETRY_AFTER = timedelta(seconds=1)
INTERRUPTED_NOTE = "the server stopped while this run was going on; its end was not observed"


@attrs.define
class Scheduler:
    repo: Repository
    clock: Clock
    coordinator: RunCoordinator
    files: FileStore
    tz: tzinfo
    retention_days: int = 30
    zones: Zones | None = None
    """Resolves a task's own time zone (``Task.timezone``)."""
    on_maintenance: Callable[[], object] = lambda: None
    """Called with the hourly maintenance (the composition root purges expired sessions)."""
    on_error: Callable[[BaseException], object] = lambda exc: None
    """Told of an unexpected error in a tick; the loop goes on after ``RETRY_AFTER``."""
    _loop: asyncio.AbstractEventLoop | None = attrs.field(init=False, default=None)
    _wake: asyncio.Event | None = attrs.field(init=False, default=None)
    _next_maintenance: datetime | None = attrs.field(init=False, default=None)
    fired: deque[tuple[int, datetime, datetime]] = attrs.field(
        init=False, factory=lambda: deque(maxlen=FIRED_KEPT)
    )
    """(task id, due time, time fired) of the latest firings, for tests and benchmarks."""

    # --- start-up ------------------------------------------------------------------------------

    def recover(self, after_adoption: Callable[[], object] = lambda: None) -> None:
        """Resolve what a previous process left unfinished: runs that were going on are followed
        to their end when the runner can adopt them; then ``after_adoption`` is called (the
        composition root stops what could not be adopted); then the runs not adopted are marked
        failed with a line in their log saying why, and queued runs are run again."""
        unfinished = self.repo.unfinished_executions()
        queued = [e for e in unfinished if e.status is ExecutionStatus.QUEUED]
        lost = [
            e
            for e in unfinished
            if e.status is not ExecutionStatus.QUEUED and not self.coordinator.adopt(e)
        ]
        after_adoption()
        for execution in lost:
            now = self.clock.now()
            execution.status = ExecutionStatus.FAILED
            execution.end_time = now
            execution.note = INTERRUPTED_NOTE
            if execution.start_time is not None and execution.duration is None:
                execution.duration = round((now - execution.start_time).total_seconds(), 2)
            if execution.log_path:
                self.files.append_log(execution.log_path, f"[ctm: {INTERRUPTED_NOTE}]")
            # Its task's state follows only when nothing newer ran meanwhile; an end the store
            # refuses now (disk full) is written again later, as any run's.
            self.coordinator.record_lost_end(execution)
        for execution in queued:
            self.coordinator.launch(execution.task_id, execution.id)

    # --- the loop ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Re-read the schedule now (thread-safe)."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)

    async def run(self) -> None:
        """Fire due tasks forever. Cancel the task running this to stop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            try:
                next_due = await asyncio.to_thread(self.tick)
            except Exception as exc:  # one bad tick must never end scheduling for good
                self.on_error(exc)
                next_due = self.clock.now() + RETRY_AFTER
            sleeper = asyncio.ensure_future(self.clock.sleep_until(next_due))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    def tick(self) -> datetime:
        """Fire every due task; return when the loop must look again."""
        now = self.clock.now()
        if self._next_maintenance is None or now >= self._next_maintenance:
            self.maintenance()
            self._next_maintenance = now + MAINTENANCE_EVERY
        for task in self.repo.due_tasks(now):
            self.fire(task, now)
        next_due: datetime = self._next_maintenance
        earliest = self.repo.earliest_next_run()
        return next_due if earliest is None else min(next_due, earliest)

    def fire(self, task: Task, now: datetime) -> bool:
        """Run one due occurrence of ``task`` (as read) and move its schedule on. While the task
        still runs, or while its owner is disabled, the occurrence is recorded as skipped
        instead: consecutive skips share one record, which counts them. The repository claims
        the occurrence (compare-and-set on ``next_run_at``): False when another firing, a
        change or a delete came first."""
        due = task.next_run_at
        if due is None or due > now:
            return False
        skip = None
        if self.coordinator.is_active(task.id):
            skip = "skipped: the previous run was still going on"
        elif task.owner_id is not None and self._owner_disabled(task.owner_id):
            skip = "skipped: the task's owner is disabled"
        busy = skip is not None
        execution = Execution(
            id=new_execution_id(),
            task_id=task.id,
            status=ExecutionStatus.SKIPPED if busy else ExecutionStatus.QUEUED,
            scheduled_for=due,
            note=skip,
        )
        if busy:
            execution.start_time = execution.end_time = now
            execution.skip_count = 1
            execution.first_skipped_at = execution.last_skipped_at = due
        tz = running_zone(task.timezone, self.zones, self.tz)
        following = following_run_time(task.cron_expression, due, now, tz)
        if self.repo.claim_occurrence(execution, due=due, next_run_at=following) is None:
            return False
        self.fired.append((task.id, due, now))
        if not busy:
            self.coordinator.launch(task.id, execution.id, owner_id=task.owner_id)
        return True

    def _owner_disabled(self, owner_id: int) -> bool:
        """A disabled user's tasks fire nothing (their occurrences are recorded as skipped);
        a deleted owner's tasks run on (only admins can change them then)."""
        owner = self.repo.get_user(owner_id)
        return owner is not None and owner.disabled

    def maintenance(self) -> None:
        """Prune executions and logs past the retention period (and, through
        ``on_maintenance``, dead sessions, old login failures and audit events)."""
        self.on_maintenance()
        if self.retention_days > 0:
            before = self.clock.now() - timedelta(days=self.retention_days)
            self.files.delete(self.repo.prune_executions(before))
