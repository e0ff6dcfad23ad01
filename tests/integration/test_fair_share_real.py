"""Fair share over HTTP against a real server: one user's queue does not hold back another's."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server
from tests.integration.containment_fixtures import detail
from tests.integration.test_server_tasks import wait_for

PASSWORD = "fair-share-pw"
FINISHED = ("completed", "failed", "stopped")


def sleeper(seconds: float) -> str:
    """A script that prints when it started (to the log), then sleeps."""
    return f"import time\nprint(repr(time.time()), flush=True)\ntime.sleep({seconds})\n"


def create(client: httpx.Client, env: str, script: str) -> int:
    r = client.post("/api/tasks", json={"script": script, "conda_env": env, "reuse_env": True})
    assert r.status_code == 201, r.text
    return int(r.json()["task"]["task_id"])


def started_at(client: httpx.Client, tid: int) -> float:
    """When the task's one run started, as the script itself printed it."""
    return float(detail(client, tid)["latest_execution"]["logs"].split()[0])


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def base_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the server keeps its data. Under root, users' runs take uids of their own: the
    folder must be crossable by them (pytest's tmp_path is not)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    base = Path(tempfile.mkdtemp(prefix="ctm-fair-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(str(base / "data") + "-homes", ignore_errors=True)


def server_env() -> dict[str, str]:
    env = {
        "CTM_MAX_CONCURRENT_RUNS": "2",
        "CTM_MAX_RUNS_PER_USER": "2",
        "CTM_STOP_GRACE_SECONDS": "2",
        # Scheduling is under test here; containment has its own suite (test_containment.py).
        "CTM_SANDBOX": "off",
    }
    if os.geteuid() == 0:  # a python every uid can run (the project's lives under /root)
        if not os.path.exists(SYSTEM_PYTHON):
            pytest.skip(f"under root, runs need {SYSTEM_PYTHON} (a python every uid can run)")
        env["CTM_DEFAULT_PYTHON"] = SYSTEM_PYTHON
    return env


def test_other_users_run_starts_before_the_busy_users_third(base_dir: Path) -> None:
    """Global 2, per-user 2: with A's 6 runs queued, B's run takes the first slot that frees,
    before A's third run starts."""
    srv = Server(base_dir / "data", extra_env=server_env())
    srv.start()
    try:
        with srv.client() as admin, srv.client() as alice, srv.client() as bob:
            srv.login(admin)
            for client, name in ((alice, "alice"), (bob, "bob")):
                r = admin.post(
                    "/create_user", json={"username": name, "password": PASSWORD, "is_admin": False}
                )
                assert r.status_code == 201, r.text
                srv.login(client, name, PASSWORD)
            # One environment for both (making one is slow); anyone may run in it.
            r = admin.post("/api/conda/environment", json={"name": "shared"})
            assert r.status_code == 201, r.text
            # A's first two runs overlap for sure and end 1.5 s apart, so that the two freed
            # slots are told apart.
            alice_tasks = [
                create(alice, "shared", sleeper(s)) for s in (3.0, 4.5, 1.5, 1.5, 1.5, 1.5)
            ]

            def statuses() -> list[str]:
                return [detail(alice, t)["task"]["status"] for t in alice_tasks]

            wait_for(
                lambda: statuses().count("running") == 2, timeout=60, what="A's first two runs"
            )
            assert statuses()[2:] == ["scheduled"] * 4, "A's other runs wait"
            bob_task = create(bob, "shared", sleeper(1.5))
            every = [*alice_tasks, bob_task]
            wait_for(
                lambda: all(detail(admin, t)["task"]["status"] in FINISHED for t in every),
                timeout=120,
                what="every run to end",
            )
            ends = {t: detail(admin, t)["latest_execution"] for t in every}
            assert all(e["status"] == "completed" for e in ends.values()), ends
            alice_starts = sorted(started_at(admin, t) for t in alice_tasks)
            bob_start = started_at(admin, bob_task)
            assert alice_starts[1] < bob_start < alice_starts[2]
            api_start = {t: detail(admin, t)["latest_execution"]["start_time"] for t in every}
            third = sorted(api_start[t] for t in alice_tasks)[2]
            assert api_start[bob_task] <= third
    finally:
        srv.stop()
