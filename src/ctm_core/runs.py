"""Running executions: the global and per-user limits, waiting for environment changes,
recording results.

Runs over a limit wait and hold no thread: each user (a task's owner; ownerless tasks count as
one user) has a FIFO queue in the order the runs were due, and a free slot goes to the user
served least recently among those below their own limit, so users take turns (round-robin) and
one user's long queue delays another's next run by at most one slot. A run that gets its turn is
followed by a thread of its own, since waiting for a child blocks.

A run's end that the store cannot take (``StorageUnavailable``: disk full, read-only, I/O error)
is not lost: a thread of its own writes it again after a growing pause, until it is written.
Meanwhile the run's slot is free (its process is gone) but its task still counts as active, so
no later run of the task can be recorded before it, and a stop finds it.
"""

from __future__ import annotations

import asyncio
import enum
import posixpath
import threading
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from functools import partial

import attrs

from ctm_core.environments import KeyedLocks
from ctm_core.errors import EnvironmentNotFound, StorageUnavailable, TaskNotFound
from ctm_core.models import Execution, ExecutionStatus, RunPolicy, Task
from ctm_core.ports import (
    Clock,
    EnvironmentBackend,
    FileStore,
    ProcessRunner,
    Repository,
    RunHandle,
    RunLimits,
    RunResult,
    RunSpec,
)

MB = 1024 * 1024


class _Unknown(enum.Enum):
    UNKNOWN = enum.auto()


_UNKNOWN = _Unknown.UNKNOWN


@attrs.define(eq=False)
class _Run:
    task_id: int
    execution_id: str
    owner_id: int | None = None
    """The task's owner: whose queue the run waits in and whose running total it counts in."""
    handle: RunHandle | None = None
    stop_requested: bool = False
    shutting_down: bool = False
    detached: bool = False
    """Left going at shutdown (the runner's runs survive it): the next server records its end."""
    ended: bool = False
    """The runner reported the run's end (set under the coordinator's guard): a stop asked
    after that changes nothing, the run keeps its own outcome."""
    unsaved: StorageUnavailable | None = None
    """Why the run's end is not recorded yet (set under the guard): a thread writes it again
    until the store takes it; the run stays in ``_runs`` until then."""
    unrecorded_start: str | None = None
    """The store could not take the run's start: the run is stopped and fails with this note."""
    started: threading.Event = attrs.field(factory=threading.Event)
    done: threading.Event = attrs.field(factory=threading.Event)


def _settled(run: _Run) -> bool:
    """The run's end is recorded, or the store refused it (guard held)."""
    return run.done.is_set() or run.unsaved is not None


@attrs.define
class RunCoordinator:
    """Starts, follows and stops runs, and writes every execution when it starts and ends."""

    repo: Repository
    backend: EnvironmentBackend
    runner: ProcessRunner
    files: FileStore
    clock: Clock
    env_locks: KeyedLocks
    max_concurrent: int = 4
    stop_grace: float = 10.0
    log_tail_bytes: int = 256 * 1024
    policy: RunPolicy = RunPolicy()
    """Default limits, the network setting and the per-user run limit."""
    end_retry_first: float = 1.0
    """Seconds before a run's end that the store refused is written again; doubled each time."""
    end_retry_max: float = 10.0
    """The longest pause between two tries."""
    report: Callable[[str], object] = lambda message: None
    """Told, in words, of a run's end the store refused and of its recording later (the
    composition root logs it)."""
    _runs: dict[int, _Run] = attrs.field(init=False, factory=dict)
    _queues: dict[int | None, deque[_Run]] = attrs.field(init=False, factory=dict)
    """Waiting runs per owner, FIFO; an owner is a key only while it has runs waiting, and the
    keys are in the order the owners started waiting (the tie-break between turns)."""
    _running_of: dict[int | None, int] = attrs.field(init=False, factory=dict)
    """Runs holding a slot per owner (adopted ones included); owners with none are left out."""
    _served: dict[int | None, int] = attrs.field(init=False, factory=dict)
    """When each owner last got a slot (a counter): the least recent goes first."""
    _serial: int = attrs.field(init=False, default=0)
    _guard: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    _closing: bool = attrs.field(init=False, default=False)
    """Set by ``stop_all``: the store is about to close, ends no longer recorded are left to
    the next start (``Scheduler.recover``)."""
    running: int = attrs.field(init=False, default=0)
    """Runs holding a slot now (at most ``max_concurrent``)."""
    max_seen: int = attrs.field(init=False, default=0)
    """The most runs that ever held a slot at once."""

    def __attrs_post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        per_user = self.policy.max_runs_per_user
        if per_user is not None and per_user < 1:
            raise ValueError("max_runs_per_user must be at least 1")

    def queued_count(self) -> int:
        with self._guard:
            return sum(len(q) for q in self._queues.values())

    def running_of(self, owner_id: int | None) -> int:
        """Runs of tasks owned by ``owner_id`` holding a slot now (adopted ones included)."""
        with self._guard:
            return self._running_of.get(owner_id, 0)

    def is_active(self, task_id: int) -> bool:
        """True while the task has a run queued or running."""
        with self._guard:
            return task_id in self._runs

    def active_count(self) -> int:
        with self._guard:
            return len(self._runs)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no run is queued or running; False if ``timeout`` passed first."""
        return self.wait_until(lambda: not self._runs, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds, asking again each time a run ends; False if
        ``timeout`` passed first. The predicate may read the repository, nothing slower."""
        with self._guard:
            return self._guard.wait_for(predicate, timeout)

    def launch(
        self, task_id: int, execution_id: str, *, owner_id: int | None | _Unknown = _UNKNOWN
    ) -> None:
        """Queue a stored execution in its task owner's queue (``owner_id``, read from the task
        when not given); it starts when a slot is free and the owner is below the per-user
        limit: each owner's runs in the order of launches, the owners in turn."""
        if isinstance(owner_id, _Unknown):
            owner_id = self._owner_of(task_id)
        run = _Run(task_id=task_id, execution_id=execution_id, owner_id=owner_id)
        with self._guard:
            self._runs[task_id] = run
            self._queues.setdefault(owner_id, deque()).append(run)
        self._dispatch()

    def _owner_of(self, task_id: int) -> int | None:
        """The task's owner; None when it is ownerless or gone (a gone task's run ends at
        once without a record, whichever queue it waited in)."""
        task = self._fresh_task(task_id)
        return None if task is None else task.owner_id

    def _hold_slot(self, owner_id: int | None) -> None:
        """Count a run of ``owner_id`` as holding a slot (guard held)."""
        self.running += 1
        self.max_seen = max(self.max_seen, self.running)
        self._running_of[owner_id] = self._running_of.get(owner_id, 0) + 1

    def _free_slot(self, owner_id: int | None) -> None:
        """The reverse of ``_hold_slot`` (guard held)."""
        self.running -= 1
        left = self._running_of.get(owner_id, 0) - 1
        if left > 0:
            self._running_of[owner_id] = left
        else:
            self._running_of.pop(owner_id, None)

    def _next_run(self) -> _Run | None:
        """Take the run that gets the next free slot out of its queue (guard held): the head
        of the queue of the owner served least recently among those below the per-user limit;
        None when the global limit is reached or no waiting owner may start one."""
        if self.running >= self.max_concurrent:
            return None
        limit = self.policy.max_runs_per_user
        eligible = [
            owner
            for owner in self._queues
            if limit is None or self._running_of.get(owner, 0) < limit
        ]
        if not eligible:
            return None
        owner = min(eligible, key=lambda o: self._served.get(o, 0))  # first waiting wins ties
        queue = self._queues[owner]
        run = queue.popleft()
        if not queue:
            del self._queues[owner]
        self._serial += 1
        self._served[owner] = self._serial
        return run

    def _dispatch(self) -> None:
        """Give free slots to the runs whose turn it is, a thread each."""
        while True:
            with self._guard:
                run = self._next_run()
                if run is None:
                    return
                self._hold_slot(run.owner_id)
            threading.Thread(
                target=self._follow,
                args=(run,),
                name=f"ctm-run-{run.execution_id}",
                daemon=True,
            ).start()

    def _unqueue(self, run: _Run) -> bool:
        """Take a run out of its queue before it started; False when it already left it."""
        with self._guard:
            queue = self._queues.get(run.owner_id)
            if queue is None or run not in queue:
                return False
            queue.remove(run)
            if not queue:
                del self._queues[run.owner_id]
        return True

    def stop(self, task_id: int, *, timeout: float | None = None) -> bool:
        """Stop the task's queued or running execution and wait until it is recorded. False when
        it has none, or when its run had already ended on its own (it keeps that outcome).
        Raises ``StorageUnavailable`` when the run's end (its own, or the stop) cannot be
        recorded now: its process is gone, and the end is recorded as soon as the store takes
        it."""
        with self._guard:
            run = self._runs.get(task_id)
            if run is None:
                return False
            ended = run.ended
            run.stop_requested = not ended
        wait = timeout if timeout is not None else self.stop_grace + 30
        if ended:
            self._wait_recorded(run, wait)
            return False
        if self._unqueue(run):
            self._finish_unstarted(run, ExecutionStatus.STOPPED, "stopped before it started")
            self._forget(run)
            self._wait_recorded(run, 0)
            return True
        if run.started.is_set() and run.handle is not None:
            self.runner.stop(run.handle, self.stop_grace)
        self._wait_recorded(run, wait)
        return True

    def _wait_recorded(self, run: _Run, timeout: float) -> None:
        """Wait until the run's end is recorded, or the store refused it (then raise that)."""
        with self._guard:
            self._guard.wait_for(partial(_settled, run), timeout)
            unsaved = run.unsaved
        if unsaved is not None:
            raise StorageUnavailable(unsaved.reason)

    def stop_all(self, grace: float) -> None:
        """On shutdown: end every run (recorded as failed by the server's shutdown)."""
        with self._guard:
            runs = list(self._runs.values())
            self._closing = True
        survive = self.runner.runs_survive_restart
        for run in runs:
            if survive:
                run.detached = True
            else:
                run.shutting_down = True
            if self._unqueue(run):  # stays queued in the database: run after the restart
                self._forget(run)
            elif run.handle is not None and not survive:
                self.runner.stop(run.handle, grace)
        if survive:
            return  # still running in the database: the next server adopts them
        for run in runs:  # an end the store refuses is left to the next start
            with self._guard:
                self._guard.wait_for(partial(_settled, run), grace + 5)

    def adopt(self, execution: Execution) -> bool:
        """At start-up: follow an execution an earlier server left ``running``, when the runner
        can (``ProcessRunner.adopt``); it holds a run slot (counted for its task's owner) until it
        ends and is recorded then. False when it cannot be followed."""
        if execution.pid is None or not execution.log_path:
            return False
        handle = self.runner.adopt(execution.pid, execution.log_path)
        if handle is None:
            return False
        run = _Run(
            task_id=execution.task_id,
            execution_id=execution.id,
            handle=handle,
            owner_id=self._owner_of(execution.task_id),
        )
        run.started.set()
        with self._guard:
            self._runs[run.task_id] = run
            self._hold_slot(run.owner_id)
        threading.Thread(
            target=self._follow_adopted,
            args=(run, execution),
            name=f"ctm-run-{run.execution_id}",
            daemon=True,
        ).start()
        return True

    def _follow_adopted(self, run: _Run, execution: Execution) -> None:
        def record() -> None:
            self._record(run, execution, self._wait(run))

        self._follow(run, record)

    # --- the run itself ------------------------------------------------------------------------

    def _follow(self, run: _Run, body: Callable[[], None] | None = None) -> None:
        """Run ``body`` (by default: start and wait) in the run's thread, then free its slot."""
        try:
            (body or (lambda: self._start_and_wait(run)))()
        except Exception as exc:  # never lose a record: an unexpected error fails the run
            self._finish_unstarted(run, ExecutionStatus.FAILED, f"internal error: {exc!r}")
        finally:
            with self._guard:
                self._free_slot(run.owner_id)
            self._forget(run)
            self._dispatch()

    def _forget(self, run: _Run) -> None:
        """The run is over: its task is no longer active (unless its end is still to be
        recorded: ``_retry_end`` forgets it then)."""
        with self._guard:
            if run.unsaved is not None:
                return
            if self._runs.get(run.task_id) is run:
                del self._runs[run.task_id]
            run.done.set()  # before the notice: ``_settled`` waiters look at it
            self._guard.notify_all()

    def _start_and_wait(self, run: _Run) -> None:
        try:
            task = self.repo.get_task(run.task_id)
        except TaskNotFound:
            return
        execution = self.repo.get_execution(run.execution_id)
        if execution is None:
            return
        log_path = self.files.log_path(execution.id)
        execution.log_path = log_path
        while True:  # the env may be renamed while this run waits for its lock: follow it
            env_name = task.conda_env
            # Shared: starts go on side by side; a package change waits for them, and they for it.
            with self.env_locks.hold_shared(env_name):
                fresh = self._fresh_task(run.task_id)
                if fresh is None:
                    return
                task = fresh
                if task.conda_env == env_name:
                    self._start_locked(run, task, execution, log_path)
                    break
        if run.handle is None or not run.started.is_set():
            return
        if run.stop_requested or run.unrecorded_start is not None:
            self.runner.stop(run.handle, self.stop_grace)
        self._record(run, execution, self._wait(run))

    def _wait(self, run: _Run) -> RunResult:
        """Wait for the run's end; from then on a stop no longer counts (``stop`` says so)."""
        assert run.handle is not None
        result = self.runner.wait(run.handle)
        with self._guard:
            run.ended = True
        return result

    def _record(self, run: _Run, execution: Execution, result: RunResult) -> None:
        """Record how a started run ended (not when it was left going at shutdown)."""
        if run.detached:
            return
        if run.shutting_down:
            status, note = ExecutionStatus.FAILED, "ended because the server shut down"
        elif run.unrecorded_start is not None:
            status, note = ExecutionStatus.FAILED, run.unrecorded_start
        elif run.stop_requested:
            status, note = ExecutionStatus.STOPPED, "stopped by a user"
        elif result.limit_exceeded:
            status, note = ExecutionStatus.FAILED, result.limit_exceeded
        elif result.timed_out:
            status, note = ExecutionStatus.FAILED, "timed out"
        elif result.exit_code == 0:
            status, note = ExecutionStatus.COMPLETED, None
        else:
            status, note = ExecutionStatus.FAILED, None
        self._end(run, execution, result, status, note)

    def _start_locked(self, run: _Run, task: Task, execution: Execution, log_path: str) -> None:
        """Start the process while holding the env's lock (no change can be half-way)."""
        if run.stop_requested:
            self._end(run, execution, None, ExecutionStatus.STOPPED, "stopped before start")
            return
        try:
            run_env = self.backend.run_environment(task.conda_env)
        except EnvironmentNotFound:  # its owner may delete it while none of its tasks runs
            self._end(
                run,
                execution,
                None,
                ExecutionStatus.FAILED,
                f"environment '{task.conda_env}' was deleted",
            )
            return
        if not self.files.is_file(task.script_path):
            self._end(
                run,
                execution,
                None,
                ExecutionStatus.FAILED,
                f"script file not found: {task.script_path}",
            )
            return
        policy = self.policy
        owner = self.repo.get_user(task.owner_id) if task.owner_id is not None else None
        try:
            # Every run gets a private writable folder; a path script's own folder is only read.
            cwd = self.files.run_dir(execution.id)
        except OSError as exc:  # e.g. the disk is full
            self._end(run, execution, None, ExecutionStatus.FAILED, f"could not start: {exc}")
            return
        spec = RunSpec(
            argv=(run_env.python, "-u", task.script_path),
            cwd=cwd,
            log_path=log_path,
            env_add={**run_env.variables, "PYTHONUNBUFFERED": "1"},
            path_prepend=run_env.path_prepend,
            timeout_seconds=policy.timeout_for(task),
            limits=RunLimits(
                memory_mb=policy.memory_limit_for(task),
                max_processes=policy.max_processes_for(task),
                cpu_cores=policy.cpu_limit_for(task),
            ),
            network=policy.network_for(task),
            owner=owner.username if owner is not None else None,
            owner_id=task.owner_id,
            prefix=run_env.prefix,
            readonly_paths=(
                (task.script_path,)
                if task.script_stored
                else (posixpath.dirname(task.script_path),)
            ),
        )
        start_time = self.clock.now()
        try:
            run.handle = self.runner.start(spec)
        except OSError as exc:
            self._end(run, execution, None, ExecutionStatus.FAILED, f"could not start: {exc}")
            return
        execution.status = ExecutionStatus.RUNNING
        execution.start_time = start_time
        execution.pid = run.handle.pid
        try:
            if not self.repo.record_run_start(execution):
                # The task was deleted while its run started: end the run, nothing to record.
                run.stop_requested = True
        except StorageUnavailable as exc:
            # A run the store does not show as running must not go on: stop it, record it failed.
            run.unrecorded_start = f"stopped: its start could not be recorded ({exc.reason})"
        run.started.set()

    def _fresh_task(self, task_id: int) -> Task | None:
        try:
            return self.repo.get_task(task_id)
        except TaskNotFound:
            return None

    def _end(
        self,
        run: _Run,
        execution: Execution,
        result: RunResult | None,
        status: ExecutionStatus,
        note: str | None,
    ) -> None:
        now = self.clock.now()
        execution.status = status
        execution.end_time = now
        execution.note = note
        if execution.start_time is None:
            execution.start_time = now
        if result is not None:
            execution.exit_code = result.exit_code
            execution.duration = round(result.duration, 2)
            execution.peak_memory_mb = round(result.peak_memory / MB, 1)
            execution.avg_memory_mb = round(result.avg_memory / MB, 1)
        else:
            execution.duration = 0.0
        if note and execution.log_path and result is None:
            self.files.append_log(execution.log_path, f"[ctm: run not started: {note}]")
        elif run.shutting_down and execution.log_path:
            self.files.append_log(execution.log_path, f"[ctm: run {note}]")
        self._record_end(run, execution)

    def _record_end(self, run: _Run, execution: Execution, *, only_if_latest: bool = False) -> None:
        """Record the run's end; when the store refuses it, mark the run unsaved and leave the
        recording to a thread of its own (``_retry_end``), so this one goes on (frees the slot,
        answers a stop)."""
        try:
            self.repo.record_run_end(execution, only_if_latest=only_if_latest)
            return
        except StorageUnavailable as exc:
            with self._guard:
                run.unsaved = exc
                self._guard.notify_all()
            reason = exc.reason
        self.report(
            f"run {execution.id} of task {execution.task_id} ended ({execution.status.value}) but"
            f" cannot be recorded now ({reason}); trying again until it is"
        )
        threading.Thread(
            target=self._retry_end,
            args=(run, execution, only_if_latest),
            name=f"ctm-run-end-{execution.id}",
            daemon=True,
        ).start()

    def _retry_end(self, run: _Run, execution: Execution, only_if_latest: bool) -> None:
        """Write the run's end again after ``end_retry_first`` seconds (on the clock), then after
        twice as long, up to ``end_retry_max``, until the store takes it; then forget the run."""
        pause, tries = self.end_retry_first, 1
        try:
            while not self._closing:
                asyncio.run(self.clock.sleep_until(self.clock.now() + timedelta(seconds=pause)))
                if self._closing:
                    break
                tries += 1
                try:
                    self.repo.record_run_end(execution, only_if_latest=only_if_latest)
                except StorageUnavailable:
                    pause = min(pause * 2, self.end_retry_max)
                    continue
                self.report(f"run {execution.id}: its end is recorded (try {tries})")
                break
        except Exception as exc:  # e.g. the store was closed meanwhile: the next start recovers
            self.report(f"run {execution.id}: its end could not be recorded: {exc!r}")
        finally:
            with self._guard:
                run.unsaved = None
            self._forget(run)

    def record_lost_end(self, execution: Execution) -> None:
        """Record the end of a run nobody follows any more (``Scheduler.recover``: it was going
        on when an earlier server stopped), only if nothing newer of its task ran. When the
        store refuses it, it is written again as any run's end, and the task counts as active
        until then."""
        run = _Run(task_id=execution.task_id, execution_id=execution.id)
        with self._guard:
            self._runs.setdefault(run.task_id, run)
        self._record_end(run, execution, only_if_latest=True)
        self._forget(run)

    def _finish_unstarted(self, run: _Run, status: ExecutionStatus, note: str) -> None:
        execution = self.repo.get_execution(run.execution_id)
        if execution is None or execution.status.finished:
            return
        self._end(run, execution, None, status, note)
