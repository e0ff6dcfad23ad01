"""Running executions: the global limit, waiting for environment changes, recording results.

Runs over the limit wait in a FIFO queue (in the order they were due) and hold no thread; a
run that gets its turn is followed by a thread of its own, since waiting for a child blocks.
"""

from __future__ import annotations

import posixpath
import threading
from collections import deque
from collections.abc import Callable

import attrs

from ctm_core.environments import KeyedLocks
from ctm_core.errors import EnvironmentNotFound, TaskNotFound
from ctm_core.models import Execution, ExecutionStatus, RunPolicy, Task, TaskStatus
from ctm_core.ports import (
    Clock,
    EnvironmentBackend,
    FileStore,
    ProcessRunner,
    Repository,
    RunHandle,
    RunResult,
    RunSpec,
)

MB = 1024 * 1024


@attrs.define(eq=False)
class _Run:
    task_id: int
    execution_id: str
    handle: RunHandle | None = None
    stop_requested: bool = False
    shutting_down: bool = False
    detached: bool = False
    """Left going at shutdown (the runner's runs survive it): the next server records its end."""
    started: threading.Event = attrs.field(factory=threading.Event)
    done: threading.Event = attrs.field(factory=threading.Event)


@attrs.define
class RunCoordinator:
    """Starts, follows and stops runs, and writes every execution when it starts and ends."""

    repo: Repository
    backend: EnvironmentBackend
    runner: ProcessRunner
    files: FileStore
    clock: Clock
    env_locks: KeyedLocks
    state_lock: threading.RLock
    max_concurrent: int = 4
    stop_grace: float = 10.0
    log_tail_bytes: int = 256 * 1024
    policy: RunPolicy = RunPolicy()
    """Default limits, the network setting and the per-user run limit."""
    _runs: dict[int, _Run] = attrs.field(init=False, factory=dict)
    _queue: deque[_Run] = attrs.field(init=False, factory=deque)
    _guard: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    running: int = attrs.field(init=False, default=0)
    """Runs holding a slot now (at most ``max_concurrent``)."""
    max_seen: int = attrs.field(init=False, default=0)
    """The most runs that ever held a slot at once."""

    def __attrs_post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")

    def queued_count(self) -> int:
        with self._guard:
            return len(self._queue)

    def is_active(self, task_id: int) -> bool:
        """True while the task has a run queued or running."""
        with self._guard:
            return task_id in self._runs

    def active_count(self) -> int:
        with self._guard:
            return len(self._runs)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no run is queued or running; False if ``timeout`` passed first."""
        with self._guard:
            return self._guard.wait_for(lambda: not self._runs, timeout)

    def launch(self, task_id: int, execution_id: str) -> None:
        """Queue a stored execution; it starts when a slot is free, in the order of launches."""
        run = _Run(task_id=task_id, execution_id=execution_id)
        with self._guard:
            self._runs[task_id] = run
            self._queue.append(run)
        self._dispatch()

    def _dispatch(self) -> None:
        """Give free slots to the runs at the head of the queue, a thread each."""
        while True:
            with self._guard:
                if self.running >= self.max_concurrent or not self._queue:
                    return
                run = self._queue.popleft()
                self.running += 1
                self.max_seen = max(self.max_seen, self.running)
            threading.Thread(
                target=self._follow, args=(run,), name=f"ctm-run-{run.execution_id}",
                daemon=True,
            ).start()

    def _unqueue(self, run: _Run) -> bool:
        """Take a run out of the queue before it started; False when it already left it."""
        with self._guard:
            if run not in self._queue:
                return False
            self._queue.remove(run)
        return True

    def stop(self, task_id: int, *, timeout: float | None = None) -> bool:
        """Stop the task's running execution and wait until it is recorded. False when none."""
        with self._guard:
            run = self._runs.get(task_id)
        if run is None:
            return False
        run.stop_requested = True
        if self._unqueue(run):
            self._finish_unstarted(run, ExecutionStatus.STOPPED, "stopped before it started")
            self._forget(run)
            return True
        if run.started.is_set() and run.handle is not None:
            self.runner.stop(run.handle, self.stop_grace)
        run.done.wait(timeout if timeout is not None else self.stop_grace + 30)
        return True

    def stop_all(self, grace: float) -> None:
        """On shutdown: end every run (recorded as failed by the server's shutdown)."""
        with self._guard:
            runs = list(self._runs.values())
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
        for run in runs:
            run.done.wait(grace + 5)

    def adopt(self, execution: Execution) -> bool:
        """At start-up: follow an execution an earlier server left ``running``, when the runner
        can (``ProcessRunner.adopt``); it holds a run slot until it ends and is recorded then.
        False when it cannot be followed."""
        if execution.pid is None or not execution.log_path:
            return False
        handle = self.runner.adopt(execution.pid, execution.log_path)
        if handle is None:
            return False
        run = _Run(task_id=execution.task_id, execution_id=execution.id, handle=handle)
        run.started.set()
        with self._guard:
            self._runs[run.task_id] = run
            self.running += 1
            self.max_seen = max(self.max_seen, self.running)
        threading.Thread(
            target=self._follow_adopted, args=(run, execution),
            name=f"ctm-run-{run.execution_id}", daemon=True,
        ).start()
        return True

    def _follow_adopted(self, run: _Run, execution: Execution) -> None:
        def record() -> None:
            assert run.handle is not None
            self._record(run, execution, self.runner.wait(run.handle))

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
                self.running -= 1
            self._forget(run)
            self._dispatch()

    def _forget(self, run: _Run) -> None:
        with self._guard:
            if self._runs.get(run.task_id) is run:
                del self._runs[run.task_id]
            self._guard.notify_all()
        run.done.set()

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
            with self.env_locks.hold(env_name):
                fresh = self._fresh_task(run.task_id)
                if fresh is None:
                    return
                task = fresh
                if task.conda_env == env_name:
                    self._start_locked(run, task, execution, log_path)
                    break
        if run.handle is None or not run.started.is_set():
            return
        if run.stop_requested:
            self.runner.stop(run.handle, self.stop_grace)
        self._record(run, execution, self.runner.wait(run.handle))

    def _record(self, run: _Run, execution: Execution, result: RunResult) -> None:
        """Record how a started run ended (not when it was left going at shutdown)."""
        if run.detached:
            return
        if run.shutting_down:
            status, note = ExecutionStatus.FAILED, "ended because the server shut down"
        elif run.stop_requested:
            status, note = ExecutionStatus.STOPPED, "stopped by a user"
        elif result.timed_out:
            status, note = ExecutionStatus.FAILED, "timed out"
        elif result.exit_code == 0:
            status, note = ExecutionStatus.COMPLETED, None
        else:
            status, note = ExecutionStatus.FAILED, None
        self._end(run, execution, result, status, note)

    def _start_locked(
        self, run: _Run, task: Task, execution: Execution, log_path: str
    ) -> None:
        """Start the process while holding the env's lock (no change can be half-way)."""
        if run.stop_requested:
            self._end(run, execution, None, ExecutionStatus.STOPPED, "stopped before start")
            return
        try:
            run_env = self.backend.run_environment(task.conda_env)
        except EnvironmentNotFound:
            self._end(
                run, execution, None, ExecutionStatus.FAILED,
                f"environment '{task.conda_env}' not found",
            )
            return
        if not self.files.is_file(task.script_path):
            self._end(
                run, execution, None, ExecutionStatus.FAILED,
                f"script file not found: {task.script_path}",
            )
            return
        cwd = (
            self.files.run_dir(execution.id)
            if task.script_stored
            else posixpath.dirname(task.script_path)
        )
        spec = RunSpec(
            argv=(run_env.python, "-u", task.script_path),
            cwd=cwd,
            log_path=log_path,
            env_add={**run_env.variables, "PYTHONUNBUFFERED": "1"},
            path_prepend=run_env.path_prepend,
            timeout_seconds=task.timeout_seconds,
        )
        start_time = self.clock.now()
        try:
            run.handle = self.runner.start(spec)
        except OSError as exc:
            self._end(
                run, execution, None, ExecutionStatus.FAILED, f"could not start: {exc}"
            )
            return
        execution.status = ExecutionStatus.RUNNING
        execution.start_time = start_time
        execution.pid = run.handle.pid
        with self.state_lock:
            fresh = self._fresh_task(run.task_id)
            if fresh is not None:
                fresh.status = TaskStatus.RUNNING
                fresh.last_run_at = start_time
                fresh.last_execution_id = execution.id
                self.repo.save_run_state(fresh, execution)
            else:
                self.repo.update_execution(execution)
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
        with self.state_lock:
            task = self._fresh_task(run.task_id)
            if task is None:
                return
            task.status = TaskStatus(status.value)
            task.last_execution_id = execution.id
            task.last_run_at = execution.start_time
            task.last_run_duration = execution.duration
            self.repo.save_run_state(task, execution)

    def _finish_unstarted(self, run: _Run, status: ExecutionStatus, note: str) -> None:
        execution = self.repo.get_execution(run.execution_id)
        if execution is None or execution.status.finished:
            return
        self._end(run, execution, None, status, note)
