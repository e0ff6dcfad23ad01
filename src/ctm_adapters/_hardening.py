"""What the server does to itself at start so that processes of its own uid learn nothing:
it becomes non-dumpable (no ptrace, ``/proc/<pid>/environ`` and ``mem`` closed to others of its
uid) and wipes secrets from its environment, including the copy ``/proc/<pid>/environ`` shows.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable

log = logging.getLogger(__name__)

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int = 0) -> int | None:
    """``prctl(option, value)``'s result; None when it cannot be called (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0))
    except (OSError, AttributeError):
        return None


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``; False when it could not be done."""
    return _prctl(_PR_SET_DUMPABLE, 0) == 0


def is_dumpable() -> bool:
    """The process's dumpable flag as the kernel holds it."""
    return bool(_prctl(_PR_GET_DUMPABLE))


def become_subreaper() -> bool:
    """Adopt orphaned descendants (``PR_SET_CHILD_SUBREAPER``), so that bubblewrap's init comes
    to this process to be reaped (its ``wait4`` figure holds the script's peak memory); False
    when it could not be done."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0


def scrub_environment(names: Iterable[str]) -> list[str]:
    """Remove ``names`` from ``os.environ`` and overwrite their values in the block the process
    started with (what ``/proc/self/environ`` reads, which ``unsetenv`` leaves as it was).
    Returns the names that were found."""
    wanted = [n for n in names if n in os.environ]
    for name in wanted:
        del os.environ[name]
    if not wanted:
        return []
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2 :].split()
        env_start = int(fields[47])  # field 50 of proc(5), counted after the command name
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except (OSError, ValueError, IndexError):
        log.warning("could not wipe %s from the process's start-up environment", wanted)
        return wanted
    offset = 0
    for entry in block.split(b"\0"):
        key = entry.split(b"=", 1)[0].decode(errors="replace")
        if key in wanted:
            start = env_start + offset + len(key) + 1
            length = len(entry) - len(key) - 1
            if length > 0:
                ctypes.memset(start, ord("*"), length)
        offset += len(entry) + 1
    return wanted
