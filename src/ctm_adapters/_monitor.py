"""The memory monitor of ``PsutilProcessRunner``: one thread samples every running execution's
process tree each ``sample_interval`` (one scan for all of them) and ends a run that passes its
memory or process limit; plus the CPU throttle of a run with ``cpu_cores`` and the pidfd wait."""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable

from ctm_adapters._proctree import (
    ProcStat,
    RunTree,
    TreeScanner,
    cpu_seconds,
    descendant_stats,
    read_peak_rss,
    scan,
    signal_process,
)
from ctm_adapters._run import MB, RUN_MARKER_VARIABLE, PsutilRunHandle, first_child, mb

log = logging.getLogger("ctm_adapters.process")

_MAX_POLL_MS = 2**31 - 1
_CPU_WINDOW = 0.1  # seconds between looks at a CPU-limited run's use


class Monitor:
    """The one thread that samples the memory of every running execution."""

    def __init__(self, interval: float, procs: Callable[[int], dict[int, ProcStat]] = scan) -> None:
        self.interval = interval
        self.procs = procs
        """The processes a run's may be among, given the oldest run's start (no older process
        can be one): every one on the machine, or fewer (see ``own_descendants``)."""
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
        since = min((tree.main_starttime for tree in trees), default=0)
        with self.scan_lock:
            self.scanner.attribute(trees, self.procs(since) if sample else scan(since))

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
                f"memory limit {mb(launch.memory_limit_bytes)} MB exceeded (peak {rss / MB:.1f} MB)"
            )
        elif launch.max_processes is not None and not launch.sandboxed:
            # Inside a sandbox the kernel refuses the extra fork (prlimit --nproc) instead.
            count = len(tree.members)
            if count > launch.max_processes:
                note = f"process limit {launch.max_processes} exceeded ({count} processes)"
        if note is not None:
            run._limit_note = note
            self.on_limit(run)


class CpuThrottle:
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
        self._seen: dict[tuple[int, int], float] = {}
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
        below = descendant_stats(tree.main_pid, include_root=True)
        members.update((p.pid, p.starttime) for p in below.values())
        return list(members)

    def _used_seconds(self) -> float:
        """CPU seconds the run's processes used since the last call. A process's figure holds
        its reaped children's time too, so a short-lived child is counted when its parent
        reaps it; the part of it already counted while it lived is taken off then."""
        used = 0.0
        seen: dict[tuple[int, int], float] = {}
        for key in self._members():
            seconds = cpu_seconds(key[0], key[1])
            if seconds is None:
                continue
            seen[key] = seconds
            used += seconds - self._seen.get(key, 0.0)  # a new process: all its time is recent
        used -= sum(t for key, t in self._seen.items() if key not in seen)
        self._seen = seen
        return max(0.0, used)

    def _pause(self) -> bool:
        with self._lock:
            if self._released:
                return False
            keep = {self.run.pid, first_child(self.run.pid)} if self.run._sandboxed else set()
            self._paused = [m for m in self._members() if m[0] not in keep]  # not bubblewrap
            for pid, starttime in self._paused:
                signal_process(pid, starttime, signal.SIGSTOP)
            return True

    def _resume(self) -> None:
        with self._lock:
            paused, self._paused = self._paused, []
            for pid, starttime in paused:
                signal_process(pid, starttime, signal.SIGCONT)

    def release(self) -> None:
        """Continue whatever is paused and pause no more (the run is ending or being stopped)."""
        with self._lock:
            self._released = True
        self._resume()


def wait_pidfd(pidfd: int, timeout: float | None) -> bool:
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


def own_descendants(started_since: int = 0) -> dict[int, ProcStat]:
    """This process's descendants (itself left out), by pid: the kernel's children lists, a
    few reads per process of the run instead of one per process on the machine."""
    return descendant_stats(os.getpid(), started_since)
