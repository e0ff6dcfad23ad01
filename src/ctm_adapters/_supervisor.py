"""The run supervisor: one small process per run, so that a run outlives its server.

Forked by the fork server (``_forkserver``), or started as ``python -m ctm_adapters._supervisor
STATE_DIR`` when there is none, by ``SupervisedProcessRunner``, in a session of its own. It names
itself ``ctm-supervisor`` and works in ``STATE_DIR`` (so ``kill_stale_runs`` finds it whatever
its command line), reads ``STATE_DIR/spec.json`` (and deletes it: it holds the run's
environment), starts the program with an in-process ``PsutilProcessRunner`` (capped log, memory
of the whole tree, timeout, leftovers, ``wait4``), writes ``state.json`` (its own pid and start
time, the program's pid and marker token), tells the server the program's pid (or why it could
not start) in one JSON line on stdout, and at the end writes ``result.json`` atomically. SIGTERM
asks it to stop the run, with the grace in ``stop.json``.

A full disk never loses a result: the space of ``state.json`` and ``result.json`` is taken
before the program starts (a run that cannot have it does not start: ``ENOSPC``), and they are
written into it. Should the result still not be written (an I/O error), the supervisor tries
again, after a growing pause, until it is.

It is the program's parent, not the server: the program's exit status, output and peak memory
(``ru_maxrss`` counts the supervisor's small memory before ``exec``, not the server's; the
runner's pollution bound is the supervisor's own peak, forked or not) never depend on the server
being alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

SPEC = "spec.json"
STATE = "state.json"
STOP = "stop.json"
RESULT = "result.json"
SUPERVISOR_NAME = "ctm-supervisor"
"""A supervisor's process name (``/proc/PID/comm``); its working folder is its state folder."""
RESERVED = ".reserved"
"""Suffix of the file holding a JSON file's space until it is written (``reserve``)."""
RESERVE_BYTES = 4096
"""The space taken for ``state.json`` and ``result.json``: one page, far more than either."""
_RESULT_RETRY_MAX = 60.0


def write_json(path: str, data: dict[str, Any], *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, rename), mode 0600; ``durable``:
    fsync before the rename, so the content survives a crash of the machine too."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def reserve(path: str, size: int = RESERVE_BYTES) -> None:
    """Take the space of the JSON file ``path`` now: ``path + RESERVED``, ``size`` spaces (JSON
    ignores them). Raises ``OSError`` (``ENOSPC``) when the disk cannot give it."""
    tmp = path + RESERVED
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        data = memoryview(b" " * size)
        while data:
            data = data[os.write(fd, data) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)


def write_reserved(path: str, data: dict[str, Any], *, durable: bool = True) -> None:
    """``write_json``, into the space ``reserve`` took (overwritten in place, then renamed: no
    new space needed on a full disk); as ``write_json`` does when there is none, or too little."""
    tmp = path + RESERVED
    payload = json.dumps(data).encode()
    try:
        size = os.stat(tmp).st_size
    except FileNotFoundError:
        size = -1
    if len(payload) > size:
        write_json(path, data, durable=durable)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        return
    fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
    try:
        padded = memoryview(payload.ljust(size))
        offset = 0
        while offset < size:
            offset += os.pwrite(fd, padded[offset:], offset)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_result(path: str, data: dict[str, Any]) -> None:
    """``write_reserved``, again after a growing pause until it succeeds: the server waits
    for the result, which must never be lost."""
    pause = 1.0
    while True:
        try:
            write_reserved(path, data)
            return
        except OSError as exc:
            print(f"ctm-supervisor: cannot write {path} ({exc}); trying again", file=sys.stderr)
        time.sleep(pause)
        pause = min(pause * 2, _RESULT_RETRY_MAX)


def read_json(path: str) -> dict[str, Any] | None:
    """The object in ``path``; None when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main(state_dir: str) -> int:
    from ctm_adapters._hardening import become_subreaper
    from ctm_adapters._proctree import start_ticks
    from ctm_adapters._run import Launch
    from ctm_adapters.process import PsutilProcessRunner
    from ctm_core.ports import RunSpec

    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write(SUPERVISOR_NAME)
    with contextlib.suppress(OSError):  # missing: the spec is missing too, and said so below
        os.chdir(state_dir)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop_asked: list[int] = []  # a plain flag: the handler runs between two bytecodes
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop_asked.append(signum))

    spec_path = os.path.join(state_dir, SPEC)
    config = read_json(spec_path)
    if config is None:
        print(json.dumps({"error": [0, "run supervisor: no spec", spec_path]}), flush=True)
        return 2
    os.remove(spec_path)
    state_path, result_path = os.path.join(state_dir, STATE), os.path.join(state_dir, RESULT)
    try:  # before the program starts: a run whose result could not be kept does not start
        reserve(state_path)
        reserve(result_path)
    except OSError as exc:
        print(json.dumps({"error": [exc.errno, exc.strerror, exc.filename]}), flush=True)
        return 0
    become_subreaper()  # bubblewrap's init, with the script's peak memory, is reaped here
    runner = PsutilProcessRunner(
        sample_interval=config["sample_interval"],
        log_cap_bytes=config["log_cap_bytes"],
        secret_env_prefixes=(),
        timeout_grace=config["timeout_grace"],
        leftover_grace=config["leftover_grace"],
        log_flush_interval=config["log_flush_interval"],
        only_descendants=True,  # a subreaper: escapees come back to it
    )
    spec = RunSpec(
        argv=tuple(config["argv"]),
        cwd=config["cwd"],
        log_path=config["log_path"],
        env_add={},
        timeout_seconds=config["timeout_seconds"],
    )
    launch = Launch.from_json(config["launch"])
    try:
        handle = runner.start_prepared(spec, launch)
    except OSError as exc:
        print(json.dumps({"error": [exc.errno, exc.strerror, exc.filename]}), flush=True)
        return 0
    try:
        write_reserved(
            state_path,
            {
                "supervisor_pid": os.getpid(),
                "supervisor_starttime": start_ticks(os.getpid()) or 0,
                "pid": handle.pid,
                "token": launch.token,
            },
            durable=False,  # the server waits for it; after a crash of the machine no run is left
        )
    except OSError as exc:  # the run goes on; only its adoption by a restarted server is lost
        print(f"ctm-supervisor: cannot write {state_path} ({exc})", file=sys.stderr)
    print(json.dumps({"pid": handle.pid}), flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the server may be gone: never write to its pipe again
    os.close(devnull)

    stopper: threading.Thread | None = None
    while not handle.done:
        if stop_asked and stopper is None:
            stop = read_json(os.path.join(state_dir, STOP)) or {}
            grace = float(stop.get("grace", config["timeout_grace"]))
            stopper = threading.Thread(target=runner.stop, args=(handle, grace), daemon=True)
            stopper.start()
        handle._done.wait(0.1)
    result = runner.wait(handle)
    write_result(
        result_path,
        {
            "exit_code": result.exit_code,
            "duration": result.duration,
            "peak_memory": result.peak_memory,
            "avg_memory": result.avg_memory,
            "timed_out": result.timed_out,
            "limit_exceeded": result.limit_exceeded,
            "token": launch.token,  # a later run of the same execution id is told apart
        },
    )
    runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
