"""Runs in the bubblewrap sandbox, through both runners: what a script sees, limits, ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from ctm_adapters._sandbox import Identities, Sandbox, SandboxUnavailable
from ctm_adapters.process import PsutilProcessRunner
from ctm_adapters.supervised import SupervisedProcessRunner
from ctm_core.ports import RunLimits, RunResult, RunSpec
from tests.integration.test_process_runner import wait_until

REQUIRED = os.environ.get("CTM_REQUIRE_SANDBOX") == "1"
if shutil.which("bwrap") is None and not REQUIRED:
    pytest.skip("bubblewrap (bwrap) is not installed", allow_module_level=True)

BASE_PYTHON = "/usr/bin/python3" if os.geteuid() == 0 else sys.executable


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, str]]:
    """A data dir (hidden in the sandbox) with a venv, and a homes folder, all crossable."""
    top = tempfile.mkdtemp(prefix="ctm-sandbox-")
    os.chmod(top, 0o755)
    data = os.path.join(top, "data")
    os.makedirs(os.path.join(data, "envs"))
    os.chmod(data, 0o711)
    os.chmod(os.path.join(data, "envs"), 0o755)
    venv = os.path.join(data, "envs", "demo")
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", venv], check=True)
    (Path(data) / "secret.sqlite3").write_text("not for runs")
    yield {"top": top, "data": data, "venv": venv, "homes": os.path.join(top, "homes")}
    shutil.rmtree(top, ignore_errors=True)


def make_runner(world: dict[str, str], kind: str) -> Any:
    box = Sandbox.find(hidden=(world["data"], world["homes"]))
    assert box is not None, "bubblewrap (bwrap) is not installed"
    ids = Identities(homes_dir=world["homes"])
    box.check(ids.trial())
    options: dict[str, Any] = {
        "identities": ids,
        "sandbox": box,
        "sample_interval": 0.1,
        "timeout_grace": 2.0,
    }
    if kind == "supervised":
        return SupervisedProcessRunner(instance_id=f"t{uuid.uuid4().hex[:8]}", **options)
    return PsutilProcessRunner(**options)


@pytest.fixture(params=["in-process", "supervised"])
def runner(request: pytest.FixtureRequest, world: dict[str, str]) -> Iterator[Any]:
    r = make_runner(world, request.param)
    yield r
    r.close()


def make_spec(
    world: dict[str, str], code: str, *, owner: str = "alice", owner_id: int = 3, **kwargs: Any
) -> RunSpec:
    name = uuid.uuid4().hex[:10]
    scripts = Path(world["data"]) / "scripts"
    scripts.mkdir(exist_ok=True)
    os.chmod(scripts, 0o711)
    script = scripts / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    script.chmod(0o644)
    cwd = Path(world["data"]) / "runs" / name
    cwd.mkdir(parents=True)
    os.chmod(cwd.parent, 0o711)
    return RunSpec(
        argv=(os.path.join(world["venv"], "bin", "python"), "-u", str(script)),
        cwd=str(cwd),
        log_path=str(Path(world["data"]) / "logs" / f"{name}.log"),
        env_add={},
        owner=owner,
        owner_id=owner_id,
        prefix=world["venv"],
        readonly_paths=(str(script),),
        **kwargs,
    )


def run(runner: Any, spec: RunSpec) -> tuple[RunResult, str]:
    result = runner.wait(runner.start(spec))
    return result, Path(spec.log_path).read_text(errors="replace")


def marked(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


def test_run_sees_neither_data_dir_nor_other_processes(runner: Any, world: dict[str, str]) -> None:
    """Inside: only its own processes in /proc, no database, its cwd and HOME writable."""
    spec = make_spec(
        world,
        f"""
        import os
        print("procs", sorted(p for p in os.listdir("/proc") if p.isdigit()))
        print("secret", os.path.exists({world["data"] + "/secret.sqlite3"!r}))
        open("out.txt", "w").write("x")
        open(os.path.join(os.environ["HOME"], "kept.txt"), "w").write("y")
        print("home", os.environ["HOME"], "uid", os.getuid())
    """,
    )
    result, log = run(runner, spec)
    assert result.exit_code == 0, log
    assert "procs ['1', '2']" in log  # bubblewrap's init and the script
    assert "secret False" in log
    assert (Path(spec.cwd) / "out.txt").read_text() == "x"
    assert (Path(world["homes"]) / "alice" / "kept.txt").read_text() == "y"
    if os.geteuid() == 0:
        assert "uid 200003" in log


def test_environment_and_system_are_read_only(runner: Any, world: dict[str, str]) -> None:
    """Writing into the environment's prefix or /usr fails with a read-only file system."""
    spec = make_spec(
        world,
        f"""
        for path in ({world["venv"] + "/evil.pth"!r}, "/usr/evil"):
            try:
                open(path, "w")
                print("wrote", path)
            except OSError as exc:
                print("refused", exc.errno)
    """,
    )
    result, log = run(runner, spec)
    assert result.exit_code == 0, log
    assert "wrote" not in log
    assert not os.path.exists(os.path.join(world["venv"], "evil.pth"))


def test_signal_exit_codes_are_negative(runner: Any, world: dict[str, str]) -> None:
    """A script killed by SIGSEGV records -11 (bubblewrap's 139 mapped back); exit(3) stays 3."""
    crash, _ = run(runner, make_spec(world, "import os, signal; os.kill(os.getpid(), 11)"))
    plain, _ = run(runner, make_spec(world, "raise SystemExit(3)"))
    assert (crash.exit_code, plain.exit_code) == (-11, 3)


def test_memory_limit_ends_the_run_with_a_note(runner: Any, world: dict[str, str]) -> None:
    """A 600 MB allocation under a 128 MB limit is killed and says which limit it passed."""
    spec = make_spec(
        world,
        "import time\nb = b'x' * (600 << 20)\ntime.sleep(5)",
        limits=RunLimits(memory_mb=128),
    )
    result, log = run(runner, spec)
    assert result.exit_code == -9
    assert result.limit_exceeded is not None
    assert result.limit_exceeded.startswith("memory limit 128 MB exceeded (peak ")
    assert "memory limit 128 MB exceeded" in log
    assert result.duration < 4


def test_process_limit_refuses_extra_forks(runner: Any, world: dict[str, str]) -> None:
    """Under max_processes 16 the script's 17th process cannot be forked."""
    spec = make_spec(
        world,
        """
        import os, time
        n = 0
        try:
            for _ in range(100):
                if os.fork() == 0:
                    time.sleep(2)
                    os._exit(0)
                n += 1
        except OSError as exc:
            print("refused after", n, exc.errno)
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
    """,
        limits=RunLimits(max_processes=16),
    )
    result, log = run(runner, spec)
    assert result.exit_code == 0, log
    assert "refused after 15 11" in log  # 15 children + the script = 16; EAGAIN


def test_double_fork_escapee_dies_with_the_stop(runner: Any, world: dict[str, str]) -> None:
    """A setsid'd grandchild with an empty environment is gone once stop returns."""
    marker = f"escapee-{uuid.uuid4().hex}"
    spec = make_spec(
        world,
        f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execve(sys.executable, [sys.executable, "-c",
                          "import time; time.sleep(600)", {marker!r}], {{}})
            os._exit(0)
        print("forked", flush=True)
        time.sleep(600)
    """,
    )
    handle = runner.start(spec)
    wait_until(lambda: marked(marker))
    runner.stop(handle, 1.0)
    result = runner.wait(handle)
    assert result.exit_code < 0
    wait_until(lambda: not marked(marker), timeout=5)


def test_network_off_has_only_loopback(runner: Any, world: dict[str, str]) -> None:
    """With network off the run has no interface but lo."""
    spec = make_spec(
        world, "import socket; print(sorted(n for _, n in socket.if_nameindex()))", network=False
    )
    result, log = run(runner, spec)
    assert result.exit_code == 0, log
    assert "['lo']" in log


def test_short_runs_never_record_zero_memory(runner: Any, world: dict[str, str]) -> None:
    """30 back-to-back one-line scripts all record a peak and an average above zero."""
    results = [run(runner, make_spec(world, "print('q')"))[0] for _ in range(30)]
    assert all(r.exit_code == 0 for r in results)
    zeros = [r for r in results if r.peak_memory <= 0 or r.avg_memory <= 0]
    assert not zeros


PRINT_CPU = """
t = os.times()
print("cpu", t.user + t.system + t.children_user + t.children_system)
"""


def cpu_seconds(runner: Any, spec: RunSpec) -> tuple[float, str]:
    """Run ``spec`` (whose script ends with ``PRINT_CPU``): the CPU seconds it printed, its log."""
    result, log = run(runner, spec)
    assert result.exit_code == 0, log
    return float(log.split("cpu ")[1].split()[0]), log


def test_cpu_limit_holds_a_busy_run_to_its_share(runner: Any, world: dict[str, str]) -> None:
    """Two busy processes under cpu_limit 0.5 get about half a core between them, not two."""
    spec = make_spec(
        world,
        textwrap.dedent("""
        import os, time
        pid = os.fork()
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            pass
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    """)
        + PRINT_CPU,
        limits=RunLimits(cpu_cores=0.5),
    )
    cpu, log = cpu_seconds(runner, spec)
    # Unthrottled, both loops would burn ~2 s each (4 s on two free cores); half a core for the
    # ~2 s of wall time is ~1 s. Less is fine (a busy machine gives less).
    assert 0 < cpu <= 1.6, log


def test_conda_style_prefix_runs_with_its_own_libraries(runner: Any, world: dict[str, str]) -> None:
    """A prefix with its own interpreter and libpython under PREFIX/lib (as conda lays one out,
    no pyvenv.cfg) runs in the sandbox with only that prefix bound."""
    prefix = sys.base_prefix
    python = os.path.join(prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    spec = make_spec(
        world,
        """
        import sys, sysconfig
        print("prefix", sys.prefix)
        print("shared", sysconfig.get_config_var("Py_ENABLE_SHARED"))
        import json, sqlite3, ssl  # extension modules from PREFIX/lib
        print("ok")
    """,
    )
    spec = attrs.evolve(spec, argv=(python, "-u", spec.argv[-1]), prefix=prefix)
    result, log = run(runner, spec)
    assert result.exit_code == 0, log
    assert f"prefix {prefix}" in log and "ok" in log


def test_tmp_is_writable_and_no_larger_than_the_memory_limit(
    runner: Any, world: dict[str, str]
) -> None:
    """/tmp and /dev/shm are the run's to write, but hold no more than its memory limit."""
    spec = make_spec(
        world,
        """
        import os, tempfile
        for folder in ("/tmp", "/dev/shm"):
            with tempfile.NamedTemporaryFile(dir=folder) as f:
                f.write(b"x" * (8 << 20))
                f.flush()
                print(folder, "8 MB ok")
            try:
                with open(os.path.join(folder, "big"), "wb") as f:
                    for _ in range(100):
                        f.write(b"x" * (1 << 20))
                        f.flush()
                print(folder, "100 MB written")
            except OSError as exc:
                print(folder, "refused", exc.errno)
    """,
        limits=RunLimits(memory_mb=64),
    )
    result, log = run(runner, spec)
    assert result.exit_code == 0, log
    assert "/tmp 8 MB ok" in log and "/dev/shm 8 MB ok" in log
    assert "/tmp refused 28" in log and "/dev/shm refused 28" in log  # ENOSPC


def test_cpu_limit_holds_short_lived_children(runner: Any, world: dict[str, str]) -> None:
    """Children that each burn 50 ms and exit are held to the run's share too."""
    spec = make_spec(
        world,
        textwrap.dedent("""
        import os, time
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            pids = []
            for _ in range(2):
                pid = os.fork()
                if pid == 0:
                    stop = time.monotonic() + 0.05
                    while time.monotonic() < stop:
                        pass
                    os._exit(0)
                pids.append(pid)
            for pid in pids:
                os.waitpid(pid, 0)
    """)
        + PRINT_CPU,
        limits=RunLimits(cpu_cores=0.5),
    )
    cpu, log = cpu_seconds(runner, spec)
    assert cpu <= 1.6, log  # unthrottled: up to 4 s on two cores


def test_a_venv_config_cannot_bind_the_data_directory(runner: Any, world: dict[str, str]) -> None:
    """A pyvenv.cfg whose home names the data directory (a wheel can write one) binds nothing."""
    fake = Path(world["data"]) / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python3").write_text("")
    (fake / "python3").chmod(0o755)
    cfg = Path(world["venv"]) / "pyvenv.cfg"
    original = cfg.read_text()
    cfg.write_text(original + f"home = {fake}\n")
    try:
        spec = make_spec(
            world,
            f"""
            import os
            print("secret", os.path.exists({world["data"] + "/secret.sqlite3"!r}))
        """,
        )
        result, log = run(runner, spec)
    finally:
        cfg.write_text(original)
    assert "secret False" in log, log


def test_the_script_peak_is_the_floor_even_at_the_very_end(world: dict[str, str]) -> None:
    """A 300 MB spike in the last moment of a run (between two samples) is its peak: the run
    supervisor reaps bubblewrap's init, whose figure holds the script's own peak."""
    runner = make_runner(world, "supervised")
    spec = make_spec(world, "import time\ntime.sleep(0.7)\nx = b'y' * (300 << 20)\n")
    try:
        result, log = run(runner, spec)
    finally:
        runner.close()
    assert result.exit_code == 0, log
    assert result.peak_memory >= 290 * (1 << 20)


def test_trial_fails_without_prlimit() -> None:
    """Without prlimit no run could start, so the start-up trial fails (required refuses)."""
    box = Sandbox.find()
    assert box is not None
    box.prlimit = None
    with pytest.raises(SandboxUnavailable, match="prlimit"):
        box.check()
