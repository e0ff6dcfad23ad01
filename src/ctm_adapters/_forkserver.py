"""The fork server: run supervisors forked from one process that has imported them already.

A supervisor started as a new interpreter costs ~60 ms of CPU, most of it imports; forked from
this helper it costs about a fork. ``SupervisedProcessRunner`` starts one fork server on its
first run (``python -P -m ctm_adapters._forkserver FD``, in a session of its own, with the
environment scrubbed of the server's secrets, as a supervisor would get it) and talks to it over
a unix ``SOCK_SEQPACKET`` socket (fd ``FD``). The fork server is single-threaded, holds no
secret and only ever forks itself, never the multi-threaded server.

One request: a JSON ``{"dir": STATE_DIR}`` message with three descriptors (a reply socket, the
supervisor's stdout and its stderr). The fork server forks a child that starts a new session,
sends ``{"pid": PID}`` and a pidfd of itself on the reply socket, closes every descriptor of the
fork server, and runs the supervisor (``_supervisor.main``) for ``STATE_DIR``. The child answers,
not the fork server, so the answer is true even if the fork server dies right after the fork;
and a reply socket closed without an answer means no supervisor exists (nothing of the run has
started). A fork that fails is answered ``{"error": MESSAGE}``.

The fork server reaps its children; when it dies they are reparented (to init or the nearest
subreaper) and go on: a supervisor never depends on it. It exits when the runner closes its end
of the socket (``close``, or the server's death).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import weakref
from typing import Any, NoReturn

__all__ = ["FORK_SERVER_NAME", "ForkServer", "ForkServerError"]

FORK_SERVER_NAME = "ctm-forkserver"
"""The fork server's process name (``/proc/PID/comm``)."""

_MAX_MESSAGE = 65536
_ANSWER_TIMEOUT = 20.0  # for a supervisor's answer; then the fork server is taken for hung
_EXIT_WAIT = 5.0  # for the fork server to exit once its socket is closed


class ForkServerError(OSError):
    """The fork server forked no supervisor (it is gone, hung or could not fork); nothing of the
    run has started."""


class ForkServer:
    """The runner's side of one fork server process."""

    def __init__(self, env: dict[str, str]) -> None:
        """Start the fork server with ``env`` as its environment. Raises ``OSError``."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._popen = subprocess.Popen(
                [sys.executable, "-P", "-m", "ctm_adapters._forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env=env,
                cwd="/",
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.settimeout(_ANSWER_TIMEOUT)  # a send blocks only while a hung server's queue is full
        self._channel = mine
        self.forks = 0
        """Supervisors forked so far."""
        self._finalizer = weakref.finalize(self, _shut_down, self._popen, mine)

    def __repr__(self) -> str:
        return f"<ForkServer pid={self.pid} forks={self.forks}>"

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def alive(self) -> bool:
        return self._popen.poll() is None

    def fork(self, directory: str, out_fd: int, err_fd: int) -> tuple[int, int]:
        """Fork a supervisor of the run in ``directory``, with ``out_fd`` as its stdout and
        ``err_fd`` as its stderr. Returns its pid and a pidfd of it (close-on-exec). Raises
        ``ForkServerError`` when no supervisor was forked; ``TimeoutError`` when one may have
        been but did not answer (the fork server is killed then)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with mine:
            request = json.dumps({"dir": directory}).encode()
            try:
                socket.send_fds(self._channel, [request], [theirs.fileno(), out_fd, err_fd])
            except OSError as exc:  # nothing was sent: a message is queued whole or not at all
                if isinstance(exc, TimeoutError):
                    self.kill()
                raise ForkServerError(f"the fork server takes no request: {exc}") from None
            finally:
                theirs.close()
            mine.settimeout(_ANSWER_TIMEOUT)
            try:
                answer, fds = _receive(mine)
            except TimeoutError:
                # Hung: end it. A child it forked still answers; without one the socket closes.
                self.kill()
                answer, fds = _receive(mine)
        if "pid" in answer and len(fds) == 1:
            self.forks += 1
            return int(answer["pid"]), fds[0]
        for fd in fds:
            os.close(fd)
        if not answer:  # most likely it is dying: let ``alive`` say so
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(1.0)
        raise ForkServerError(answer.get("error") or "the fork server ended without an answer")

    def kill(self) -> None:
        """End the fork server now (its supervisors go on)."""
        with contextlib.suppress(OSError):
            self._popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(_EXIT_WAIT)

    def close(self) -> None:
        """Close the socket, so the fork server exits (its supervisors go on); wait for it."""
        self._finalizer()


def _shut_down(popen: subprocess.Popen[bytes], channel: socket.socket) -> None:
    channel.close()
    try:
        popen.wait(_EXIT_WAIT)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors that came with it (close-on-exec); ``{}`` at the end."""
    data, ancillary, _flags, _address = sock.recvmsg(
        _MAX_MESSAGE, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds = _descriptors(ancillary)
    try:
        message = json.loads(data) if data else {}
    except ValueError:
        message = {}
    return (message if isinstance(message, dict) else {}), fds


# ------------------------------------------------------------------------------ the fork server


def main(fd: int) -> int:
    """The fork server's process: serve requests on the socket ``fd`` until it is closed."""
    channel = socket.socket(fileno=fd)
    channel.setblocking(True)
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write(FORK_SERVER_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Everything a supervisor imports, once, here; its children share it without touching it
    # (gc.freeze: their collections never write to these objects, so the pages stay shared).
    import fcntl  # noqa: F401
    import traceback  # noqa: F401

    import ctm_adapters._hardening
    import ctm_adapters._supervisor
    import ctm_adapters.process  # noqa: F401

    gc.freeze()
    serve(channel)
    return 0


def serve(channel: socket.socket) -> None:
    """Answer requests on ``channel`` until its other end is closed."""
    # Children are reaped when SIGCHLD wakes the loop (through a pipe: no work in a handler).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    poller = select.poll()
    poller.register(channel, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        ready = {fd for fd, _events in poller.poll()}
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap()
        if channel.fileno() not in ready:
            continue
        try:
            data, ancillary, _flags, _address = channel.recvmsg(
                _MAX_MESSAGE, socket.CMSG_SPACE(3 * 4), socket.MSG_CMSG_CLOEXEC
            )
        except OSError:
            data, ancillary = b"", []
        fds = _descriptors(ancillary)
        if not data and not fds:
            _reap()  # what ended already is not left to init
            return  # the runner closed its end (or died)
        try:
            request = json.loads(data)
            directory = request.get("dir") if isinstance(request, dict) else None
            if len(fds) == 3 and isinstance(directory, str):
                _fork(channel, directory, fds[0], fds[1], fds[2])
        except ValueError:
            pass  # a malformed request: its reply socket closes without an answer
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _fork(channel: socket.socket, directory: str, reply: int, out_fd: int, err_fd: int) -> None:
    if threading.active_count() != 1:  # never fork a process with threads (their locks)
        _answer(reply, {"error": "the fork server is not single-threaded"})
        return
    try:
        pid = os.fork()
    except OSError as exc:
        _answer(reply, {"error": f"fork failed: {exc}"})
        return
    if pid == 0:
        _become_supervisor(channel, directory, reply, out_fd, err_fd)


def _become_supervisor(
    channel: socket.socket, directory: str, reply: int, out_fd: int, err_fd: int
) -> NoReturn:
    """The forked child: a session of its own, the answer, the supervisor's descriptors only,
    then the supervisor itself. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        me = os.pidfd_open(os.getpid())
        _answer(reply, {"pid": os.getpid()}, me, check=True)  # fails: the runner gave up
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        channel.detach()  # closed below with every other descriptor of the fork server
        os.closerange(3, _max_fd())
        from ctm_adapters._supervisor import main as supervise

        code = supervise(directory)
    except BaseException:
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _answer(
    reply: int, message: dict[str, Any], fd: int | None = None, *, check: bool = False
) -> None:
    """Send ``message`` (and ``fd``) on the reply socket ``reply``, which stays open."""
    rights = [] if fd is None else [fd.to_bytes(4, sys.byteorder)]
    try:
        sock = socket.socket(fileno=reply)
        try:
            sock.sendmsg(
                [json.dumps(message).encode()],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, data) for data in rights],
            )
        finally:
            sock.detach()
    except OSError:
        if check:
            raise


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    return [
        int.from_bytes(payload[i : i + 4], sys.byteorder)
        for level, kind, payload in ancillary
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
        for i in range(0, len(payload) - len(payload) % 4, 4)
    ]


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 4096


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
