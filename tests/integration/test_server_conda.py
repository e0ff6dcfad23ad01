"""The environment API over HTTP with the conda backend, against the fake conda."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conda_fixtures import FakeConda, make_fake_conda
from tests.integration.conftest import Server
from tests.integration.test_server_tasks import wait_for


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeConda:
    return make_fake_conda(str(tmp_path_factory.mktemp("conda")))


@pytest.fixture(scope="module")
def srv(fake: FakeConda, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("srv") / "data",
        extra_env={
            "CTM_BACKEND": "conda",
            "CTM_CONDA_EXE": fake.exe,
            "CTM_DEFAULT_PYTHON": "3.11",
            **fake.extra_env(FAKE_CONDA_DELAY="0"),
        },
    )
    server.start()
    yield server
    server.stop()


def test_startup_line_names_the_conda_backend(srv: Server) -> None:
    """--backend conda with a conda found: the start-up line says conda."""
    assert "backend conda" in srv.output()


def test_environment_lifecycle_over_conda(c: httpx.Client) -> None:
    """Create with packages, see versions, install, remove, rename, delete."""
    r = c.post("/api/conda/environment", json={"name": "sci", "packages": ["six"]})
    assert r.status_code == 201, r.text
    assert r.json()["environment"]["python_version"].startswith("3.11")
    detail = c.get("/api/conda/environment/sci").json()
    versions = {p["name"]: p["version"] for p in detail["packages"]}
    assert versions["python"].startswith("3.11") and "six" in versions
    assert (
        c.post(
            "/api/conda/environment/sci/packages", json={"packages": ["attrs", "idna>=1"]}
        ).status_code
        == 200
    )
    names = {p["name"] for p in c.get("/api/conda/environment/sci").json()["packages"]}
    assert {"attrs", "idna"} <= names
    r = c.request("DELETE", "/api/conda/environment/sci/packages", json={"packages": ["attrs"]})
    assert r.status_code == 200 and r.json()["removed_packages"] == ["attrs"]
    r = c.put("/api/conda/environment/sci", json={"new_name": "sci2"})
    assert r.status_code == 200 and r.json()["new_name"] == "sci2"
    listed = {e["name"] for e in c.get("/api/conda/environments").json()}
    assert "sci2" in listed and "sci" not in listed
    assert c.delete("/api/conda/environment/sci2").status_code == 204
    assert c.get("/api/conda/environment/sci2").status_code == 404


def test_conda_failures_become_contract_bodies(c: httpx.Client) -> None:
    """Not found, unsatisfiable and not-installed cases carry failed_packages and details."""
    assert c.post("/api/conda/environment", json={"name": "errs"}).status_code == 201
    r = c.post("/api/conda/environment/errs/packages", json={"packages": ["six", "nosuchpkg"]})
    assert r.status_code == 400 and r.json()["failed_packages"] == ["nosuchpkg"]
    assert "not found" in r.json()["error_details"][0]
    assert "PackagesNotFound" in r.json()["error"]
    r = c.post("/api/conda/environment/errs/packages", json={"packages": ["needs-py2"]})
    assert r.status_code == 400 and r.json()["failed_packages"] == ["needs-py2"]
    assert "conflict" in r.json()["error_details"][0]
    r = c.request("DELETE", "/api/conda/environment/errs/packages", json={"packages": ["idna"]})
    assert r.status_code == 400
    assert r.json()["message"] == "Failed to remove packages"
    assert r.json()["failed_packages"] == ["idna"]
    r = c.post("/api/conda/environment", json={"name": "bad1", "packages": ["nosuchpkg"]})
    assert r.status_code == 400 and r.json()["message"] == "Failed to create environment"
    assert "bad1" not in {e["name"] for e in c.get("/api/conda/environments").json()}


def test_task_runs_in_a_conda_environment(c: httpx.Client) -> None:
    """A task's script runs with the env's python, CONDA_PREFIX and PATH set."""
    assert c.post("/api/conda/environment", json={"name": "runner"}).status_code == 201
    script = (
        "import os, sys\nprint('prefix', os.environ['CONDA_PREFIX'])\n"
        "print('path0', os.environ['PATH'].split(':')[0])\n"
        "print('secret', 'CTM_ADMIN_PASSWORD' in os.environ)\n"
    )
    r = c.post("/api/tasks", json={"script": script, "conda_env": "runner"})
    tid = r.json()["task"]["task_id"]
    wait_for(lambda: c.get(f"/api/tasks/{tid}").json()["task"]["status"] == "completed")
    logs = c.get(f"/api/tasks/{tid}").json()["latest_execution"]["logs"]
    assert "/envs/runner" in logs and "secret False" in logs
    assert "path0 " in logs and "/envs/runner/bin" in logs


def test_slow_create_never_blocks_other_requests(fake: FakeConda, tmp_path: Path) -> None:
    """While a 5-second create runs, listing environments is never held up by it: each answer
    comes well before the create ends (blocked, one would take ~5 s). The bound is loose on
    purpose: how fast a list answers is benchmarks/bench_reads.py's question, not this test's."""
    srv = Server(
        tmp_path / "data",
        extra_env={
            "CTM_BACKEND": "conda",
            "CTM_CONDA_EXE": fake.exe,
            **fake.extra_env(FAKE_CONDA_DELAY="5"),
        },
    )
    srv.start()
    try:
        with srv.client() as c, srv.client() as reader:
            srv.login(c)
            srv.login(reader)
            result: dict[str, int] = {}

            def create() -> None:
                result["status"] = c.post(
                    "/api/conda/environment", json={"name": "slow"}
                ).status_code

            worker = threading.Thread(target=create)
            worker.start()
            wait_for(
                lambda: any(k["argv"][1:2] == ["create"] for k in fake.calls()),
                what="create under way",
            )
            timings = []
            while worker.is_alive():
                t0 = time.perf_counter()
                assert reader.get("/api/conda/environments").status_code == 200
                timings.append(time.perf_counter() - t0)
            worker.join(30)
            assert result["status"] == 201
            assert len(timings) >= 5
            assert max(timings) < 1.0, timings
    finally:
        srv.stop()
