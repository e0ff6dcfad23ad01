"""Which processes belong to which run (Linux only): process facts from psutil, the run rules here.

A run is its main process and everything that descends from it, including processes that left its
process group or session (``setsid``) and were reparented when their parent died. ``attribute``
finds a run's processes in one scan by four rules, applied until nothing new turns up:

1. processes seen as members before (remembered as pid + start time, so a reused pid never counts);
2. processes in a session or process group that some member created;
3. children of members (the parent -> children map is built once per scan);
4. processes started after the run whose environment carries the run's token variable (a net for
   double forks that escaped between two scans: fork, setsid, fork again, parent exits).
   Each such process's environment is read once in its life.

psutil gives each process's parent, status, resident memory, CPU times and start; ``os``
gives its process group and session (two system calls). A few things are read from ``/proc``
directly because psutil has no cheap way to them (docs/runs.md, "What is read from /proc
directly, and why"): the kernel's children lists (``children``, ``descendants``), the peak
``VmHWM`` (``read_peak_rss``) and one variable of a process's environment
(``read_environ_value``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

import psutil  # type: ignore[import-untyped]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_NOT_THERE = (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError)
_ENDED = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})
_REMEMBER_AT_LEAST = 1024  # start times remembered between scans (a cache: forgetting is harmless)


class ProcStat(NamedTuple):
    pid: int
    ppid: int
    pgrp: int
    sid: int
    state: str  # psutil's status ("running", "sleeping", "zombie"...)
    starttime: int  # clock ticks after boot: with the pid, identifies a process for good
    rss: int  # resident memory, bytes

    @property
    def alive(self) -> bool:
        """Neither a zombie nor dead (a zombie holds no memory and cannot be signalled away)."""
        return self.state not in _ENDED


class _StartTicks:
    """Each process's start in clock ticks after boot, the kernel's own figure.

    psutil gives a start on the wall clock (boot time + ticks), which a clock step moves; the
    rules and ``state.json`` keep ticks. Computed from a create time and a boot time read
    together (two reads of ``/proc/stat``), so it is remembered, by psutil's identity of the
    process (pid + start since boot, known from ``psutil.Process(pid)`` itself)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ticks: dict[Any, int] = {}
        self._limit = _REMEMBER_AT_LEAST

    def of(self, proc: Any) -> int:
        """The start of ``proc``, a ``psutil.Process`` made just now (its wall-clock create time
        is first asked here, so it is read beside the boot time)."""
        with self._lock:
            ticks = self._ticks.get(proc)
        if ticks is not None:
            return ticks
        ticks = round(float(proc.create_time() - psutil.boot_time()) * CLOCK_TICKS)
        with self._lock:
            if len(self._ticks) >= self._limit:
                self._ticks.clear()
            self._ticks[proc] = ticks
        return ticks

    def keep_only(self, pids: set[int]) -> None:
        """Forget the processes not among ``pids`` (after a scan of every process)."""
        with self._lock:
            self._ticks = {p: t for p, t in self._ticks.items() if p.pid in pids}
            self._limit = max(_REMEMBER_AT_LEAST, 2 * len(pids))


_START_TICKS = _StartTicks()


def _stat_of(proc: Any, ppid: int, status: str, memory: Any) -> ProcStat:
    pid = int(proc.pid)
    return ProcStat(
        pid=pid,
        ppid=int(ppid),
        pgrp=os.getpgid(pid),
        sid=os.getsid(pid),
        state=str(status),
        starttime=_START_TICKS.of(proc),
        rss=0 if memory is None else int(memory.rss),
    )


def _read(proc: Any) -> ProcStat | None:
    try:
        with proc.oneshot():
            try:
                memory = proc.memory_info()
            except (psutil.ZombieProcess, psutil.AccessDenied):
                memory = None
            return _stat_of(proc, proc.ppid(), proc.status(), memory)
    except _NOT_THERE:
        return None


def read_stat(pid: int) -> ProcStat | None:
    """One process's facts, or None when it does not exist (any more)."""
    try:
        proc = psutil.Process(pid)
    except _NOT_THERE:
        return None
    return _read(proc)


def start_ticks(pid: int) -> int | None:
    """The start (clock ticks after boot) of the process ``pid`` now; None when there is none."""
    try:
        return _START_TICKS.of(psutil.Process(pid))
    except _NOT_THERE:
        return None


def cpu_seconds(pid: int, starttime: int) -> float | None:
    """CPU time of the process and of the children it has reaped (user + system, seconds);
    None when it is gone (or is another process now: its start time differs)."""
    try:
        proc = psutil.Process(pid)
        if _START_TICKS.of(proc) != starttime:
            return None
        times = proc.cpu_times()
    except _NOT_THERE:
        return None
    return float(times.user + times.system + times.children_user + times.children_system)


def signal_process(pid: int, starttime: int, sig: int) -> None:
    """Signal the process ``pid`` only if it is still the one that started at ``starttime``.

    Through a pidfd opened before the check (psutil's ``send_signal`` checks, then signals the
    pid, which may have been reused in between): what passed the check gets the signal."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if start_ticks(pid) == starttime:
            signal.pidfd_send_signal(pidfd, sig)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        os.close(pidfd)


def scan(started_since: int = 0) -> dict[int, ProcStat]:
    """Every process on the machine started at ``started_since`` (clock ticks after boot) or
    later, by pid. Of an older one only its start is read (cheap, and remembered): no run that
    started since can hold it, and the rules never follow a process older than the run.

    A new ``psutil.Process`` per pid and scan, not ``psutil.process_iter``: that one keeps its
    ``Process`` objects between calls without checking the pid still names the same process,
    so a pid reused between two scans would come back with the old process's start time."""
    procs: dict[int, ProcStat] = {}
    older: set[int] = set()
    for pid in psutil.pids():
        try:
            proc = psutil.Process(pid)
            if started_since and _START_TICKS.of(proc) < started_since:
                older.add(pid)
                continue
        except _NOT_THERE:
            continue
        stat = _read(proc)
        if stat is not None:
            procs[pid] = stat
    _START_TICKS.keep_only(older.union(procs))
    return procs


def descendant_stats(
    root: int, started_since: int = 0, *, include_root: bool = False
) -> dict[int, ProcStat]:
    """The processes below ``root`` now (and ``root`` itself with ``include_root``) started at
    ``started_since`` or later, by pid: its descendants from the kernel's children lists, then
    psutil for each one's facts."""
    procs: dict[int, ProcStat] = {}
    for pid in descendants(root):
        if pid == root and not include_root:
            continue
        stat = read_stat(pid)
        if stat is not None and stat.starttime >= started_since:
            procs[pid] = stat
    return procs


# ---------------------------------------------------------------- read from /proc directly


def _read_file(path: str, size: int = 4096) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def children(pid: int, *, main_thread_only: bool = False) -> list[int]:
    """The live children of ``pid``, oldest first per thread, from the kernel's lists (those of
    every thread, or of the main thread alone). psutil's ``children()`` reads every process's
    ``stat`` instead: 0.01 ms against 1.5 ms, once per run supervisor and tick."""
    if main_thread_only:
        tids = [str(pid)]
    else:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
    found: list[int] = []
    for tid in tids:
        data = _read_file(f"/proc/{pid}/task/{tid}/children", 65536)
        if data:
            found.extend(int(w) for w in data.split() if w.isdigit())
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it now, from the kernel's children lists (cheaper than
    a scan of every process; a process reparented away from the tree is not found)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children(current))
    return found


def read_peak_rss(pid: int) -> int:
    """The kernel's high-water mark of the process's resident memory (``VmHWM``) in bytes.

    It covers the current program image only (it restarts at ``exec``), so it is not inflated by
    the parent's memory the way ``wait4``'s ``ru_maxrss`` is. 0 when unknown or exited.
    psutil does not give it on Linux.
    """
    data = _read_file(f"/proc/{pid}/status", 8192)
    if data is None:
        return 0
    start = data.find(b"\nVmHWM:")
    if start < 0:
        return 0
    line = data[start + 7 : data.find(b"\n", start + 1)]
    try:
        return int(line.split()[0]) * 1024  # always reported in kB
    except (IndexError, ValueError):
        return 0


def read_environ_value(pid: int, name: bytes) -> bytes | None:
    """The value of environment variable ``name`` of process ``pid`` as it was started.

    None when it is unset or its environment cannot be read (gone, other user, kernel thread).
    psutil's ``environ()`` decodes every variable into a dict: 4-5 times the cost of this for
    the one (bytes) value wanted, in sweeps that read every process's.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    key = name + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key) :]
    return None


class RunTree:
    """What is known about one run's processes; updated by ``TreeScanner.attribute``."""

    def __init__(self, main_pid: int, main_starttime: int, token: bytes) -> None:
        self.main_pid = main_pid
        self.main_starttime = main_starttime
        self.token = token
        self.known: dict[int, int] = {main_pid: main_starttime}  # pid -> starttime, ever seen
        self.sids: set[int] = {main_pid}
        self.pgids: set[int] = {main_pid}
        self.members: dict[int, ProcStat] = {}  # alive members at the last scan

    def main_alive(self) -> bool:
        main = self.members.get(self.main_pid)
        return main is not None

    def rss_bytes(self) -> int:
        """Summed resident memory of the alive members at the last scan."""
        return sum(p.rss for p in self.members.values())


class TreeScanner:
    """Attribution state kept across scans. Not thread-safe: callers hold one lock around it."""

    def __init__(self, token_variable: bytes) -> None:
        self._token_variable = token_variable
        self._tokens: dict[int, tuple[int, bytes | None]] = {}  # pid -> (starttime, token)
        # Never adopt the server's own session or group, nor the kernel's (0).
        self._forbidden = {0, 1, os.getpid(), os.getsid(0), os.getpgrp()}

    def attribute(self, trees: Iterable[RunTree], procs: dict[int, ProcStat]) -> None:
        """Set each tree's ``members`` from ``procs`` (one ``scan()`` or ``descendant_stats``)
        and remember what it saw."""
        trees = list(trees)
        if not trees:
            return
        children: defaultdict[int, list[int]] = defaultdict(list)
        by_sid: defaultdict[int, list[int]] = defaultdict(list)
        by_pgrp: defaultdict[int, list[int]] = defaultdict(list)
        for p in procs.values():
            children[p.ppid].append(p.pid)
            by_sid[p.sid].append(p.pid)
            by_pgrp[p.pgrp].append(p.pid)
        claimed: set[int] = set()
        found: dict[int, dict[int, ProcStat]] = {}
        for tree in trees:
            for pid, starttime in list(tree.known.items()):
                now = procs.get(pid)
                if now is None or now.starttime != starttime:
                    del tree.known[pid]  # gone for good: a pid's next owner is someone else
            seeds = list(tree.known)
            for sid in tree.sids:
                seeds.extend(by_sid.get(sid, ()))
            for pgid in tree.pgids:
                seeds.extend(by_pgrp.get(pgid, ()))
            members: dict[int, ProcStat] = {}
            self._grow(tree, seeds, members, procs, children, by_sid, by_pgrp)
            found[id(tree)] = members
            claimed.update(members)
        # Rule 4: the environment of each unclaimed process started since the oldest run began.
        oldest = min(tree.main_starttime for tree in trees)
        for pid in [pid for pid in self._tokens if pid not in procs]:
            del self._tokens[pid]
        by_token: defaultdict[bytes, list[int]] = defaultdict(list)
        for p in procs.values():
            if p.pid in claimed or p.starttime < oldest or p.pid in self._forbidden:
                continue
            cached = self._tokens.get(p.pid)
            if cached is None or cached[0] != p.starttime:
                cached = (p.starttime, read_environ_value(p.pid, self._token_variable))
                self._tokens[p.pid] = cached
            if cached[1] is not None:
                by_token[cached[1]].append(p.pid)
        for tree in trees:
            members = found[id(tree)]
            extra = by_token.get(tree.token)
            if extra:
                self._grow(tree, extra, members, procs, children, by_sid, by_pgrp)
            tree.members = {pid: p for pid, p in members.items() if p.alive}

    def _grow(
        self,
        tree: RunTree,
        seeds: list[int],
        members: dict[int, ProcStat],
        procs: dict[int, ProcStat],
        children: dict[int, list[int]],
        by_sid: dict[int, list[int]],
        by_pgrp: dict[int, list[int]],
    ) -> None:
        stack = seeds
        while stack:
            pid = stack.pop()
            if pid in members or pid in self._forbidden:
                continue
            p = procs.get(pid)
            if p is None or p.starttime < tree.main_starttime:
                continue  # not started after the run began: cannot be part of it
            members[pid] = p
            tree.known[pid] = p.starttime
            if p.sid not in tree.sids and p.sid not in self._forbidden:
                tree.sids.add(p.sid)
                stack.extend(by_sid.get(p.sid, ()))
            if p.pgrp not in tree.pgids and p.pgrp not in self._forbidden:
                tree.pgids.add(p.pgrp)
                stack.extend(by_pgrp.get(p.pgrp, ()))
            stack.extend(children.get(pid, ()))
