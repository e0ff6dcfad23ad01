"""Running an installer or tool command (conda, mamba, micromamba, venv, pip, uv): one helper.

An argument list, never a shell; no stdin; output captured; its own session, so that on timeout
the whole process group goes (pip's build backends, conda's workers), ``SIGTERM`` first and
``SIGKILL`` after a grace. Every environment change runs under a lock, so a command that never
ends would hold an environment (or, for conda, every environment) forever: there is always a
timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

import attrs

from ctm_core.errors import BackendFailure

__all__ = ["Completed", "TIMED_OUT", "command_name", "run_tool"]

TIMED_OUT = "Environment tool timed out"
"""The message of the ``BackendFailure`` a command that ran out of time raises."""

_KILL_GRACE = 5.0
"""Seconds between ``SIGTERM`` and ``SIGKILL`` to the group, and then to collect the output."""
_OUTPUT_SHOWN = 20_000
"""Characters of a timed-out command's output kept in the error (its end)."""


@attrs.frozen
class Completed:
    """A command that ended: exit status, stdout, stderr (empty when merged into stdout)."""

    rc: int
    stdout: str
    stderr: str


def run_tool(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float | None,
    cwd: str | None = None,
    merge_stderr: bool = False,
    kill_grace: float = _KILL_GRACE,
    label: Sequence[str] | None = None,
) -> Completed:
    """Run ``argv`` to its end and return what it said.

    ``env`` is the child's whole environment (see ``_child_env``). ``merge_stderr``: stderr
    goes into stdout, in the order written. ``timeout`` (None: none) counts from the start;
    then the command's process group gets ``SIGTERM``, ``kill_grace`` seconds later
    ``SIGKILL``, and ``BackendFailure(TIMED_OUT, ...)`` is raised with the command, the limit
    and the end of its output (the command named after ``label``, default ``argv``: the
    command inside a sandbox's command line). Raises ``OSError`` when the program cannot be
    started.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop_group(proc, kill_grace)
        sentence = _timeout_sentence(label or argv, timeout, stdout, stderr)
        raise BackendFailure(TIMED_OUT, sentence) from None
    except BaseException:
        # interrupted (KeyboardInterrupt in a thread's caller, ...): leave nothing running
        _stop_group(proc, 0.0)
        raise
    return Completed(proc.returncode, stdout or "", stderr or "")


def _stop_group(proc: subprocess.Popen[str], grace: float) -> tuple[str, str]:
    """``SIGTERM`` to the group, ``grace`` seconds to end, ``SIGKILL`` to whatever of the group
    is left; the output it wrote, as far as it can be read."""
    _signal_group(proc, signal.SIGTERM)
    stdout = stderr = ""
    with contextlib.suppress(subprocess.TimeoutExpired):
        stdout, stderr = proc.communicate(timeout=grace)
    # Even after the leader ended: its children (a build backend that ignores SIGTERM) go too.
    _signal_group(proc, signal.SIGKILL)
    if proc.returncode is None:
        try:
            stdout, stderr = proc.communicate(timeout=max(grace, 1.0))
        except subprocess.TimeoutExpired:
            # A process outside the group (it made its own session) holds the pipes open: the
            # command itself is dead; stop reading.
            proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    return stdout or "", stderr or ""


def _signal_group(proc: subprocess.Popen[str], signum: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass
    except OSError:
        with contextlib.suppress(OSError):
            proc.send_signal(signum)


def command_name(argv: Sequence[str]) -> str:
    """The program and its subcommand words: ``conda install``, ``python -m pip install``,
    ``uv pip install`` (options, paths and specs left out)."""
    words = [os.path.basename(argv[0])]
    for word in argv[1:]:
        if len(words) == 4 or os.sep in word or (word.startswith("-") and word != "-m"):
            break
        words.append(word)
    return " ".join(words)


def _timeout_sentence(argv: Sequence[str], timeout: float | None, stdout: str, stderr: str) -> str:
    command = command_name(argv)
    output = "\n".join(p for p in (stdout.replace("\0", "").strip(), stderr.strip()) if p)
    if len(output) > _OUTPUT_SHOWN:
        output = "...\n" + output[-_OUTPUT_SHOWN:]
    sentence = (
        f"'{command}' was still running after {timeout:g} s (the command timeout) and was "
        "stopped with every process it started"
    )
    return f"{sentence}; its output until then:\n{output}" if output else sentence
