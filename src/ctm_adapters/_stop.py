"""Stopping: the SIGTERM-grace-SIGKILL of one run's processes (``RunStopper``, for
``PsutilProcessRunner``'s stops, timeouts, limits and leftovers) and the sweep of runs found by
their marker variable alone (``stop_marked_runs``: runs of an earlier life of the server, or of a
supervisor that died).

Signals only ever reach processes of the run: the process group is signalled only while the main
process is unreaped (a zombie still holds its pid, so the group id cannot have been reused), and
single processes through a pidfd opened before checking their start time
(``_proctree.signal_process``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from ctm_adapters._monitor import Monitor, wait_pidfd
from ctm_adapters._proctree import (
    ProcStat,
    RunTree,
    TreeScanner,
    read_environ_value,
    scan,
    signal_process,
)
from ctm_adapters._run import RUN_MARKER_VARIABLE, PsutilRunHandle, first_child, read_last_peak

log = logging.getLogger("ctm_adapters.process")

_KILL_WAIT_LIMIT = 30.0  # after SIGKILL: how long to wait for processes in uninterruptible sleep


class RunStopper:
    """Ends runs of one runner; its scans go through the runner's ``monitor`` (one scanner)."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def alive(self, run: PsutilRunHandle) -> list[ProcStat]:
        """Every process of the run alive now: a fresh scan."""
        tree = run._tree
        self._monitor.refresh([tree])
        return list(tree.members.values())

    def terminate(self, run: PsutilRunHandle, grace: float) -> None:
        """SIGTERM (once per run), wait up to ``grace`` for every process to end, SIGKILL the
        rest until none is alive."""
        with run._lock:
            send_term = not run._term_sent and grace > 0
            run._term_sent = True
        deadline = time.monotonic() + max(0.0, grace)
        if send_term:
            read_last_peak(run)
            self.signal(run, signal.SIGTERM, self.alive(run))
        while grace > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not wait_pidfd(run._pidfd, 0):
                wait_pidfd(run._pidfd, remaining)
                continue
            if not self.alive(run):
                return
            time.sleep(min(0.05, remaining))
        kill_deadline = time.monotonic() + _KILL_WAIT_LIMIT
        pause = 0.002
        while True:
            alive = self.alive(run)
            if not alive:
                return
            self.signal(run, signal.SIGKILL, alive)
            if time.monotonic() > kill_deadline:
                log.warning("run %s: processes %s survive SIGKILL", run.pid, [p.pid for p in alive])
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def end_over_limit(self, run: PsutilRunHandle) -> None:
        """The monitor found ``run`` over a limit: kill it now (in a thread of its own, so the
        monitor goes on sampling the other runs)."""
        threading.Thread(
            target=self.terminate, args=(run, 0.0), name=f"ctm-run-limit-{run.pid}", daemon=True
        ).start()

    def signal(self, run: PsutilRunHandle, sig: int, members: list[ProcStat]) -> None:
        """``sig`` to the run's process group, then to each member outside it (each once).

        In a sandbox, a gentle signal goes to the script's processes only: bubblewrap dies of it
        at once and takes the whole sandbox with it, which would leave no grace."""
        if run._throttle is not None:
            run._throttle.release()  # a stopped process would not see SIGTERM until continued
        if run._sandboxed and sig != signal.SIGKILL:
            init = first_child(run.pid)
            for p in members:
                if p.pid not in (run.pid, init):
                    signal_process(p.pid, p.starttime, sig)
            return
        group_signalled = False
        with run._lock:
            if not run._reaped:  # the unreaped main holds the group id: it cannot be reused
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.pid, sig)
                    group_signalled = True
        for p in members:
            if not (group_signalled and p.pgrp == run.pid):
                signal_process(p.pid, p.starttime, sig)


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
        signal_process(p.pid, p.starttime, signal.SIGTERM)
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
                signal_process(p.pid, p.starttime, signal.SIGKILL)
    log.info("stopped %d processes of runs left by an earlier server", len(seen))
    return len(seen)
