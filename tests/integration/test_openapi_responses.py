"""A realistic session against a real server: every response fits the spec for its route+status.

The server runs the venv backend offline (pip sees only a folder of wheels built here), so the
flow exercises real environments, real runs and every error family without a network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from ctm_http import openapi
from tests.integration.conftest import ADMIN_PASSWORD, Server
from tests.integration.venv_fixtures import build_wheel_folder

POLL = 0.05


def offline_env(wheels: str) -> dict[str, str]:
    """pip in the server's environments sees only ``wheels``, never an index."""
    return {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": wheels,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "UV_NO_CONFIG": "1",
    }


def wait_for(what: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(POLL)


class Checked:
    """An httpx client that checks every response against the spec as it arrives."""

    def __init__(self, server: Server, seen: set[tuple[str, str, int]]) -> None:
        self.http = server.client()
        self.seen = seen

    def __call__(
        self, method: str, template: str, *, path: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        r = self.http.request(method, path or template, **kwargs)
        check_response(method, template, r)
        self.seen.add((method, template, r.status_code))
        return r

    def close(self) -> None:
        self.http.close()


def check_response(method: str, template: str, r: httpx.Response) -> None:
    op = openapi.operation(method, template)
    assert str(r.status_code) in op["responses"], (
        f"{method} {template} answered undocumented {r.status_code}: {r.text}"
    )
    doc = op["responses"][str(r.status_code)]
    for header, spec in doc.get("headers", {}).items():
        if spec.get("required"):
            assert header.lower() in r.headers, (method, template, r.status_code, header)
    if "application/json" in doc.get("content", {}):
        assert r.headers["content-type"].startswith("application/json")
        schema = openapi.response_schema(method, template, r.status_code)
        assert schema is not None
        try:
            jsonschema.Draft202012Validator(schema).validate(r.json())
        except jsonschema.ValidationError as exc:
            raise AssertionError(
                f"{method} {template} {r.status_code} body outside the spec: {exc.message}\n"
                f"{r.text[:2000]}"
            ) from None
    elif "content" not in doc:
        assert r.content == b"", (method, template, r.status_code, r.text)
    else:  # text: of a documented media type
        media = r.headers["content-type"].split(";")[0].strip()
        assert media in doc["content"], (method, template, r.status_code, media)


@pytest.fixture
def wheels(tmp_path: Path) -> str:
    return build_wheel_folder(str(tmp_path / "wheels"))


@pytest.fixture
def offline_server(tmp_path: Path, wheels: str) -> Iterator[Server]:
    srv = Server(
        tmp_path / "data", extra_env={**offline_env(wheels), "CTM_STOP_GRACE_SECONDS": "2"}
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.slow
def test_a_realistic_session_answers_only_documented_bodies(
    offline_server: Server, tmp_path: Path
) -> None:
    """Auth, users, environments, packages, tasks, runs, stop, errors: each body fits the spec."""
    seen: set[tuple[str, str, int]] = set()
    admin, alice, anon = (Checked(offline_server, seen) for _ in range(3))
    try:
        _flow(admin, alice, anon, tmp_path)
    finally:
        for c in (admin, alice, anon):
            c.close()
    exercised = {(m, p) for m, p, _ in seen}
    described = {(m.upper(), p) for p, ops in openapi.spec()["paths"].items() for m in ops}
    # The dashboard page is the dashboard's own tests' business.
    assert described - exercised == {("GET", "/")}
    statuses = {s for _, _, s in seen}
    assert {200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 415, 429} <= statuses


def _flow(admin: Checked, alice: Checked, anon: Checked, tmp_path: Path) -> None:
    # --- public and auth --------------------------------------------------------------------
    assert anon("GET", "/openapi.json").status_code == 200
    assert anon("GET", "/docs").status_code == 200
    assert anon("GET", "/api/tasks").status_code == 401
    assert anon("POST", "/logout").status_code == 200
    assert (
        anon("POST", "/login", json={"username": "admin", "password": "wrong-password"}).status_code
        == 401
    )
    assert (
        anon(
            "POST", "/login", content=b"{nope", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        anon(
            "POST", "/login", content=b'{"a": 1}', headers={"content-type": "text/plain"}
        ).status_code
        == 415
    )
    assert (
        admin("POST", "/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code
        == 200
    )
    assert admin("GET", "/api/me").json()["user"]["is_admin"] is True
    assert (
        admin(
            "POST", "/create_user", json={"username": "alice", "password": "alice-password"}
        ).status_code
        == 201
    )
    assert (
        admin(
            "POST", "/create_user", json={"username": "alice", "password": "alice-password"}
        ).status_code
        == 400
    )
    assert (
        admin(
            "POST", "/create_user", json={"username": "b c", "password": "long-enough"}
        ).status_code
        == 400
    )
    assert (
        admin(
            "POST",
            "/create_user",
            json={"username": "bob", "password": "long-enough", "is_admin": "yes"},
        ).status_code
        == 400
    )
    assert (
        admin(
            "POST",
            "/create_user",
            content=b"x" * (3 * 1024 * 1024),
            headers={"content-type": "application/json"},
        ).status_code
        == 413
    )
    assert (
        admin(
            "POST",
            "/create_user",
            json={"username": "x", "password": "long-enough"},
            headers={"origin": "http://evil.example"},
        ).status_code
        == 403
    )
    assert (
        alice(
            "POST", "/login", json={"username": "alice", "password": "alice-password"}
        ).status_code
        == 200
    )
    assert (
        alice(
            "POST", "/create_user", json={"username": "eve", "password": "eve-password"}
        ).status_code
        == 403
    )

    # --- user administration, one's password, the audit log ---------------------------------
    user = "/api/users/{username}"
    assert admin("GET", "/api/users").status_code == 200
    assert alice("GET", "/api/users").status_code == 403
    zed = {"username": "zed", "password": "zed-password"}
    assert admin("POST", "/create_user", json=zed).status_code == 201
    assert admin("PATCH", user, path="/api/users/zed", json={"disabled": True}).status_code == 200
    assert admin("PATCH", user, path="/api/users/zed", json={}).status_code == 400
    assert admin("PATCH", user, path="/api/users/nobody", json={"is_admin": True}).status_code == (
        404
    )
    assert admin("PATCH", user, path="/api/users/admin", json={"is_admin": False}).status_code == (
        409
    )
    assert alice("DELETE", user, path="/api/users/zed").status_code == 403
    assert admin("DELETE", user, path="/api/users/zed").status_code == 200
    password = {"current_password": "wrong-password", "new_password": "alice-password-2"}
    assert alice("POST", "/api/me/password", json=password).status_code == 403
    password["current_password"] = "alice-password"
    assert alice("POST", "/api/me/password", json=password).status_code == 200
    password = {"current_password": "alice-password-2", "new_password": "alice-password"}
    assert alice("POST", "/api/me/password", json=password).status_code == 200
    assert admin("GET", "/api/audit", params={"limit": 5}).status_code == 200
    assert admin("GET", "/api/audit", params={"before": "x"}).status_code == 400
    r = alice("POST", "/api/tokens", json={"name": "ci", "expires_in_days": 7})
    assert r.status_code == 201
    token_id = r.json()["token_info"]["id"]
    assert alice("POST", "/api/tokens", json={"name": ""}).status_code == 400
    assert alice("GET", "/api/tokens").status_code == 200
    assert admin("GET", "/api/tokens").status_code == 200
    tok = "/api/tokens/{token_id}"
    assert admin("DELETE", tok, path=f"/api/tokens/{token_id + 1000}").status_code == 404
    assert alice("DELETE", tok, path=f"/api/tokens/{token_id}").status_code == 200

    # --- environments -----------------------------------------------------------------------
    env = "/api/conda/environment/{name}"
    pkgs = "/api/conda/environment/{name}/packages"
    assert admin("POST", "/api/conda/environment", json={"name": "demo"}).status_code == 201
    assert admin("POST", "/api/conda/environment", json={"name": "demo"}).status_code == 400
    assert admin("POST", "/api/conda/environment", json={"name": "-bad"}).status_code == 400
    assert (
        admin(
            "POST", "/api/conda/environment", json={"name": "tmp1", "packages": ["nope-pkg"]}
        ).status_code
        == 400
    )
    assert admin("GET", "/api/conda/environments").status_code == 200
    assert admin("GET", env, path="/api/conda/environment/demo").status_code == 200
    assert admin("GET", env, path="/api/conda/environment/ghost").status_code == 404
    assert admin("GET", env, path="/api/conda/environment/.hidden").status_code == 400
    assert admin("GET", env, path="/api/conda/environment/demo/packages").status_code == 405
    assert (
        admin(
            "POST",
            pkgs,
            path="/api/conda/environment/demo/packages",
            json={"packages": ["tiny-pkg==1.0"]},
        ).status_code
        == 200
    )
    assert (
        admin(
            "POST",
            pkgs,
            path="/api/conda/environment/demo/packages",
            json={"packages": ["nope-pkg"]},
        ).status_code
        == 400
    )
    assert (
        admin(
            "POST",
            pkgs,
            path="/api/conda/environment/demo/packages",
            json={"packages": ["-c evil"]},
        ).status_code
        == 400
    )
    assert (
        admin(
            "POST", pkgs, path="/api/conda/environment/ghost/packages", json={"packages": ["six"]}
        ).status_code
        == 404
    )
    assert (
        admin(
            "DELETE",
            pkgs,
            path="/api/conda/environment/demo/packages",
            json={"packages": ["tiny-pkg"]},
        ).status_code
        == 200
    )
    assert (
        admin(
            "DELETE",
            pkgs,
            path="/api/conda/environment/demo/packages",
            json={"packages": ["tiny-pkg"]},
        ).status_code
        == 400
    )
    assert (
        alice("PUT", env, path="/api/conda/environment/demo", json={"new_name": "x"}).status_code
        == 403
    )
    assert alice("DELETE", env, path="/api/conda/environment/demo").status_code == 403
    assert alice("POST", "/api/conda/environment", json={"name": "alices"}).status_code == 201
    assert (
        admin(
            "PUT", env, path="/api/conda/environment/alices", json={"new_name": "demo"}
        ).status_code
        == 400
    )
    assert (
        alice(
            "PUT", env, path="/api/conda/environment/alices", json={"new_name": "alices2"}
        ).status_code
        == 200
    )
    assert admin("GET", "/api/conda/stats").status_code == 200

    # --- tasks ------------------------------------------------------------------------------
    task = "/api/tasks/{task_id}"
    stop = "/api/tasks/{task_id}/stop"
    base = {"conda_env": "demo"}
    r = admin("POST", "/api/tasks", json={**base, "script": "print('hi')", "task_name": "now"})
    assert r.status_code == 201
    now_id = r.json()["task"]["task_id"]
    assert (
        admin(
            "POST",
            "/api/tasks",
            json={**base, "script": "print(1)", "task_name": "later", "delay_seconds": 3600},
        ).status_code
        == 201
    )
    assert (
        admin(
            "POST",
            "/api/tasks",
            json={
                **base,
                "script": "print(2)",
                "task_name": "cron",
                "cron_expression": "*/10 * * * *",
            },
        ).status_code
        == 201
    )
    for body in (
        {**base, "script": "print(3)", "task_name": "now"},
        {**base, "script": "x", "cron_expression": "* * * * *", "delay_seconds": 1},
        {**base, "script": "x", "cron_expression": "nope"},
        {**base, "script": "x", "delay_seconds": -1},
        {**base, "script": "x", "reuse_env": True, "conda_env": "ghost"},
        {**base, "script": "/nonexistent/script.py"},
        {**base, "script": "x", "requirements": "nope-pkg"},
        {**base, "script": "x", "conda_env": "fresh1", "requirements": "nope-pkg"},
        {**base, "script": ""},
    ):
        r = admin("POST", "/api/tasks", json=body)
        assert r.status_code == 400, r.text
    outside = tmp_path / "outside.py"
    outside.write_text("print('outside')\n")
    assert (
        alice(
            "POST", "/api/tasks", json={"script": str(outside), "conda_env": "alices2"}
        ).status_code
        == 403
    )

    def finished() -> bool:
        r = admin("GET", task, path=f"/api/tasks/{now_id}")
        return r.json()["task"]["status"] in ("completed", "failed")

    wait_for(finished)
    detail = admin("GET", task, path=f"/api/tasks/{now_id}").json()
    assert detail["latest_execution"]["logs"].strip() == "hi"
    log = "/api/tasks/{task_id}/executions/{execution_id}/log"
    its_log = f"/api/tasks/{now_id}/executions/{detail['latest_execution']['execution_id']}/log"
    assert admin("GET", log, path=its_log).text == "hi\n"
    assert (
        "attachment"
        in admin("GET", log, path=its_log + "?download=1").headers["content-disposition"]
    )
    events = admin("GET", log, path=its_log, headers={"Accept": "text/event-stream"})
    assert "data: hi\n" in events.text and "event: end" in events.text
    assert admin("GET", log, path=its_log + "?download=yes").status_code == 400
    assert admin("GET", log, path=f"/api/tasks/{now_id}/executions/nope/log").status_code == 404
    assert anon("GET", log, path=its_log).status_code == 401
    assert admin("GET", task, path=f"/api/tasks/{now_id}?history_limit=1").status_code == 200
    assert admin("GET", task, path=f"/api/tasks/{now_id}?history_limit=0").status_code == 400
    assert admin("GET", task, path="/api/tasks/999").status_code == 404
    assert admin("GET", task, path="/api/tasks/abc").status_code == 404
    assert admin("GET", task, path="/api/tasks/1/stop").status_code == 405
    assert admin("POST", stop, path=f"/api/tasks/{now_id}/stop").status_code == 400

    r = admin(
        "POST",
        "/api/tasks",
        json={**base, "script": "import time\ntime.sleep(60)\n", "task_name": "sleeper"},
    )
    sleeper = r.json()["task"]["task_id"]
    wait_for(
        lambda: (
            admin("GET", task, path=f"/api/tasks/{sleeper}").json()["task"]["status"] == "running"
        )
    )
    assert (
        admin(
            "POST",
            pkgs,
            path="/api/conda/environment/demo/packages",
            json={"packages": ["tiny-pkg"]},
        ).status_code
        == 400
    )
    assert (
        admin(
            "PUT", env, path="/api/conda/environment/demo", json={"new_name": "demo3"}
        ).status_code
        == 400
    )
    assert alice("POST", stop, path=f"/api/tasks/{sleeper}/stop").status_code == 403
    run_now = "/api/tasks/{task_id}/run"
    assert admin("POST", run_now, path=f"/api/tasks/{sleeper}/run").status_code == 409
    assert alice("POST", run_now, path=f"/api/tasks/{sleeper}/run").status_code == 403
    pause, resume = "/api/tasks/{task_id}/pause", "/api/tasks/{task_id}/resume"
    assert admin("POST", pause, path=f"/api/tasks/{sleeper}/pause").status_code == 200
    assert admin("POST", resume, path=f"/api/tasks/{sleeper}/resume").status_code == 200
    assert admin("POST", pause, path="/api/tasks/999999/pause").status_code == 404
    assert alice("POST", resume, path=f"/api/tasks/{sleeper}/resume").status_code == 403
    # --- in use while a run goes on; pinned by nothing once none runs -----------------------
    assert admin("DELETE", env, path="/api/conda/environment/demo").status_code == 400
    assert admin("POST", stop, path=f"/api/tasks/{sleeper}/stop").status_code == 200
    assert admin("GET", "/api/tasks").status_code == 200
    assert admin("GET", "/api/tasks/stats").status_code == 200
    assert admin("GET", "/api/tasks/history").status_code == 200

    # --- clean up ----------------------------------------------------------------------------
    assert alice("DELETE", task, path=f"/api/tasks/{now_id}").status_code == 403
    for item in admin("GET", "/api/tasks").json():
        assert admin("DELETE", task, path=f"/api/tasks/{item['task_id']}").status_code == 204
    assert admin("DELETE", task, path=f"/api/tasks/{now_id}").status_code == 404
    assert admin("DELETE", env, path="/api/conda/environment/demo").status_code == 204
    assert admin("GET", "/api/conda/stats").status_code == 200
    assert admin("POST", "/logout").status_code == 200
    assert admin("GET", "/api/me").status_code == 401

    # --- throttling last: it blocks this client address for a while -------------------------
    codes = [
        anon("POST", "/login", json={"username": "ghost", "password": "wrong-password"}).status_code
        for _ in range(6)
    ]
    assert codes[-1] == 429
