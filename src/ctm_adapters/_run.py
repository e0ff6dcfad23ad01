"""One run of ``PsutilProcessRunner``: what it was started with (``Launch``), its handle with the
figures gathered while it goes on, the thread that copies its output into the log, and the
result made of it all at its end."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import threading
import weakref
from typing import TYPE_CHECKING, Any

import attrs

from ctm_adapters._logcap import LogCapper
from ctm_adapters._proctree import RunTree, children, read_peak_rss, read_stat, start_ticks
from ctm_core.ports import RunResult, RunSpec

if TYPE_CHECKING:
    from ctm_adapters._monitor import CpuThrottle

log = logging.getLogger("ctm_adapters.process")

RUN_MARKER_VARIABLE = "CTM_RUN_MARKER"
"""Set in every run's environment to a random value: finds its processes that escaped the tree."""

MB = 1024 * 1024
_READ_CHUNK = 256 * 1024
_READS_PER_WAKE = 64  # then look at the wake-up pipe again, however fast the program prints


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
            argv=tuple(data["argv"]),
            cwd=data["cwd"],
            env=dict(data["env"]),
            token=data["token"],
            uid=data.get("uid"),
            gid=data.get("gid"),
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
        self._throttle: CpuThrottle | None = None
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
                    self._record_sample(main.rss, read_peak_rss(self.pid))
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
            if start_ticks(self._payload[0]) == self._payload[1]:
                return self._payload[0]
            return None
        init = first_child(self.pid)  # bwrap (outside) -> bwrap init (pid 1 inside)
        script = None if init is None else first_child(init)
        if init is not None and self._init is None:
            init_start = start_ticks(init)
            if init_start is not None:
                self._init = (init, init_start)
        if script is None:
            return None
        script_start = start_ticks(script)
        if script_start is None:
            return None
        self._payload = (script, script_start)
        return script

    def tree_rss(self, tree: RunTree) -> int:
        """The run's memory: its processes' summed RSS, less bubblewrap's own two processes."""
        total = tree.rss_bytes()
        if self._sandboxed:
            init = first_child(self.pid)
            for pid in (self.pid, init):
                member = None if pid is None else tree.members.get(pid)
                if member is not None:
                    total -= member.rss
        return max(0, total)

    def _record_sample(self, rss: int, main_peak: int) -> None:
        with self._lock:
            self._samples += 1
            self._sample_sum += rss
            self._sample_max = max(self._sample_max, rss)
            self._os_peak = max(self._os_peak, main_peak)


def copy_output(run: PsutilRunHandle) -> None:
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


def read_last_peak(run: PsutilRunHandle) -> None:
    """Read the script's own peak once more before it is signalled: a run stopped between two
    samples would otherwise keep only what the monitor saw before its last allocation."""
    payload = run.payload_pid()
    if payload is None:
        return
    peak = read_peak_rss(payload)
    with run._lock:
        run._os_peak = max(run._os_peak, peak)


def reap_sandbox_init(run: PsutilRunHandle) -> int:
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


def mb(value: int) -> str:
    """Bytes as MB for a message: ``256`` or ``0.5``."""
    return f"{value / MB:g}"


def first_child(pid: int | None) -> int | None:
    """The oldest live child of ``pid`` (bubblewrap has exactly one), or None."""
    found = [] if pid is None else children(pid, main_thread_only=True)
    return found[0] if found else None


def result_of(run: PsutilRunHandle, exit_code: int, duration: float, maxrss: int) -> RunResult:
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
            # No read at all (the run ended before the first, e.g. on a busy machine): the OS's
            # figure, even if it may count the parent's pages from before exec, is closer to the
            # truth than 0 and is never below the run's own peak.
            peak = avg = os_peak or maxrss
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
