"""A hung installer is killed with every process it started after the command timeout, the
change fails with a clear ``BackendFailure``, and the environment's lock and state are released.

The hung programs are fakes (``sys.executable`` scripts, the fake conda) that sleep; the tests
wait on outcomes with deadlines, never for a fixed time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ctm_adapters._subprocess import TIMED_OUT, command_name, run_tool
from ctm_adapters.venv import VenvEnvironmentBackend
from ctm_core.errors import BackendFailure
from tests.integration.conda_fixtures import FakeConda, make_fake_conda

DEADLINE = 60.0
"""Seconds any awaited outcome may take on a loaded machine before the test fails."""

HANG = """
import os, signal, subprocess, sys, time
{preamble}
if {ignore_term}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", {child!r}])
tmp = {pids!r} + ".tmp"
with open(tmp, "w") as f:
    f.write(f"{{os.getpid()}} {{child.pid}}")
os.rename(tmp, {pids!r})
print("working on it", flush=True)
time.sleep(600)
"""
CHILD = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)"


def fake_program(path: Path, pids: Path, *, preamble: str = "", ignore_term: bool = False) -> str:
    """An executable that starts a child (deaf to SIGTERM), writes both pids to ``pids`` and
    sleeps; ``preamble`` runs first (to answer probes and exit)."""
    child = CHILD if ignore_term else "import time\ntime.sleep(600)"
    path.write_text(
        f"#!{sys.executable}\n"
        + HANG.format(preamble=preamble, ignore_term=ignore_term, child=child, pids=str(pids))
    )
    path.chmod(0o755)
    return str(path)


def dead(pid: int) -> bool:
    """True when ``pid`` has ended (gone, or a zombie waiting for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_for(outcome: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not outcome():
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE} s"
        time.sleep(0.02)


def read_pids(pids: Path) -> list[int]:
    return [int(p) for p in pids.read_text().split()]


def in_thread(call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a thread, as the service does; what it raised (None: nothing). Fails
    when it has not returned within the deadline."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), f"{call} did not return within {DEADLINE} s"
    return raised[0] if raised else None


# --- the helper -------------------------------------------------------------------------------


def test_timeout_kills_the_whole_group_even_what_ignores_sigterm(tmp_path: Path) -> None:
    """A program and its child, both deaf to SIGTERM, are SIGKILLed after the grace; the error
    names the command and the limit and carries the output written until then."""
    pids = tmp_path / "pids"
    program = fake_program(tmp_path / "stuck", pids, ignore_term=True)
    with pytest.raises(BackendFailure) as caught:
        run_tool([program, "install", "x"], env=dict(os.environ), timeout=1.0, kill_grace=0.2)
    assert caught.value.message == TIMED_OUT
    assert caught.value.error is not None
    assert "'stuck install x' was still running after 1 s" in caught.value.error
    assert "working on it" in caught.value.error
    for pid in read_pids(pids):
        wait_for(lambda pid=pid: dead(pid), f"killed: {pid}")


def test_a_program_that_ends_in_time_gives_its_status_and_output(tmp_path: Path) -> None:
    """Within the timeout nothing is killed: exit status, stdout and stderr come back apart, or
    merged in the order written."""
    argv = [sys.executable, "-c", "import sys; print('out', flush=True); sys.exit('err')"]
    done = run_tool(argv, env=dict(os.environ), timeout=DEADLINE)
    assert (done.rc, done.stdout, done.stderr) == (1, "out\n", "err\n")
    merged = run_tool(argv, env=dict(os.environ), timeout=DEADLINE, merge_stderr=True)
    assert (merged.stdout, merged.stderr) == ("out\nerr\n", "")


def test_a_timed_out_command_is_named_by_its_program_and_subcommands() -> None:
    """The error names ``python3 -m pip install`` or ``conda install``: no option, path or spec
    (a sandbox's command line is named after the command it runs, its ``label``)."""
    pip = ["/opt/py/bin/python3", "-m", "pip", "install", "--no-input", "--", "six"]
    assert command_name(pip) == "python3 -m pip install"
    assert command_name(["/opt/conda/bin/conda", "install", "-p", "/envs/x", "six"]) == (
        "conda install"
    )
    assert command_name(["/usr/bin/uv", "pip", "install", "--python", "/envs/x/bin/python"]) == (
        "uv pip install"
    )


# --- the venv backend -------------------------------------------------------------------------


def hand_made_venv(root: Path, name: str) -> None:
    """An environment as the venv backend recognises it (a ``pyvenv.cfg``), without a process."""
    (root / name / "bin").mkdir(parents=True)
    (root / name / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.11.0\n")


def test_venv_install_with_a_hung_uv_is_killed_and_releases_the_environment(
    tmp_path: Path,
) -> None:
    """uv hangs in ``pip install``: after command_timeout it and its child are killed, install
    fails with BackendFailure, and the environment can be changed again at once."""
    pids = tmp_path / "pids"
    answer_version = "if sys.argv[1:] == ['--version']:\n    print('uv 0.9.99')\n    sys.exit(0)"
    uv = fake_program(tmp_path / "uv", pids, preamble=answer_version)
    root = tmp_path / "envs"
    hand_made_venv(root, "demo")
    backend = VenvEnvironmentBackend(str(root), use_uv=True, uv_executable=uv, command_timeout=2.0)
    started = time.monotonic()
    raised = in_thread(lambda: backend.install("demo", ["six"]))
    assert isinstance(raised, BackendFailure)
    assert raised.message == TIMED_OUT
    assert raised.error is not None and "'uv pip install' was still running" in raised.error
    assert time.monotonic() - started < DEADLINE
    for pid in read_pids(pids):
        wait_for(lambda pid=pid: dead(pid), f"killed: {pid}")
    # the name lock is free: a change that takes it (and runs no tool) goes through
    assert in_thread(lambda: backend.rename("demo", "renamed")) is None
    assert [e.name for e in backend.list_environments()] == ["renamed"]


def test_venv_create_with_a_hung_interpreter_leaves_nothing(tmp_path: Path) -> None:
    """``python -m venv`` hangs: after command_timeout create fails with BackendFailure, no
    half-made environment or work directory is left, and the name can be used again."""
    pids = tmp_path / "pids"
    answer_probe = (
        "if sys.argv[1:2] == ['-c']:\n"
        "    print(os.path.abspath(sys.argv[0]))\n    print('3.11.0')\n    sys.exit(0)"
    )
    python = fake_program(tmp_path / "python3", pids, preamble=answer_probe)
    root = tmp_path / "envs"
    backend = VenvEnvironmentBackend(
        str(root), default_python=python, use_uv=False, command_timeout=2.0
    )
    raised = in_thread(lambda: backend.create("demo", None, []))
    assert isinstance(raised, BackendFailure)
    assert raised.error is not None and "'python3 -m venv' was still running" in raised.error
    for pid in read_pids(pids):
        wait_for(lambda pid=pid: dead(pid), f"killed: {pid}")
    assert os.listdir(root) == []
    assert not backend.exists("demo")


# --- the conda backend ------------------------------------------------------------------------


@pytest.fixture
def conda(tmp_path: Path) -> FakeConda:
    return make_fake_conda(str(tmp_path))


def test_conda_install_that_hangs_is_killed_and_frees_every_environment(conda: FakeConda) -> None:
    """A conda install that sleeps past command_timeout fails with BackendFailure, its process
    is gone, and the next change (any environment: conda changes share one lock) goes through."""
    healthy = conda.backend()
    healthy.create("demo", None, [])
    conda.clear_log()
    hung = conda.backend(timeout=1.0, FAKE_CONDA_DELAY="600")
    raised = in_thread(lambda: hung.install("demo", ["six"]))
    assert isinstance(raised, BackendFailure)
    assert raised.message == TIMED_OUT
    assert raised.error is not None and "'conda install' was still running" in raised.error
    (call,) = [c for c in conda.calls() if c["argv"][1:2] == ["install"]]
    wait_for(lambda: dead(call["pid"]), "killed: the hung conda")
    assert in_thread(lambda: healthy.install("demo", ["six"])) is None
    assert "six" in {p.name for p in healthy.get_environment("demo").packages}
