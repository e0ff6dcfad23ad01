"""``SupervisedProcessRunner``: runs that outlive the server (Linux).

Each run has a small supervisor process of its own (``ctm_adapters._supervisor``, in a new
session) that starts the program, copies its output into the capped log, samples its memory,
enforces its timeout, reaps it and writes its result to ``<log>.run/result.json``. Supervisors
are forked from the runner's fork server (``_forkserver``: one pre-imported helper process), so a
start costs a fork rather than an interpreter's start; without one each is a new interpreter.
The server only follows the supervisor through a pidfd, asks it to stop the run (SIGTERM plus the
grace in ``stop.json``) and reads the result. When the server dies (kill -9) or restarts, the run
goes on (so does it when the fork server dies); the next server ``adopt``s it from
``<log>.run/state.json`` and records its real end.

See docs/runs.md and docs/operations.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import psutil  # type: ignore[import-untyped]

from ctm_adapters._forkserver import ForkServer, ForkServerError
from ctm_adapters._monitor import wait_pidfd
from ctm_adapters._proctree import start_ticks
from ctm_adapters._run import RUN_MARKER_VARIABLE
from ctm_adapters._sandbox import Identities, Sandbox
from ctm_adapters._stop import stop_marked_runs
from ctm_adapters._supervisor import (
    RESULT,
    SPEC,
    STATE,
    STOP,
    SUPERVISOR_NAME,
    read_json,
    write_json,
)
from ctm_adapters.process import (
    LEFTOVER_GRACE,
    LOG_CAP_BYTES,
    LOG_FLUSH_INTERVAL,
    SAMPLE_INTERVAL,
    SECRET_ENV_PREFIXES,
    TIMEOUT_GRACE,
    PsutilProcessRunner,
)
from ctm_core.ports import RunHandle, RunResult, RunSpec

__all__ = ["SupervisedProcessRunner", "SupervisedRunHandle", "state_dir"]

log = logging.getLogger(__name__)

_START_TIMEOUT = 60.0  # for the supervisor to report the program's pid
_STOP_SLACK = 40.0  # beyond the grace: SIGKILL escalation and the end of output, in the supervisor
_FORK_SERVER_RETRY = 60.0  # seconds of interpreter starts after a fork server failed to serve


def state_dir(log_path: str) -> str:
    """The folder of a run's supervisor files, next to its log."""
    return log_path + ".run"


class SupervisedRunHandle:
    """One run followed through its supervisor."""

    pid: int
    """The program's main process (its process group and session)."""

    def __init__(
        self,
        *,
        pid: int,
        supervisor_pid: int,
        pidfd: int | None,
        directory: str,
        token: str,
        popen: subprocess.Popen[bytes] | None = None,
        result: RunResult | None = None,
    ) -> None:
        self.pid = pid
        self.supervisor_pid = supervisor_pid
        self.directory = directory
        self.token = token
        self._pidfd = pidfd
        self._popen = popen
        self._result = result
        self._lock = threading.Lock()
        if pidfd is not None:
            # Closed with the handle, never earlier: a late stop() must not use a reused number.
            weakref.finalize(self, _close_fd, pidfd)

    def __repr__(self) -> str:
        return f"<SupervisedRunHandle pid={self.pid} supervisor={self.supervisor_pid}>"

    @property
    def done(self) -> bool:
        """True once the supervisor has exited (the run has ended and its result is written)."""
        return self._result is not None or self._pidfd is None or wait_pidfd(self._pidfd, 0)


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class SupervisedProcessRunner:
    """The ``ProcessRunner`` port with one supervisor process per run; runs survive restarts.

    Options as ``PsutilProcessRunner``'s (they go to each run's supervisor); ``instance_id`` is
    required: it marks every run, so ``kill_stale_runs`` finds those that cannot be adopted.
    ``fork_server``: fork supervisors from a fork server (``_forkserver``, started with the
    first run, ended by ``close``), so a start costs a fork rather than an interpreter's start;
    False, or when no fork server can be had: each supervisor is a new interpreter.
    """

    runs_survive_restart = True

    def __init__(
        self,
        *,
        instance_id: str,
        sample_interval: float = SAMPLE_INTERVAL,
        log_cap_bytes: int = LOG_CAP_BYTES,
        secret_env_prefixes: Sequence[str] = SECRET_ENV_PREFIXES,
        timeout_grace: float = TIMEOUT_GRACE,
        leftover_grace: float = LEFTOVER_GRACE,
        log_flush_interval: float = LOG_FLUSH_INTERVAL,
        identities: Identities | None = None,
        sandbox: Sandbox | None = None,
        fork_server: bool = True,
    ) -> None:
        # Checks every option and makes each run's environment; never starts a run itself.
        self._env = PsutilProcessRunner(
            sample_interval=sample_interval,
            log_cap_bytes=log_cap_bytes,
            secret_env_prefixes=secret_env_prefixes,
            timeout_grace=timeout_grace,
            leftover_grace=leftover_grace,
            log_flush_interval=log_flush_interval,
            instance_id=instance_id,
            identities=identities,
            sandbox=sandbox,
        )
        self._instance_id = instance_id
        self._secret_prefixes = tuple(secret_env_prefixes)
        self._options = {
            "sample_interval": sample_interval,
            "log_cap_bytes": log_cap_bytes,
            "timeout_grace": timeout_grace,
            "leftover_grace": leftover_grace,
            "log_flush_interval": log_flush_interval,
        }
        self._active_tokens: set[str] = set()
        self._closed = False
        self._use_fork_server = fork_server
        self._forks: ForkServer | None = None
        self._forks_lock = threading.Lock()  # held to start or drop one, never to fork
        self._fork_server_retry = 0.0  # monotonic time before which none is started

    @property
    def fork_server_pid(self) -> int | None:
        """The fork server's pid while there is one (it starts with the first run)."""
        server = self._forks
        return None if server is None else server.pid

    def close(self) -> None:
        """Stop starting runs and end the fork server. Runs going on are left to their
        supervisors."""
        self._closed = True
        self._env.close()
        with self._forks_lock:
            server, self._forks = self._forks, None
        if server is not None:
            server.close()

    # ---------------------------------------------------------------- start

    def start(self, spec: RunSpec) -> SupervisedRunHandle:
        if self._closed:
            raise RuntimeError("the runner is closed")
        launch = self._env.prepare(spec)
        token = launch.token
        directory = os.path.abspath(state_dir(spec.log_path))
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, mode=0o700)
        write_json(
            os.path.join(directory, SPEC),
            {
                **self._options,
                "argv": list(spec.argv),
                "cwd": spec.cwd,
                "log_path": spec.log_path,
                "timeout_seconds": spec.timeout_seconds,
                "launch": launch.to_json(),
            },
            durable=False,  # read and deleted at once by the supervisor
        )
        self._active_tokens.add(token)  # before it exists: kill_stale_runs must never see it
        try:
            return self._supervise(directory, token)
        except BaseException:
            self._active_tokens.discard(token)
            raise

    def _supervise(self, directory: str, token: str) -> SupervisedRunHandle:
        """Start the supervisor of the run prepared in ``directory``; wait for its program."""
        read_fd, write_fd = os.pipe()
        popen: subprocess.Popen[bytes] | None = None
        try:
            err_fd = os.open(
                os.path.join(directory, "supervisor.err"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
            try:
                forked = self._fork(directory, write_fd, err_fd)
                if forked is None:
                    popen = self._spawn(directory, write_fd, err_fd)
            finally:
                os.close(err_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        pidfd: int | None
        if forked is not None:
            supervisor_pid, pidfd = forked
        else:
            assert popen is not None
            supervisor_pid = popen.pid
            try:
                pidfd = os.pidfd_open(popen.pid)
            except OSError:  # out of descriptors? The Popen is enough to wait
                pidfd = None
        try:
            line = _read_line(read_fd, _START_TIMEOUT)
        finally:
            os.close(read_fd)
        message = _parse(line)
        if message is None or "pid" not in message:
            if message is None:  # no word from it (or garbage): it may be stuck
                _kill(popen, pidfd)
            if popen is not None:
                popen.wait()
            if pidfd is not None:
                wait_pidfd(pidfd, _STOP_SLACK)
                os.close(pidfd)
            if message is not None and "error" in message:
                errno, strerror, filename = message["error"]
                raise OSError(errno, strerror, filename)
            raise OSError(f"the run supervisor failed: {_tail(directory)}")
        return SupervisedRunHandle(
            pid=int(message["pid"]),
            supervisor_pid=supervisor_pid,
            pidfd=pidfd,
            directory=directory,
            token=token,
            popen=popen,
        )

    def _fork(self, directory: str, out_fd: int, err_fd: int) -> tuple[int, int] | None:
        """The supervisor forked by the fork server: its pid and a pidfd. None when no fork
        server can fork it (then nothing of the run has started: the caller spawns one)."""
        for _attempt in range(2):  # a fork server found dead is replaced once
            server = self._fork_server()
            if server is None:
                return None
            try:
                return server.fork(directory, out_fd, err_fd)
            except ForkServerError as exc:
                if server.alive:  # it could not fork (no memory?): a new one would not either
                    log.warning("the fork server could not fork a run supervisor: %s", exc)
                    return None
                log.warning("the fork server (pid %s) died; starting another", server.pid)
                self._drop_fork_server(server)
        return None

    def _fork_server(self) -> ForkServer | None:
        """The fork server, started on first use and again after it died; None when it is off,
        the runner is closed or none could start lately."""
        if not self._use_fork_server:
            return None
        server = self._forks
        if server is not None and server.alive:
            return server  # no lock: a start never waits for another
        with self._forks_lock:
            server = self._forks
            if server is not None and server.alive:
                return server
            if server is not None:
                self._forks = None
                server.close()
            if self._closed or time.monotonic() < self._fork_server_retry:
                return None
            try:
                server = ForkServer(self._supervisor_env())
            except OSError as exc:
                log.warning("no fork server; run supervisors start as interpreters: %s", exc)
                self._fork_server_retry = time.monotonic() + _FORK_SERVER_RETRY
                return None
            self._forks = server
            return server

    def _drop_fork_server(self, server: ForkServer) -> None:
        with self._forks_lock:
            if self._forks is server:
                self._forks = None
                if server.forks == 0:  # it never served: do not start one per run
                    self._fork_server_retry = time.monotonic() + _FORK_SERVER_RETRY
        server.close()

    def _spawn(self, directory: str, out_fd: int, err_fd: int) -> subprocess.Popen[bytes]:
        """The supervisor as a new interpreter (without a fork server)."""
        return subprocess.Popen(
            [sys.executable, "-P", "-m", "ctm_adapters._supervisor", directory],
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=err_fd,
            start_new_session=True,
            close_fds=True,
            env=self._supervisor_env(),
            cwd="/",
        )

    def _supervisor_env(self) -> dict[str, str]:
        """The server's environment without its secrets (or a run marker)."""
        return {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(self._secret_prefixes) and key != RUN_MARKER_VARIABLE
        }

    # ---------------------------------------------------------------- adopt

    def adopt(self, pid: int, log_path: str) -> SupervisedRunHandle | None:
        """Follow a run an earlier life of the server started: a handle whose ``wait`` gives
        its real result (at once when it has ended already), or None when nothing is known of
        it (no supervisor state, or its supervisor died without a result)."""
        directory = state_dir(log_path)
        state = read_json(os.path.join(directory, STATE))
        if state is None or state.get("pid") != pid:
            return None
        token = str(state["token"])
        supervisor_pid = int(state["supervisor_pid"])

        def ended() -> SupervisedRunHandle | None:
            result = _read_result(directory, token)
            if result is None:
                return None
            return SupervisedRunHandle(
                pid=pid,
                supervisor_pid=supervisor_pid,
                pidfd=None,
                directory=directory,
                token=token,
                result=result,
            )

        handle = ended()
        if handle is not None:
            return handle
        try:
            pidfd = os.pidfd_open(supervisor_pid)
        except OSError:
            return ended()
        # After the pidfd: the pid cannot be reused under it.
        if start_ticks(supervisor_pid) != state["supervisor_starttime"]:
            os.close(pidfd)
            return ended()
        self._active_tokens.add(token)
        return SupervisedRunHandle(
            pid=pid, supervisor_pid=supervisor_pid, pidfd=pidfd, directory=directory, token=token
        )

    # ---------------------------------------------------------------- wait / stop

    def wait(self, handle: RunHandle) -> RunResult:
        run = _own(handle)
        with run._lock:
            if run._result is not None:
                return run._result
            if run._pidfd is not None:
                wait_pidfd(run._pidfd, None)
            if run._popen is not None:
                run._popen.wait()
            self._active_tokens.discard(run.token)
            result = _read_result(run.directory, run.token)
            if result is None:
                # The supervisor was killed: nothing recorded the end; leave nothing running.
                stop_marked_runs(self._instance_id, set(), 0.0, only=run.token)
                raise RuntimeError(f"the supervisor of run {run.pid} ended without a result")
            run._result = result
            return result

    def stop(self, handle: RunHandle, grace_seconds: float) -> None:
        run = _own(handle)
        pidfd = run._pidfd
        if run._result is not None or pidfd is None:
            return
        with contextlib.suppress(OSError):  # without it (disk full) the run's default grace
            write_json(os.path.join(run.directory, STOP), {"grace": grace_seconds})
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not wait_pidfd(pidfd, max(0.0, grace_seconds) + _STOP_SLACK):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            stop_marked_runs(self._instance_id, set(), 0.0, only=run.token)

    def kill_stale_runs(self, grace_seconds: float) -> int:
        """Stop the processes of runs of earlier lives that were not adopted, and wait until
        their supervisors have exited (so none writes to a log or folder reused after this)."""
        own = set(self._active_tokens)
        stopped = stop_marked_runs(self._instance_id, own, grace_seconds)
        for pid in self._stale_supervisors(own):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if not wait_pidfd(pidfd, max(0.0, grace_seconds) + 5.0):
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    wait_pidfd(pidfd, 5.0)
            finally:
                os.close(pidfd)
        return stopped

    def _stale_supervisors(self, own: set[str]) -> list[int]:
        """Pids of live supervisors of this instance whose run is not one of ``own``."""
        found = []
        prefix = f"{self._instance_id}:"
        for pid in psutil.pids():
            directory = _supervisor_directory(pid)
            if directory is None:
                continue
            state = read_json(os.path.join(directory, STATE))
            token = None if state is None else state.get("token")
            if (
                isinstance(token, str)
                and token.startswith(prefix)
                and token not in own
                and state is not None
                and state.get("supervisor_pid") == pid
            ):
                found.append(pid)
        return found


def _supervisor_directory(pid: int) -> str | None:
    """The state folder of ``pid`` if it is a run supervisor: one names itself
    ``ctm-supervisor`` and works in its state folder (forked ones share the fork server's command
    line); one of an earlier version names it on its command line."""
    try:
        proc = psutil.Process(pid)
        if proc.name() == SUPERVISOR_NAME:
            return str(proc.cwd())
        args = proc.cmdline()
    except (psutil.Error, OSError):
        return None
    if len(args) < 2 or args[-2] != "ctm_adapters._supervisor":
        return None
    return str(args[-1])


def _kill(popen: subprocess.Popen[bytes] | None, pidfd: int | None) -> None:
    """SIGKILL a supervisor (through its pidfd: a forked one is not this process's child)."""
    with contextlib.suppress(OSError):
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        elif popen is not None:
            popen.kill()


def _own(handle: RunHandle) -> SupervisedRunHandle:
    if not isinstance(handle, SupervisedRunHandle):
        raise TypeError(f"not a handle of this runner: {handle!r}")
    return handle


def _read_result(directory: str, token: str) -> RunResult | None:
    """The result the supervisor of the run marked ``token`` wrote (an earlier, stale supervisor
    of the same execution may have written its own: it is not this run's)."""
    data = read_json(os.path.join(directory, RESULT))
    if data is None or data.get("token") != token:
        return None
    return RunResult(
        exit_code=int(data["exit_code"]),
        duration=float(data["duration"]),
        peak_memory=int(data["peak_memory"]),
        avg_memory=int(data["avg_memory"]),
        timed_out=bool(data["timed_out"]),
        limit_exceeded=data.get("limit_exceeded"),
    )


def _read_line(fd: int, timeout: float) -> bytes:
    """Bytes from ``fd`` up to a newline, end of file or ``timeout``."""
    data = b""
    end = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while b"\n" not in data:
        remaining = end - time.monotonic()
        if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line.split(b"\n", 1)[0])
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _tail(directory: str) -> str:
    try:
        with open(os.path.join(directory, "supervisor.err"), "rb") as f:
            return f.read()[-2000:].decode(errors="replace").strip() or "no message"
    except OSError:
        return "no message"
