"""Sandboxed runs through a supervisor forked by the fork server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

if shutil.which("bwrap") is None and os.environ.get("CTM_REQUIRE_SANDBOX") != "1":
    pytest.skip("bubblewrap (bwrap) is not installed", allow_module_level=True)

from tests.integration.test_sandbox_runner import make_runner, make_spec, run, world

__all__ = ["world"]  # the fixture, used by name


def test_a_sandboxed_run_is_supervised_from_the_fork_server(world: dict[str, str]) -> None:
    """A contained run started through the fork server: its supervisor is the fork server's
    child, the script sees only its sandbox, and its own peak (reaped from bubblewrap's init by
    the forked supervisor) is its figure."""
    runner = make_runner(world, "supervised")
    spec = make_spec(
        world,
        f"""
        import os, time
        print("procs", sorted(p for p in os.listdir("/proc") if p.isdigit()))
        print("secret", os.path.exists({world["data"] + "/secret.sqlite3"!r}))
        time.sleep(0.3)  # past the runner's early peak reads: the figure is the reaped one
        x = b'y' * (150 << 20)
    """,
    )
    try:
        handle = runner.start(spec)
        supervisor = psutil.Process(handle.supervisor_pid)
        assert supervisor.ppid() == runner.fork_server_pid
        result = runner.wait(handle)
        _, log = run(runner, make_spec(world, "print('again')"))
    finally:
        runner.close()
    text = Path(spec.log_path).read_text()
    assert result.exit_code == 0, text
    assert "procs ['1', '2']" in text and "secret False" in text
    assert result.peak_memory >= 145 * (1 << 20)
    assert log == "again\n"
