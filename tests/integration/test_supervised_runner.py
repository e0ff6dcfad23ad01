"""SupervisedProcessRunner: runs with a supervisor each, followed again by a new runner."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from ctm_adapters.supervised import SupervisedProcessRunner, state_dir
from ctm_core.ports import RunSpec


def spec(tmp_path: Path, code: str, name: str = "run", **extra: object) -> RunSpec:
    return RunSpec(
        argv=(sys.executable, "-u", "-c", code),
        cwd=str(tmp_path),
        log_path=str(tmp_path / f"{name}.log"),
        env_add={},
        **extra,  # type: ignore[arg-type]
    )


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_a_new_runner_adopts_a_run_and_gets_its_real_result(tmp_path: Path) -> None:
    first = SupervisedProcessRunner(instance_id="sv-a", sample_interval=0.1)
    code = "import time\nfor i in range(6):\n    print('tick', i)\n    time.sleep(0.25)\n"
    handle = first.start(spec(tmp_path, code))
    time.sleep(0.3)
    second = SupervisedProcessRunner(instance_id="sv-a", sample_interval=0.1)
    adopted = second.adopt(handle.pid, str(tmp_path / "run.log"))
    assert adopted is not None and adopted.pid == handle.pid
    assert second.kill_stale_runs(1.0) == 0, "an adopted run is not stale"
    result = second.wait(adopted)
    assert result.exit_code == 0 and 1.3 <= result.duration <= 3.0
    assert result.peak_memory > 0
    log = (tmp_path / "run.log").read_text()
    assert all(f"tick {i}" in log for i in range(6))
    # Once ended, adopting gives the recorded result at once.
    again = second.adopt(handle.pid, str(tmp_path / "run.log"))
    assert again is not None and second.wait(again) == result
    assert first.wait(handle) == result


def test_adopt_of_an_unknown_run_is_none(tmp_path: Path) -> None:
    runner = SupervisedProcessRunner(instance_id="sv-b")
    assert runner.adopt(12345, str(tmp_path / "none.log")) is None
    handle = runner.start(spec(tmp_path, "print('x')"))
    runner.wait(handle)
    assert runner.adopt(handle.pid + 1, str(tmp_path / "run.log")) is None  # not that pid


def test_an_adopted_run_can_be_stopped(tmp_path: Path) -> None:
    first = SupervisedProcessRunner(instance_id="sv-c")
    handle = first.start(spec(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(600)"))
    second = SupervisedProcessRunner(instance_id="sv-c")
    adopted = second.adopt(handle.pid, str(tmp_path / "run.log"))
    assert adopted is not None
    second.stop(adopted, 2.0)
    assert gone(handle.pid)
    assert second.wait(adopted).exit_code == -signal.SIGTERM
    assert first.wait(handle).exit_code == -signal.SIGTERM


def test_timeout_and_missing_program(tmp_path: Path) -> None:
    runner = SupervisedProcessRunner(instance_id="sv-d", timeout_grace=1.0)
    handle = runner.start(spec(tmp_path, "import time\ntime.sleep(600)", timeout_seconds=0.5))
    result = runner.wait(handle)
    assert result.timed_out and result.exit_code == -signal.SIGTERM
    assert "timed out" in (tmp_path / "run.log").read_text()
    missing = RunSpec(
        argv=(str(tmp_path / "no-such-python"),),
        cwd=str(tmp_path),
        log_path=str(tmp_path / "m.log"),
        env_add={},
    )
    with pytest.raises(FileNotFoundError, match="no-such-python"):
        runner.start(missing)


def test_runs_that_cannot_be_adopted_are_stopped_as_stale(tmp_path: Path) -> None:
    first = SupervisedProcessRunner(instance_id="sv-e")
    handle = first.start(spec(tmp_path, "import time\ntime.sleep(600)"))
    second = SupervisedProcessRunner(instance_id="sv-e")
    assert second.kill_stale_runs(1.0) == 1
    assert gone(handle.pid)
    assert gone(handle.supervisor_pid), "its supervisor has finished too"
    assert first.wait(handle).exit_code == -signal.SIGTERM  # its supervisor saw it end


def test_a_killed_supervisor_leaves_nothing_running(tmp_path: Path) -> None:
    runner = SupervisedProcessRunner(instance_id="sv-f")
    handle = runner.start(spec(tmp_path, "import time\ntime.sleep(600)"))
    os.kill(handle.supervisor_pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="without a result"):
        runner.wait(handle)
    assert gone(handle.pid)


def test_the_run_environment_is_not_left_on_disk(tmp_path: Path) -> None:
    runner = SupervisedProcessRunner(instance_id="sv-g")
    handle = runner.start(spec(tmp_path, "print('x')"))
    runner.wait(handle)
    directory = Path(state_dir(str(tmp_path / "run.log")))
    assert not (directory / "spec.json").exists()
    state = json.loads((directory / "state.json").read_text())
    assert "env" not in state and state["pid"] == handle.pid


def test_a_result_of_another_run_of_the_same_log_is_ignored(tmp_path: Path) -> None:
    runner = SupervisedProcessRunner(instance_id="sv-h")
    handle = runner.start(spec(tmp_path, "print('x')"))
    runner.wait(handle)
    result_file = Path(state_dir(str(tmp_path / "run.log"))) / "result.json"
    data = json.loads(result_file.read_text())
    result_file.write_text(json.dumps({**data, "token": "sv-h:someone-else"}))
    assert runner.adopt(handle.pid, str(tmp_path / "run.log")) is None
