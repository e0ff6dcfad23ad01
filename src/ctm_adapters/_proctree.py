"""Which processes belong to which run, from one read of ``/proc/*/stat`` (Linux only).

A run is its main process and everything that descends from it, including processes that left its
process group or session (``setsid``) and were reparented when their parent died. ``attribute``
finds a run's processes in one scan by four rules, applied until nothing new turns up:

1. processes seen as members before (remembered as pid + start time, so a reused pid never counts);
2. processes in a session or process group that some member created;
3. children of members (the parent -> children map is built once per scan);
4. processes started after the run whose environment carries the run's token variable (a net for
   double forks that escaped between two scans: fork, setsid, fork again, parent exits).
   Each such process's environment is read once in its life.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ProcStat(NamedTuple):
    pid: int
    ppid: int
    pgrp: int
    sid: int
    state: str
    starttime: int  # clock ticks after boot: with the pid, identifies a process for good
    rss_pages: int

    @property
    def alive(self) -> bool:
        """Neither a zombie nor dead (a zombie holds no memory and cannot be signalled away)."""
        return self.state not in ("Z", "X", "x")


def _read(path: str, size: int = 4096) -> bytes | None:
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


def parse_stat(pid: int, data: bytes) -> ProcStat | None:
    """Parse the content of ``/proc/<pid>/stat`` (the command name may hold spaces and parens)."""
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            sid=int(fields[3]),
            state=fields[0].decode("ascii", "replace"),
            starttime=int(fields[19]),
            rss_pages=int(fields[21]),
        )
    except (IndexError, ValueError):
        return None


def read_stat(pid: int) -> ProcStat | None:
    """One process's stat, or None when it does not exist (any more)."""
    data = _read(f"/proc/{pid}/stat")
    return None if data is None else parse_stat(pid, data)


def read_cpu_ticks(pid: int, starttime: int) -> int | None:
    """CPU time of the process and of the children it has reaped (user + system, in clock
    ticks); None when it is gone (or is another process now: its start time differs)."""
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        if int(fields[19]) != starttime:
            return None
        return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    except (IndexError, ValueError):
        return None


def children(pid: int, *, main_thread_only: bool = False) -> list[int]:
    """The live children of ``pid``, oldest first per thread, from the kernel's lists (those of
    every thread, or of the main thread alone)."""
    if main_thread_only:
        tids = [str(pid)]
    else:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
    found: list[int] = []
    for tid in tids:
        data = _read(f"/proc/{pid}/task/{tid}/children", 65536)
        if data:
            found.extend(int(w) for w in data.split() if w.isdigit())
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it now, from the kernel's children lists (cheaper than
    a scan of ``/proc``; a process reparented away from the tree is not found)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children(current))
    return found


def scan() -> dict[int, ProcStat]:
    """Every process on the machine, by pid: one read of ``/proc/<pid>/stat`` each."""
    procs: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        stat = read_stat(pid)
        if stat is not None:
            procs[pid] = stat
    return procs


def read_peak_rss(pid: int) -> int:
    """The kernel's high-water mark of the process's resident memory (``VmHWM``) in bytes.

    It covers the current program image only (it restarts at ``exec``), so it is not inflated by
    the parent's memory the way ``wait4``'s ``ru_maxrss`` is. 0 when unknown or exited.
    """
    data = _read(f"/proc/{pid}/status", 8192)
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
        return sum(p.rss_pages for p in self.members.values()) * PAGE_SIZE


class TreeScanner:
    """Attribution state kept across scans. Not thread-safe: callers hold one lock around it."""

    def __init__(self, token_variable: bytes) -> None:
        self._token_variable = token_variable
        self._tokens: dict[int, tuple[int, bytes | None]] = {}  # pid -> (starttime, token)
        # Never adopt the server's own session or group, nor the kernel's (0).
        self._forbidden = {0, 1, os.getpid(), os.getsid(0), os.getpgrp()}

    def attribute(self, trees: Iterable[RunTree], procs: dict[int, ProcStat]) -> None:
        """Set each tree's ``members`` from ``procs`` (one ``scan()``) and remember what it saw."""
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
