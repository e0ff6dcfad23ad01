"""The environment and task API with the embedded venv backend, offline, as a new user would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server
from tests.integration.test_server_tasks import wait_for
from tests.integration.venv_fixtures import build_wheel_folder


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    wheels = build_wheel_folder(str(tmp_path_factory.mktemp("wheels")))
    server = Server(
        tmp_path_factory.mktemp("venv") / "data",
        extra_env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": wheels},
    )
    server.start()
    yield server
    server.stop()


def test_offline_wheel_lifecycle(c: httpx.Client, srv: Server) -> None:
    """Create, install from a local wheel folder, see the version, remove, rename, delete."""
    r = c.post("/api/conda/environment", json={"name": "offline"})
    assert r.status_code == 201, r.text
    r = c.post("/api/conda/environment/offline/packages", json={"packages": ["tiny-pkg==1.0"]})
    assert r.status_code == 200, r.text
    versions = {
        p["name"].lower().replace("_", "-"): p["version"]
        for p in c.get("/api/conda/environment/offline").json()["packages"]
    }
    assert versions["tiny-pkg"] == "1.0"
    stats = c.get("/api/conda/stats").json()
    assert stats["total_environments"] >= 1 and stats["total_disk_usage"] > 0
    r = c.post("/api/conda/environment/offline/packages", json={"packages": ["not-there"]})
    assert r.status_code == 400 and r.json()["failed_packages"] == ["not-there"]
    r = c.request(
        "DELETE", "/api/conda/environment/offline/packages", json={"packages": ["tiny-pkg"]}
    )
    assert r.status_code == 200
    packages = c.get("/api/conda/environment/offline").json()["packages"]
    names = {p["name"].lower().replace("_", "-") for p in packages}
    assert "tiny-pkg" not in names
    r = c.request(
        "DELETE", "/api/conda/environment/offline/packages", json={"packages": ["tiny-pkg"]}
    )
    assert r.status_code == 400 and r.json()["failed_packages"] == ["tiny-pkg"]
    assert c.put("/api/conda/environment/offline", json={"new_name": "offline2"}).status_code == 200
    assert c.delete("/api/conda/environment/offline2").status_code == 204
    assert not (srv.data_dir / "envs" / "offline2").exists()


def test_task_with_requirements_creates_env_and_uses_the_package(c: httpx.Client) -> None:
    """A task naming a new env with requirements gets both, and its script imports the package."""
    r = c.post(
        "/api/tasks",
        json={
            "script": "import tinypkg\nprint('version', tinypkg.VERSION)\n",
            "conda_env": "withreqs",
            "requirements": "tiny-pkg==2.0\n",
            "task_name": "reqs",
        },
    )
    assert r.status_code == 201, r.text
    assert "Created new environment 'withreqs'" in r.json()["environment_message"]
    tid = r.json()["task"]["task_id"]
    wait_for(
        lambda: c.get(f"/api/tasks/{tid}").json()["task"]["status"] == "completed",
        what="run with requirements",
    )
    assert "version 2.0" in c.get(f"/api/tasks/{tid}").json()["latest_execution"]["logs"]
    detail = c.get("/api/conda/environment/withreqs").json()
    assert detail["usage_stats"]["total_tasks"] == 1
    assert detail["usage_stats"]["success_rate"] == 100
    # No run of its task is active, so the task does not pin the environment.
    assert c.delete("/api/conda/environment/withreqs").status_code == 204
    assert c.get(f"/api/tasks/{tid}").json()["task"]["conda_env"] == "withreqs"


def test_failed_requirements_leave_no_new_env(c: httpx.Client) -> None:
    """A new env whose requirements cannot install is removed and the failure named."""
    r = c.post(
        "/api/tasks",
        json={"script": "print(1)", "conda_env": "broken", "requirements": "tiny-pkg==9.9\n"},
    )
    assert r.status_code == 400
    body = r.json()
    assert body["message"] == "Failed to install requirements in new environment"
    assert body["failed_packages"] == ["tiny-pkg==9.9"]
    assert "broken" not in {e["name"] for e in c.get("/api/conda/environments").json()}


def test_failed_requirements_in_existing_env_report_state(c: httpx.Client) -> None:
    """In an existing env, the answer says truthfully that nothing changed."""
    assert c.post("/api/conda/environment", json={"name": "keep"}).status_code == 201
    r = c.post(
        "/api/tasks",
        json={"script": "print(1)", "conda_env": "keep", "requirements": "needs-old\nneeds-new\n"},
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["message"] == "Failed to install requirements in existing environment"
    assert body["environment_state"].startswith("Environment unchanged")
    assert body["failed_packages"]


def test_unavailable_python_version_is_400(c: httpx.Client) -> None:
    """Asking for a python this machine does not have is a clear 400."""
    r = c.post("/api/conda/environment", json={"name": "py399", "python_version": "3.99"})
    assert r.status_code == 400
    assert r.json()["message"] == "Failed to create environment"
    assert r.json()["failed_packages"] == ["python=3.99"]


def test_rename_updates_tasks(c: httpx.Client, tmp_path: Path) -> None:
    """Renaming an env moves its tasks; updated_tasks_count says how many."""
    assert c.post("/api/conda/environment", json={"name": "mv1"}).status_code == 201
    for i in range(2):
        assert (
            c.post(
                "/api/tasks",
                json={
                    "script": "print(1)",
                    "conda_env": "mv1",
                    "cron_expression": "0 0 1 1 *",
                    "task_name": f"mv-{i}",
                },
            ).status_code
            == 201
        )
    r = c.put("/api/conda/environment/mv1", json={"new_name": "mv2"})
    assert r.json()["updated_tasks_count"] == 2
    assert {
        t["conda_env"] for t in c.get("/api/tasks").json() if t["task_name"].startswith("mv-")
    } == {"mv2"}
