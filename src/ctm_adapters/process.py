"""``PsutilProcessRunner``: runs scripts as child processes, logs and measures them (Linux).

Per run: the child in a new session (so its own process group), its stdout and stderr merged into
one pipe; one thread copies the pipe into the capped log (``_logcap``), one thread waits for the
main process through a pidfd, enforces the timeout, stops what the run left behind, reaps it with
``os.wait4`` and finishes the log. One monitor thread for the whole runner samples the memory of
every running execution with one scan of ``/proc`` per tick (``_proctree``).

Signals only ever reach processes of the run: the process group is signalled only while the main
process is unreaped (a zombie still holds its pid, so the group id cannot have been reused), and
single processes through a pidfd opened after checking their start time.

See docs/runs.md for the behaviour as a user sees it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import select
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import attrs

from ctm_adapters._logcap import LogCapper, read_log_tail
from ctm_adapters._proctree import (
    PAGE_SIZE,
    ProcStat,
    RunTree,
    TreeScanner,
    children,
    descendants,
    read_cpu_ticks,
    read_environ_value,
    read_peak_rss,
    read_stat,
    scan,
)
from ctm_adapters._sandbox import (
    Identities,
    RunIdentity,
    Sandbox,
    SandboxUnavailable,
    interpreter_roots,
)
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

RUN_MARKER_VARIABLE = "CTM_RUN_MARKER"
"""Set in every run's environment to a random value: finds its processes that escaped the tree."""

SERVER_ONLY_VARIABLES = frozenset(
    {
        "CONDA_PREFIX",
        "CONDA_SHLVL",
        "CONDA_DEFAULT_ENV",
        "CONDA_PROMPT_MODIFIER",
        # Settings of the server's own interpreter; wrong for an environment's python.
        "PYTHONHOME",
        "PYTHONPATH",
        "VIRTUAL_ENV",
    }
)
"""Variables of the server's environment that a run never inherits (``env_add`` may set them)."""

_MAX_POLL_MS = 2**31 - 1
_EARLY_PEAK_READS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.3)
"""Seconds after start at which a young run's own peak is read (see ``_early_peaks``)."""
_INSTANCE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_READ_CHUNK = 256 * 1024
_READS_PER_WAKE = 64  # then look at the wake-up pipe again, however fast the program prints
_PIPE_SIZE = 1024 * 1024
_CPU_WINDOW = 0.1  # seconds between looks at a CPU-limited run's use
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAYLOAD_POLL = 0.002  # seconds between looks for a sandboxed script's process at its start
_SIGNAL_EXIT = 128
MB = 1024 * 1024
_KILL_WAIT_LIMIT = 30.0  # after SIGKILL: how long to wait for processes in uninterruptible sleep
_DRAIN_TIMEOUT = 2.0  # after every known process is gone: how long to wait for end of output


@attrs.frozen(kw_only=True)
class Launch:
    """A run made ready to start: the whole command (inside its sandbox when contained), its
    environment and marker token, the uid/gid to switch to, and the limits the runner enforces.
    Plain data, so the run supervisor (another process) can start what the server prepared."""

    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    token: str
    uid: int | None = None
    gid: int | None = None
    sandboxed: bool = False
    memory_limit_bytes: int | None = None
    max_processes: int | None = None
    cpu_cores: float | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Launch:
        return cls(
            argv=tuple(data["argv"]), cwd=data["cwd"], env=dict(data["env"]),
            token=data["token"], uid=data.get("uid"), gid=data.get("gid"),
            sandboxed=bool(data.get("sandboxed")),
            memory_limit_bytes=data.get("memory_limit_bytes"),
            max_processes=data.get("max_processes"),
            cpu_cores=data.get("cpu_cores"),
        )


class PsutilRunHandle:
    """One run started by ``PsutilProcessRunner``; pass it back to ``wait`` and ``stop``."""

    pid: int
    """The main process; also the id of the run's process group and session."""

    def __init__(
        self,
        *,
        spec: RunSpec,
        popen: subprocess.Popen[bytes],
        pidfd: int,
        token: str,
        capper: LogCapper,
        read_fd: int,
        started: float,
        pollution_bound: int,
        launch: Launch | None = None,
    ) -> None:
        self.pid = popen.pid
        self.launch = launch
        self._limit_note: str | None = None
        self._throttle: _CpuThrottle | None = None
        self._init: tuple[int, int] | None = None
        """Inside a sandbox: bubblewrap's init (pid, start time), which reaps the script."""
        self._payload: tuple[int, int] | None = None
        """Inside a sandbox: the script's own process (pid, start time), bwrap's init's child."""
        self.spec = spec
        self.log_path = spec.log_path
        self.started = started  # time.monotonic() just before the program was started
        self._popen = popen
        self._pidfd = pidfd
        self._token = token
        self._tree_lock = threading.Lock()
        self._tree_cache: RunTree | None = None
        self._capper = capper
        self._read_fd = read_fd
        self._wake_r, self._wake_w = os.pipe()
        # Closed with the handle, never earlier: a late stop() must not poll a reused fd number.
        weakref.finalize(self, _close_fds, pidfd, self._wake_r, self._wake_w)
        self._pollution_bound = pollution_bound
        self._lock = threading.Lock()
        self._reaped = False
        self._term_sent = False
        self._timed_out = False
        self._notes: list[str] = []
        self._samples = 0
        self._sample_sum = 0
        self._early_rss: list[int] = []
        self._sample_max = 0
        self._os_peak = 0
        self._main_exited = threading.Event()
        self._done = threading.Event()
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<PsutilRunHandle pid={self.pid} done={self._done.is_set()}>"

    @property
    def done(self) -> bool:
        """True once the run has ended, its processes are gone and its log is complete."""
        return self._done.is_set()

    @property
    def _tree(self) -> RunTree:
        """The run's process tree; made on first use (reading the new process's stat can block
        for milliseconds while its exec completes, so ``start`` leaves it to the wait thread)."""
        with self._tree_lock:
            if self._tree_cache is None:
                main = read_stat(self.pid)  # present: a zombie at worst, it is not reaped yet
                self._tree_cache = RunTree(
                    self.pid, main.starttime if main else 0, self._token.encode()
                )
                if main is not None and main.alive and not self._sandboxed:
                    # The first sample, right away: the tree is the main process alone this early.
                    self._record_sample(main.rss_pages * PAGE_SIZE, read_peak_rss(self.pid))
            return self._tree_cache

    @property
    def _sandboxed(self) -> bool:
        return self.launch is not None and self.launch.sandboxed

    def payload_pid(self) -> int | None:
        """The process whose own peak is the run's floor: the main process, or inside a sandbox
        the script's process (found once bubblewrap has started it)."""
        if not self._sandboxed:
            return self.pid
        if self._payload is not None:
            stat = read_stat(self._payload[0])
            if stat is not None and stat.starttime == self._payload[1]:
                return self._payload[0]
            return None
        init = _first_child(self.pid)  # bwrap (outside) -> bwrap init (pid 1 inside)
        script = None if init is None else _first_child(init)
        if init is not None and self._init is None:
            init_stat = read_stat(init)
            if init_stat is not None:
                self._init = (init, init_stat.starttime)
        if script is None:
            return None
        stat = read_stat(script)
        if stat is None:
            return None
        self._payload = (script, stat.starttime)
        return script

    def tree_rss(self, tree: RunTree) -> int:
        """The run's memory: its processes' summed RSS, less bubblewrap's own two processes."""
        total = tree.rss_bytes()
        if self._sandboxed:
            init = _first_child(self.pid)
            for pid in (self.pid, init):
                member = None if pid is None else tree.members.get(pid)
                if member is not None:
                    total -= member.rss_pages * PAGE_SIZE
        return max(0, total)

    def _record_sample(self, rss: int, main_peak: int) -> None:
        with self._lock:
            self._samples += 1
            self._sample_sum += rss
            self._sample_max = max(self._sample_max, rss)
            self._os_peak = max(self._os_peak, main_peak)


class _Monitor:
    """The one thread that samples the memory of every running execution."""

    def __init__(self, interval: float, procs: Callable[[], dict[int, ProcStat]] = scan) -> None:
        self.interval = interval
        self.procs = procs
        """The processes a run's may be among: every one on the machine, or fewer (see
        ``own_descendants``)."""
        self.on_limit: Callable[[PsutilRunHandle], None] | None = None
        self.scanner = TreeScanner(RUN_MARKER_VARIABLE.encode())
        self.scan_lock = threading.Lock()
        self._cond = threading.Condition()
        self._runs: list[PsutilRunHandle] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, run: PsutilRunHandle) -> None:
        with self._cond:
            if self._closed:
                return  # closing down: runs still going are followed, no longer sampled
            self._runs.append(run)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="ctm-run-monitor", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def remove(self, run: PsutilRunHandle) -> None:
        with self._cond:
            if run in self._runs:
                self._runs.remove(run)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def refresh(self, trees: list[RunTree], *, sample: bool = False) -> None:
        """Scan the processes once and update the members of ``trees``: for a ``sample``, the
        ones ``procs`` gives; else (stops, leftovers) every process on the machine, since the
        kernel's children lists can miss a process while it is being reparented."""
        with self.scan_lock:
            self.scanner.attribute(trees, self.procs() if sample else scan())

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while True:
            with self._cond:
                while not self._closed and not self._runs:
                    self._cond.wait()
                    next_tick = time.monotonic() + self.interval  # start() took the first sample
                if self._closed:
                    return
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue  # re-check: closed, runs gone, or woken early
                runs = list(self._runs)
            next_tick = max(next_tick + self.interval, time.monotonic())
            try:
                self._tick(runs)
            except Exception:  # never let one bad tick end the sampling of every run
                log.exception("memory sampling failed")

    def _tick(self, runs: list[PsutilRunHandle]) -> None:
        live = [run for run in runs if not run._main_exited.is_set()]
        if not live:
            return
        self.refresh([run._tree for run in live], sample=True)
        for run in live:
            tree = run._tree
            if tree.main_alive():
                payload = run.payload_pid()
                rss = run.tree_rss(tree)
                if payload is not None or not run._sandboxed:  # not bubblewrap's set-up alone
                    run._record_sample(rss, 0 if payload is None else read_peak_rss(payload))
                self._check_limits(run, tree, rss)

    def _check_limits(self, run: PsutilRunHandle, tree: RunTree, rss: int) -> None:
        """End a run whose tree passed its memory or process limit (the note says which)."""
        launch = run.launch
        if launch is None or run._limit_note is not None or self.on_limit is None:
            return
        note = None
        if launch.memory_limit_bytes is not None and rss > launch.memory_limit_bytes:
            note = (
                f"memory limit {_mb(launch.memory_limit_bytes)} MB exceeded "
                f"(peak {rss / MB:.1f} MB)"
            )
        elif launch.max_processes is not None and not launch.sandboxed:
            # Inside a sandbox the kernel refuses the extra fork (prlimit --nproc) instead.
            count = len(tree.members)
            if count > launch.max_processes:
                note = f"process limit {launch.max_processes} exceeded ({count} processes)"
        if note is not None:
            run._limit_note = note
            self.on_limit(run)


class _CpuThrottle:
    """Holds a run to ``cores`` CPUs on average without cgroups: every ``_CPU_WINDOW`` it adds up
    the CPU time the run's processes used, and when that is more than ``cores`` times the
    window, stops them all (SIGSTOP) for as long as the excess takes at that rate, then
    continues them (SIGCONT). Coarse (a tenth of a second), but a busy loop on every core of
    the machine is held to its share. Processes are those the monitor last attributed to the
    run, plus the main process."""

    def __init__(self, run: PsutilRunHandle, cores: float) -> None:
        self.run = run
        self.cores = cores
        self._lock = threading.Lock()
        self._paused: list[tuple[int, int]] = []
        self._seen: dict[tuple[int, int], int] = {}
        self._released = False

    def loop(self) -> None:
        run = self.run
        while not run._main_exited.wait(_CPU_WINDOW):
            used = self._used_seconds()
            excess = used / self.cores - _CPU_WINDOW
            if excess > 0.005 and self._pause():
                run._main_exited.wait(min(excess, 2.0))
                self._resume()

    def _members(self) -> list[tuple[int, int]]:
        """The run's processes now: everything below its main process (a fresh walk, so a
        process forked a moment ago is in), plus what the monitor attributed to it (escapees
        reparented out of the tree)."""
        tree = self.run._tree
        members = {(p.pid, p.starttime) for p in tree.members.values()}
        for pid in descendants(tree.main_pid):
            stat = read_stat(pid)
            if stat is not None:
                members.add((pid, stat.starttime))
        return list(members)

    def _used_seconds(self) -> float:
        """CPU seconds the run's processes used since the last call. A process's figure holds
        its reaped children's time too, so a short-lived child is counted when its parent
        reaps it; the part of it already counted while it lived is taken off then."""
        used = 0
        seen: dict[tuple[int, int], int] = {}
        for key in self._members():
            ticks = read_cpu_ticks(key[0], key[1])
            if ticks is None:
                continue
            seen[key] = ticks
            used += ticks - self._seen.get(key, 0)  # a new process: all its time is recent
        used -= sum(t for key, t in self._seen.items() if key not in seen)
        self._seen = seen
        return max(0, used) / _CLOCK_TICKS

    def _pause(self) -> bool:
        with self._lock:
            if self._released:
                return False
            keep = {self.run.pid, _first_child(self.run.pid)} if self.run._sandboxed else set()
            self._paused = [m for m in self._members() if m[0] not in keep]  # not bubblewrap
            for pid, starttime in self._paused:
                _signal_process(pid, starttime, signal.SIGSTOP)
            return True

    def _resume(self) -> None:
        with self._lock:
            paused, self._paused = self._paused, []
            for pid, starttime in paused:
                _signal_process(pid, starttime, signal.SIGCONT)

    def release(self) -> None:
        """Continue whatever is paused and pause no more (the run is ending or being stopped)."""
        with self._lock:
            self._released = True
        self._resume()


def _wait_pidfd(pidfd: int, timeout: float | None) -> bool:
    """Wait until the process of ``pidfd`` has exited (True) or ``timeout`` passed (False)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if timeout is None:
        return bool(poller.poll(None))
    end = time.monotonic() + timeout
    while True:
        # poll() takes at most a C int of milliseconds (~24.8 days); longer waits go in steps.
        ms = max(0, min(int((end - time.monotonic()) * 1000 + 0.999), _MAX_POLL_MS))
        if poller.poll(ms):
            return True
        if time.monotonic() >= end:
            return False


def _self_peak_rss() -> int:
    return read_peak_rss(os.getpid())


class PsutilProcessRunner:
    """Runs ``RunSpec``s as child processes: capped merged log, tree memory, stop and timeout.

    ``sample_interval``: seconds between memory samples (one ``/proc`` scan for all runs).
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
        sample_interval: float = 0.5,
        log_cap_bytes: int = 10 * 1024 * 1024,
        secret_env_prefixes: Sequence[str] = ("CTM_",),
        timeout_grace: float = 10.0,
        leftover_grace: float = 2.0,
        log_flush_interval: float = 1.0,
        instance_id: str | None = None,
        identities: Identities | None = None,
        sandbox: Sandbox | None = None,
        only_descendants: bool = False,
    ) -> None:
        """``only_descendants``: this process is a child subreaper that runs nothing but its
        runs (a run supervisor), so every process of a run, escapees included, is one of its
        descendants: memory samples read those instead of all of ``/proc``."""
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
        self._monitor = _Monitor(sample_interval, own_descendants if only_descendants else scan)
        self._monitor.on_limit = self._end_over_limit
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
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(self._secret_prefixes)
            and key not in SERVER_ONLY_VARIABLES
            and not _is_stacked_conda_prefix(key)
        }
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
                    argv, cwd=spec.cwd, readonly=readonly, writable=writable,
                    network=spec.network, max_processes=limits.max_processes,
                    uid=None if identity is None else identity.uid,
                    gid=None if identity is None else identity.gid,
                    tmpfs_bytes=memory,
                )
            except SandboxUnavailable as exc:
                raise OSError(str(exc)) from None
            cwd = "/"
            identity = None  # the sandbox switches to the run's uid itself
        return Launch(
            argv=tuple(argv), cwd=cwd, env=env, token=token,
            uid=None if identity is None else identity.uid,
            gid=None if identity is None else identity.gid,
            sandboxed=self._sandbox is not None,
            memory_limit_bytes=memory, max_processes=limits.max_processes,
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
            target=_copy_output, args=(run,), name=f"ctm-run-output-{run.pid}", daemon=True
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
        self._terminate(run, grace_seconds)
        run._done.wait()

    def _early_peaks(self, run: PsutilRunHandle, deadline: float | None) -> None:
        """Read the main process's own peak (VmHWM) a few times in its first moments.

        A short script reaches its peak within milliseconds and may end before the monitor's
        next tick; without these reads its only figure would be the one taken right after
        ``exec``, when almost nothing is mapped yet. Each read is one small /proc file.
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
            if _wait_pidfd(run._pidfd, wait):
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
                    run._early_rss.append(main.rss_pages * PAGE_SIZE)

    def _follow(self, run: PsutilRunHandle) -> None:
        """The run's waiting thread: timeout, leftovers, reaping, end of output, result."""
        try:
            run._tree  # noqa: B018 - the first sample, then the monitor's
            self._monitor.add(run)
            if run.launch is not None and run.launch.cpu_cores is not None:
                throttle = _CpuThrottle(run, run.launch.cpu_cores)
                run._throttle = throttle
                threading.Thread(
                    target=throttle.loop, name=f"ctm-run-cpu-{run.pid}", daemon=True
                ).start()
            timeout = run.spec.timeout_seconds
            deadline = None if timeout is None else run.started + timeout
            self._early_peaks(run, deadline)
            while not _wait_pidfd(
                run._pidfd, None if deadline is None else deadline - time.monotonic()
            ):
                deadline = None
                with run._lock:
                    stopping = run._term_sent
                    run._timed_out = not stopping
                if not stopping:
                    self._terminate(run, self._timeout_grace)
            ended = time.monotonic()
            run._main_exited.set()
            if run._throttle is not None:
                run._throttle.release()
            self._monitor.remove(run)
            leftovers = self._alive(run)
            if leftovers and not run._sandboxed:  # a sandbox's die with it: nothing to tell
                run._notes.append(
                    f"[ctm: {len(leftovers)} process(es) still running after the main process "
                    "exited were stopped]"
                )
                self._terminate(run, self._leftover_grace)
            elif leftovers:
                self._terminate(run, 0.0)
            with run._lock:
                _pid, status, usage = os.wait4(run.pid, 0)
                run._reaped = True
            exit_code = os.waitstatus_to_exitcode(status)
            run._popen.returncode = exit_code  # so that Popen never waits for this pid itself
            script_peak = _reap_sandbox_init(run)
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
            run._result = _result(run, exit_code, ended - run.started, usage.ru_maxrss * 1024)
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

    def _alive(self, run: PsutilRunHandle) -> list[ProcStat]:
        """Every process of the run alive now: a fresh scan."""
        tree = run._tree
        self._monitor.refresh([tree])
        return list(tree.members.values())

    def _terminate(self, run: PsutilRunHandle, grace: float) -> None:
        """SIGTERM (once per run), wait up to ``grace`` for every process to end, SIGKILL the
        rest until none is alive."""
        with run._lock:
            send_term = not run._term_sent and grace > 0
            run._term_sent = True
        deadline = time.monotonic() + max(0.0, grace)
        if send_term:
            _read_last_peak(run)
            self._signal(run, signal.SIGTERM, self._alive(run))
        while grace > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not _wait_pidfd(run._pidfd, 0):
                _wait_pidfd(run._pidfd, remaining)
                continue
            if not self._alive(run):
                return
            time.sleep(min(0.05, remaining))
        kill_deadline = time.monotonic() + _KILL_WAIT_LIMIT
        pause = 0.002
        while True:
            alive = self._alive(run)
            if not alive:
                return
            self._signal(run, signal.SIGKILL, alive)
            if time.monotonic() > kill_deadline:
                log.warning("run %s: processes %s survive SIGKILL", run.pid, [p.pid for p in alive])
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _end_over_limit(self, run: PsutilRunHandle) -> None:
        """The monitor found ``run`` over a limit: kill it now (in a thread of its own, so the
        monitor goes on sampling the other runs)."""
        threading.Thread(
            target=self._terminate, args=(run, 0.0), name=f"ctm-run-limit-{run.pid}", daemon=True
        ).start()

    def _signal(self, run: PsutilRunHandle, sig: int, members: list[ProcStat]) -> None:
        """``sig`` to the run's process group, then to each member outside it (each once).

        In a sandbox, a gentle signal goes to the script's processes only: bubblewrap dies of it
        at once and takes the whole sandbox with it, which would leave no grace."""
        if run._throttle is not None:
            run._throttle.release()  # a stopped process would not see SIGTERM until continued
        if run._sandboxed and sig != signal.SIGKILL:
            init = _first_child(run.pid)
            for p in members:
                if p.pid not in (run.pid, init):
                    _signal_process(p.pid, p.starttime, sig)
            return
        group_signalled = False
        with run._lock:
            if not run._reaped:  # the unreaped main holds the group id: it cannot be reused
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.pid, sig)
                    group_signalled = True
        for p in members:
            if not (group_signalled and p.pgrp == run.pid):
                _signal_process(p.pid, p.starttime, sig)



def stop_marked_runs(
    instance_id: str,
    own_tokens: set[str],
    grace_seconds: float,
    refresh: Callable[[list[RunTree]], None] | None = None,
    *,
    only: str | None = None,
) -> int:
    """Stop every process whose marker names ``instance_id`` but none of ``own_tokens`` (with
    their descendants and sessions): SIGTERM, SIGKILL after ``grace_seconds``. Returns how many
    processes were stopped. ``refresh`` rescans the trees (a fresh scanner when None).
    ``only``: stop that one run's processes and no other."""
    prefix = f"{instance_id}:".encode()
    own = {token.encode() for token in own_tokens}
    variable = RUN_MARKER_VARIABLE.encode()
    if refresh is None:
        scanner = TreeScanner(variable)

        def refresh(trees: list[RunTree]) -> None:
            scanner.attribute(trees, scan())

    trees: dict[bytes, RunTree] = {}
    for p in sorted(scan().values(), key=lambda p: p.starttime):
        if not p.alive or p.pid == os.getpid():
            continue
        token = read_environ_value(p.pid, variable)
        if token is None or not token.startswith(prefix) or token in own:
            continue
        if only is not None and token != only.encode():
            continue
        tree = trees.get(token)
        if tree is None:  # the oldest process of that run stands for its main process
            trees[token] = RunTree(p.pid, p.starttime, token)
        else:
            tree.known[p.pid] = p.starttime
    if not trees:
        return 0

    def alive() -> list[ProcStat]:
        refresh(list(trees.values()))
        return [p for tree in trees.values() for p in tree.members.values()]

    victims = alive()
    seen = {(p.pid, p.starttime) for p in victims}
    for p in victims:
        _signal_process(p.pid, p.starttime, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace_seconds)
    kill_deadline = deadline + _KILL_WAIT_LIMIT
    while victims:
        if time.monotonic() >= kill_deadline:
            log.warning("stale run processes survive SIGKILL: %s", [p.pid for p in victims])
            break
        time.sleep(0.05)
        victims = alive()
        seen.update((p.pid, p.starttime) for p in victims)
        if time.monotonic() >= deadline:
            for p in victims:
                _signal_process(p.pid, p.starttime, signal.SIGKILL)
    log.info("stopped %d processes of runs left by an earlier server", len(seen))
    return len(seen)


def _signal_process(pid: int, starttime: int, sig: int) -> None:
    """Signal the process ``pid`` only if it is still the one that started at ``starttime``."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        stat = read_stat(pid)
        if stat is not None and stat.starttime == starttime:
            signal.pidfd_send_signal(pidfd, sig)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        os.close(pidfd)


def _copy_output(run: PsutilRunHandle) -> None:
    """The run's output thread: pipe -> capped log, until end of output or told to give up."""
    fd = run._read_fd
    capper = run._capper
    working = True  # after an unexpected error: keep draining the pipe, so the program never
    # blocks on a full pipe, but write nothing more
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(run._wake_r, select.POLLIN)
    try:
        while True:
            wait = capper.seconds_until_flush() if working else None
            events = poller.poll(None if wait is None else int(wait * 1000) + 1)
            give_up = any(efd == run._wake_r for efd, _ in events)
            for _ in range(_READS_PER_WAKE):
                try:
                    data = os.read(fd, _READ_CHUNK)
                except BlockingIOError:
                    break
                if not data:
                    return
                if working:
                    try:
                        capper.feed(data)
                    except Exception:
                        log.exception("copying the output of run %s failed", run.pid)
                        working = False
            if working:
                capper.flush_if_due()
            if give_up:
                return
    finally:
        os.close(fd)


def own_descendants() -> dict[int, ProcStat]:
    """This process's descendants (itself left out), by pid: the kernel's children lists, a
    few reads per process of the run instead of one per process on the machine."""
    me = os.getpid()
    procs: dict[int, ProcStat] = {}
    for pid in descendants(me):
        stat = None if pid == me else read_stat(pid)
        if stat is not None:
            procs[pid] = stat
    return procs


def _read_last_peak(run: PsutilRunHandle) -> None:
    """Read the script's own peak once more before it is signalled: a run stopped between two
    samples would otherwise keep only what the monitor saw before its last allocation."""
    payload = run.payload_pid()
    if payload is None:
        return
    peak = read_peak_rss(payload)
    with run._lock:
        run._os_peak = max(run._os_peak, peak)


def _reap_sandbox_init(run: PsutilRunHandle) -> int:
    """The OS's own peak of a sandboxed script: bubblewrap's init reaped the script, so its
    ``wait4`` figure holds the script's peak. The outer bubblewrap exits without reaping init;
    init then comes to this process when it is a child subreaper (the run supervisor is).
    0 when init is not ours to reap (an in-process runner) or unknown."""
    if not run._sandboxed or run._init is None:
        return 0
    pid, starttime = run._init
    stat = read_stat(pid)
    if stat is None or stat.starttime != starttime or stat.ppid != os.getpid():
        return 0
    try:
        _pid, _status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return 0
    return int(usage.ru_maxrss) * 1024


def _mb(value: int) -> str:
    """Bytes as MB for a message: ``256`` or ``0.5``."""
    return f"{value / MB:g}"


def _first_child(pid: int | None) -> int | None:
    """The oldest live child of ``pid`` (bubblewrap has exactly one), or None."""
    found = [] if pid is None else children(pid, main_thread_only=True)
    return found[0] if found else None


def _result(run: PsutilRunHandle, exit_code: int, duration: float, maxrss: int) -> RunResult:
    with run._lock:
        os_peak = run._os_peak
        if maxrss > run._pollution_bound:
            os_peak = max(os_peak, maxrss)
        if run._samples > 1:
            peak = max(run._sample_max, os_peak)
            avg = run._sample_sum // run._samples
        elif run._samples or run._early_rss:
            # Ended before a second regular sample: its early reads are all there is to average.
            count = run._samples + len(run._early_rss)
            peak = max(run._sample_max, os_peak, *run._early_rss)
            avg = (run._sample_sum + sum(run._early_rss)) // count
        else:
            peak = avg = os_peak
        if avg <= 0:  # only a peak was seen: it is the one figure there is
            avg = peak
    return RunResult(
        exit_code=exit_code,
        duration=duration,
        peak_memory=peak,
        avg_memory=avg,
        timed_out=run._timed_out,
        limit_exceeded=run._limit_note,
    )


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _own(handle: RunHandle) -> PsutilRunHandle:
    if not isinstance(handle, PsutilRunHandle):
        raise TypeError(f"not a handle of this runner: {handle!r}")
    return handle


def _is_stacked_conda_prefix(key: str) -> bool:
    """``CONDA_PREFIX_1``, ``CONDA_PREFIX_2``...: what nested ``conda activate`` leaves."""
    return key.startswith("CONDA_PREFIX_") and key[len("CONDA_PREFIX_") :].isdigit()


def _open_log(path: str) -> BinaryIO:
    """Create (or empty) the log, readable by the server's user only."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    return open(fd, "r+b")  # noqa: SIM115 - the capper closes it
