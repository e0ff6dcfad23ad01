"""``PsutilProcessRunner``: runs scripts as child processes, logs and measures them (Linux).

Per run: the child in a new session (so its own process group), its stdout and stderr merged into
one pipe; one thread copies the pipe into the capped log (``_logcap``), one thread waits for the
main process through a pidfd, enforces the timeout, stops what the run left behind, reaps it with
``os.wait4`` and finishes the log. One monitor thread for the whole runner samples the memory of
every running execution with one scan of the processes per tick (``_monitor``, over
``_proctree``: psutil, and ``/proc`` where psutil falls short). Stops, timeouts, limits and
leftovers end a run through ``_stop``; ``_run`` holds the run's handle and its output thread.

Signals only ever reach processes of the run: the process group is signalled only while the main
process is unreaped (a zombie still holds its pid, so the group id cannot have been reused), and
single processes through a pidfd opened before checking their start time.

See docs/runs.md for the behaviour as a user sees it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

import attrs

from ctm_adapters._child_env import environment_for_run
from ctm_adapters._logcap import LogCapper, read_log_tail
from ctm_adapters._monitor import CpuThrottle, Monitor, own_descendants, wait_pidfd
from ctm_adapters._proctree import read_peak_rss, read_stat, scan
from ctm_adapters._run import (
    MB,
    RUN_MARKER_VARIABLE,
    Launch,
    PsutilRunHandle,
    copy_output,
    reap_sandbox_init,
    result_of,
)
from ctm_adapters._sandbox import (
    Identities,
    RunIdentity,
    Sandbox,
    SandboxUnavailable,
    interpreter_roots,
)
from ctm_adapters._stop import RunStopper, stop_marked_runs
from ctm_core.ports import RunHandle, RunResult, RunSpec

__all__ = [
    "Launch",
    "RUN_MARKER_VARIABLE",
    "stop_marked_runs",
    "PsutilProcessRunner",
    "PsutilRunHandle",
    "read_log_tail",
]

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.5
"""Seconds between two memory samples of a run's process tree, by default."""
LOG_CAP_BYTES = 10 * 1024 * 1024
"""A run's log is capped at this size by default (its start and its end are kept)."""
SECRET_ENV_PREFIXES = ("CTM_",)
TIMEOUT_GRACE = 10.0
"""Seconds between SIGTERM and SIGKILL when a run's timeout ends it."""
LEFTOVER_GRACE = 2.0
"""Seconds the processes a run left behind get between SIGTERM and SIGKILL."""
LOG_FLUSH_INTERVAL = 1.0


_EARLY_PEAK_READS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.3)
"""Seconds after start at which a young run's own peak is read (see ``_early_peaks``)."""
_INSTANCE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PIPE_SIZE = 1024 * 1024
_PAYLOAD_POLL = 0.002  # seconds between looks for a sandboxed script's process at its start
_SIGNAL_EXIT = 128
_DRAIN_TIMEOUT = 2.0  # after every known process is gone: how long to wait for end of output


def _self_peak_rss() -> int:
    return read_peak_rss(os.getpid())


class PsutilProcessRunner:
    """Runs ``RunSpec``s as child processes: capped merged log, tree memory, stop and timeout.

    ``sample_interval``: seconds between memory samples (one scan of the processes for all runs).
    ``log_cap_bytes``: the most a log keeps (head half, marker, tail half).
    ``secret_env_prefixes``: server variables starting with these are never passed to a run.
    ``identities``: who each run is (per-user uid under root, HOME folder); None: the server's
    own uid and HOME.
    ``sandbox``: contain every run in bubblewrap (see ``_sandbox``); None: runs are not
    contained.
    ``timeout_grace``: seconds between SIGTERM and SIGKILL when a run's timeout ends it.
    ``leftover_grace``: the same for processes still alive after the main process exited.
    ``log_flush_interval``: how often the tail of a log past its cap is rewritten on disk.
    ``instance_id``: names this server instance (e.g. from its data directory) in every run's
    marker variable, so that ``kill_stale_runs`` can find the runs of its earlier lives.
    """

    runs_survive_restart = False
    """The server is each run's parent: a run ends with it (see ``SupervisedProcessRunner``)."""

    def __init__(
        self,
        *,
        sample_interval: float = SAMPLE_INTERVAL,
        log_cap_bytes: int = LOG_CAP_BYTES,
        secret_env_prefixes: Sequence[str] = SECRET_ENV_PREFIXES,
        timeout_grace: float = TIMEOUT_GRACE,
        leftover_grace: float = LEFTOVER_GRACE,
        log_flush_interval: float = LOG_FLUSH_INTERVAL,
        instance_id: str | None = None,
        identities: Identities | None = None,
        sandbox: Sandbox | None = None,
        only_descendants: bool = False,
    ) -> None:
        """``only_descendants``: this process is a child subreaper that runs nothing but its
        runs (a run supervisor), so every process of a run, escapees included, is one of its
        descendants: memory samples read those instead of every process on the machine."""
        if not hasattr(os, "pidfd_open"):
            raise RuntimeError("PsutilProcessRunner needs Linux >= 5.3 (pidfd_open)")
        if sample_interval <= 0:
            raise ValueError("sample_interval must be positive")
        LogCapper.check_cap(log_cap_bytes)
        self._log_cap = log_cap_bytes
        self._secret_prefixes = tuple(secret_env_prefixes)
        self._timeout_grace = timeout_grace
        self._leftover_grace = leftover_grace
        self._log_flush_interval = log_flush_interval
        if instance_id is not None and not _INSTANCE_ID.fullmatch(instance_id):
            raise ValueError("instance_id: 1-64 characters of A-Z a-z 0-9 _ . -")
        self._instance_id = instance_id
        self._active_tokens: set[str] = set()
        self._monitor = Monitor(sample_interval, own_descendants if only_descendants else scan)
        self._stopper = RunStopper(self._monitor)
        self._monitor.on_limit = self._stopper.end_over_limit
        self._identities = identities
        self._sandbox = sandbox

    @property
    def sample_interval(self) -> float:
        return self._monitor.interval

    def close(self) -> None:
        """End the monitor thread. Runs still going are not stopped; ``start`` fails after."""
        self._monitor.close()

    # ---------------------------------------------------------------- environment

    def child_environment(
        self, spec: RunSpec, identity: RunIdentity | None = None
    ) -> dict[str, str]:
        """The environment a run gets (without the run token variable)."""
        env = environment_for_run(os.environ, secret_prefixes=self._secret_prefixes)
        env["PYTHONUNBUFFERED"] = "1"
        if identity is not None:
            env["HOME"] = identity.home
            env["USER"] = env["LOGNAME"] = identity.username
        if self._sandbox is not None:
            env["TMPDIR"] = "/tmp"  # noqa: S108 - the sandbox's own private /tmp
        env.update(spec.env_add)
        server_path = os.environ.get("PATH") or os.defpath
        env["PATH"] = os.pathsep.join([*spec.path_prepend, server_path])
        return env

    # ---------------------------------------------------------------- start

    @property
    def contained(self) -> bool:
        """True when runs go into a sandbox."""
        return self._sandbox is not None

    def start(self, spec: RunSpec) -> PsutilRunHandle:
        """Start the run; raises ``OSError`` when the program cannot be started."""
        return self.start_prepared(spec, self.prepare(spec))

    def prepare(self, spec: RunSpec) -> Launch:
        """Everything to start ``spec``: identity, HOME and working folder made the run's, the
        environment with a new marker token, the sandboxed command line. Raises ``OSError``
        when the run has no identity here (e.g. its user id is outside the uid range)."""
        identity = None
        if self._identities is not None:
            try:
                identity = self._identities.for_user(spec.owner, spec.owner_id)
            except ValueError as exc:
                raise OSError(str(exc)) from None
            self._identities.prepare_home(identity)
            self._identities.give(identity, spec.cwd)
        env = self.child_environment(spec, identity)
        token = secrets.token_hex(16)
        if self._instance_id is not None:
            token = f"{self._instance_id}:{token}"
        env[RUN_MARKER_VARIABLE] = token
        limits = spec.limits
        memory = None if limits.memory_mb is None else int(limits.memory_mb * MB)
        argv: list[str] = list(spec.argv)
        cwd = spec.cwd
        if self._sandbox is not None:
            readonly = list(spec.readonly_paths)
            if spec.prefix is not None:
                roots = interpreter_roots(spec.prefix, spec.argv[0], self._sandbox.hidden)
                readonly = [spec.prefix, *roots, *readonly]
            writable = [spec.cwd] + ([identity.home] if identity is not None else [])
            try:
                argv = self._sandbox.command(
                    argv,
                    cwd=spec.cwd,
                    readonly=readonly,
                    writable=writable,
                    network=spec.network,
                    max_processes=limits.max_processes,
                    uid=None if identity is None else identity.uid,
                    gid=None if identity is None else identity.gid,
                    tmpfs_bytes=memory,
                )
            except SandboxUnavailable as exc:
                raise OSError(str(exc)) from None
            cwd = "/"
            identity = None  # the sandbox switches to the run's uid itself
        return Launch(
            argv=tuple(argv),
            cwd=cwd,
            env=env,
            token=token,
            uid=None if identity is None else identity.uid,
            gid=None if identity is None else identity.gid,
            sandboxed=self._sandbox is not None,
            memory_limit_bytes=memory,
            max_processes=limits.max_processes,
            cpu_cores=limits.cpu_cores,
        )

    def start_prepared(self, spec: RunSpec, launch: Launch) -> PsutilRunHandle:
        """``start`` with what ``prepare`` made, perhaps in another process (the supervisor)."""
        if self._monitor.closed:
            raise RuntimeError("the runner is closed")
        log_file = _open_log(spec.log_path)
        try:
            read_fd, write_fd = os.pipe()
        except BaseException:
            log_file.close()
            raise
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        user_kwargs: dict[str, Any] = {}
        if launch.uid is not None:
            user_kwargs = {"user": launch.uid, "group": launch.gid, "extra_groups": []}
        token = launch.token
        started = time.monotonic()
        try:
            popen = subprocess.Popen(
                list(launch.argv),
                cwd=launch.cwd,
                env=launch.env,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **user_kwargs,
            )
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            log_file.close()
            raise
        os.close(write_fd)
        # wait4's ru_maxrss also counts the server's memory the child held before exec (all of
        # the server's peak with vfork). A figure above this bound is the run's own.
        pollution_bound = _self_peak_rss()
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError:  # cannot happen for an unreaped child, but never leave it unwatched
            os.killpg(popen.pid, signal.SIGKILL)
            os.waitpid(popen.pid, 0)
            popen.returncode = -signal.SIGKILL
            os.close(read_fd)
            log_file.close()
            raise
        capper = LogCapper(log_file, self._log_cap, flush_interval=self._log_flush_interval)
        run = PsutilRunHandle(
            spec=spec,
            popen=popen,
            pidfd=pidfd,
            token=token,
            capper=capper,
            read_fd=read_fd,
            started=started,
            pollution_bound=pollution_bound,
            launch=launch,
        )
        run._reader = threading.Thread(
            target=copy_output, args=(run,), name=f"ctm-run-output-{run.pid}", daemon=True
        )
        follower = threading.Thread(
            target=self._follow, args=(run,), name=f"ctm-run-wait-{run.pid}", daemon=True
        )
        try:
            self._active_tokens.add(token)
            run._reader.start()
            follower.start()
        except BaseException:  # no thread to follow it: the run must not go on unwatched
            os.killpg(popen.pid, signal.SIGKILL)
            os.waitpid(popen.pid, 0)
            popen.returncode = -signal.SIGKILL
            if not run._reader.is_alive():
                os.close(read_fd)
                capper.close()
            raise
        return run

    # ---------------------------------------------------------------- wait / stop

    def wait(self, handle: RunHandle) -> RunResult:
        """Block until the run has ended and its output is in the log; return its result."""
        run = _own(handle)
        run._done.wait()
        if run._error is not None:
            raise RuntimeError(f"following run {run.pid} failed") from run._error
        assert run._result is not None
        return run._result

    def stop(self, handle: RunHandle, grace_seconds: float) -> None:
        """SIGTERM, SIGKILL after ``grace_seconds``, every escaped descendant too; returns once
        no process of the run is alive and its log is complete. Idempotent, safe with ``wait``."""
        run = _own(handle)
        if run._done.is_set():
            return
        self._stopper.terminate(run, grace_seconds)
        run._done.wait()

    def _early_peaks(self, run: PsutilRunHandle, deadline: float | None) -> None:
        """Read the main process's own peak (VmHWM) a few times in its first moments.

        A short script reaches its peak within milliseconds and may end before the monitor's
        next tick; without these reads its only figure would be the one taken right after
        ``exec``, when almost nothing is mapped yet. Each read is ``VmHWM`` and the RSS, two small
        files.
        """
        reads = list(_EARLY_PEAK_READS)
        while reads:
            elapsed = time.monotonic() - run.started
            if run._sandboxed and run.payload_pid() is None:
                # bubblewrap has not started the script yet: look again very soon, so that even
                # a script of a few milliseconds is read at least once (until the last read).
                while reads and reads[0] <= elapsed:
                    reads.pop(0)
                if not reads:
                    return
                at = min(reads[0], elapsed + _PAYLOAD_POLL)
            else:
                at = reads.pop(0)
            wait = max(0.0, run.started + at - time.monotonic())
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            if wait_pidfd(run._pidfd, wait):
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            payload = run.payload_pid()
            if payload is None:
                continue
            peak = read_peak_rss(payload)
            main = read_stat(payload)
            with run._lock:
                run._os_peak = max(run._os_peak, peak)
                if main is not None and main.alive:
                    run._early_rss.append(main.rss)

    def _follow(self, run: PsutilRunHandle) -> None:
        """The run's waiting thread: timeout, leftovers, reaping, end of output, result."""
        try:
            run._tree  # noqa: B018 - the first sample, then the monitor's
            self._monitor.add(run)
            if run.launch is not None and run.launch.cpu_cores is not None:
                throttle = CpuThrottle(run, run.launch.cpu_cores)
                run._throttle = throttle
                threading.Thread(
                    target=throttle.loop, name=f"ctm-run-cpu-{run.pid}", daemon=True
                ).start()
            timeout = run.spec.timeout_seconds
            deadline = None if timeout is None else run.started + timeout
            self._early_peaks(run, deadline)
            while not wait_pidfd(
                run._pidfd, None if deadline is None else deadline - time.monotonic()
            ):
                deadline = None
                with run._lock:
                    stopping = run._term_sent
                    run._timed_out = not stopping
                if not stopping:
                    self._stopper.terminate(run, self._timeout_grace)
            ended = time.monotonic()
            run._main_exited.set()
            if run._throttle is not None:
                run._throttle.release()
            self._monitor.remove(run)
            leftovers = self._stopper.alive(run)
            if leftovers and not run._sandboxed:  # a sandbox's die with it: nothing to tell
                run._notes.append(
                    f"[ctm: {len(leftovers)} process(es) still running after the main process "
                    "exited were stopped]"
                )
                self._stopper.terminate(run, self._leftover_grace)
            elif leftovers:
                self._stopper.terminate(run, 0.0)
            with run._lock:
                _pid, status, usage = os.wait4(run.pid, 0)
                run._reaped = True
            exit_code = os.waitstatus_to_exitcode(status)
            run._popen.returncode = exit_code  # so that Popen never waits for this pid itself
            script_peak = reap_sandbox_init(run)
            if run._sandboxed and _SIGNAL_EXIT < exit_code <= _SIGNAL_EXIT + 64:
                # bubblewrap reports a script ended by signal N as exit 128 + N.
                exit_code = _SIGNAL_EXIT - exit_code
            reader = run._reader
            assert reader is not None
            reader.join(_DRAIN_TIMEOUT)
            if reader.is_alive():
                run._notes.append("[ctm: output still open after the run ended; stopped reading]")
                os.write(run._wake_w, b"x")
                reader.join()
            if run._timed_out:
                run._notes.append(f"[ctm: run timed out after {timeout:g} s, stopped]")
            if run._limit_note is not None:
                run._notes.append(f"[ctm: {run._limit_note}, stopped]")
            if run._capper.error is not None:
                log.warning("log %s incomplete: %s", run.log_path, run._capper.error)
            run._capper.close(run._notes)
            run._result = result_of(run, exit_code, ended - run.started, usage.ru_maxrss * 1024)
            if script_peak > run._result.peak_memory:  # the OS's own peak is the floor
                run._result = attrs.evolve(run._result, peak_memory=script_peak)
        except BaseException as exc:
            run._error = exc
            log.exception("following run %s failed", run.pid)
        finally:
            self._monitor.remove(run)
            self._active_tokens.discard(run._token)
            run._done.set()

    def adopt(self, pid: int, log_path: str) -> RunHandle | None:
        """Runs of an earlier life cannot be followed here (they lost their output pipe)."""
        return None

    def kill_stale_runs(self, grace_seconds: float = 5.0) -> int:
        """Stop the runs an earlier life of this server left running; return how many processes.

        For startup, before unfinished executions are marked failed: a run whose server died
        has lost its log and its result, but its processes may still run (use memory, write
        files). Found by the marker variable naming this ``instance_id`` (plus their descendants
        and sessions); SIGTERM, then SIGKILL after ``grace_seconds``. Runs of this runner's own
        life and of other instances are never touched. Needs ``instance_id``.
        """
        if self._instance_id is None:
            raise ValueError("kill_stale_runs needs the runner's instance_id")
        return stop_marked_runs(
            self._instance_id, set(self._active_tokens), grace_seconds, self._monitor.refresh
        )


def _own(handle: RunHandle) -> PsutilRunHandle:
    if not isinstance(handle, PsutilRunHandle):
        raise TypeError(f"not a handle of this runner: {handle!r}")
    return handle


def _open_log(path: str) -> BinaryIO:
    """Create (or empty) the log, readable by the server's user only."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    # Unbuffered: a write that failed (disk full) is not retried later over the capper's last line.
    return open(fd, "r+b", buffering=0)  # noqa: SIM115 - the capper closes it
