"""The HTTP contract over the real app wired to fakes (no disk, no processes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from ctm_adapters.settings import Settings
from ctm_core.models import Execution, ExecutionStatus
from ctm_http.app import create_app
from tests.unit.conftest import fake_ports

AUTH_401 = {
    "success": False,
    "message": "Authentication required",
    "error": "Please log in to perform this operation",
}


@pytest.fixture
def parts() -> dict[str, Any]:
    return fake_ports()


@pytest.fixture
def client(parts: dict[str, Any]) -> Iterator[TestClient]:
    settings = Settings(
        data_dir="/nonexistent/ctm",
        admin_password="admin-password",
        timezone="UTC",
        max_concurrent_runs=2,
        allowed_hosts=("testserver",),  # TestClient's Host (the default allows loopback only)
    )
    with TestClient(create_app(settings, **parts), base_url="http://testserver") as c:
        yield c


def login(client: TestClient, username: str = "admin", password: str = "admin-password") -> Any:
    return client.post("/login", json={"username": username, "password": password})


def add_user(client: TestClient, name: str, admin: bool = False) -> None:
    login(client)
    r = client.post(
        "/create_user", json={"username": name, "password": f"password-{name}", "is_admin": admin}
    )
    assert r.status_code == 201, r.text
    login(client, name, f"password-{name}")


def test_login_sets_the_contract_cookie(client: TestClient) -> None:
    """200, the user, and a session cookie with HttpOnly, SameSite=Lax, Max-Age=900, Path=/."""
    r = login(client)
    assert r.status_code == 200
    assert r.json()["message"] == "Login successful"
    assert r.json()["user"] == {"username": "admin", "is_admin": True}
    cookie = r.headers["set-cookie"]
    for part in ("Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=900"):
        assert part in cookie
    assert "Secure" not in cookie
    assert len(cookie.split(";")[0].split("=", 1)[1]) >= 43


def test_wrong_password_and_unknown_user_give_identical_401(client: TestClient) -> None:
    """Same status, same body, whichever part was wrong."""
    a = login(client, "admin", "wrong-password")
    b = login(client, "ghost", "wrong-password")
    assert a.status_code == b.status_code == 401
    assert a.json() == b.json() == {"success": False, "message": "Invalid username or password"}


def test_sixth_wrong_password_gets_429_with_retry_after(client: TestClient) -> None:
    """Five failures in a row, then 429 with retry_after and a Retry-After header."""
    for _ in range(5):
        assert login(client, "admin", "wrong-password").status_code == 401
    r = login(client, "admin", "wrong-password")
    assert r.status_code == 429
    assert r.json()["message"] == "Too many failed login attempts"
    assert r.json()["retry_after"] > 0 and r.headers["retry-after"]


def test_logout_clears_cookie_and_session(client: TestClient) -> None:
    """After logout the old cookie gets 401; logout without a session still answers 200."""
    login(client)
    token = client.cookies.get("session")
    r = client.post("/logout")
    assert r.status_code == 200 and r.json()["message"] == "Logout successful"
    assert "Max-Age=0" in r.headers["set-cookie"]
    client.cookies.set("session", token or "")
    assert client.get("/api/tasks").status_code == 401
    client.cookies.clear()
    assert client.post("/logout").status_code == 200


def test_idle_session_expires_with_the_clock(client: TestClient, parts: dict[str, Any]) -> None:
    """15 idle minutes later the cookie gets 401; activity renews the cookie."""
    login(client)
    parts["clock"].advance(14 * 60)
    r = client.get("/api/tasks")
    assert r.status_code == 200 and "Max-Age=900" in r.headers["set-cookie"]
    parts["clock"].advance(15 * 60)
    assert client.get("/api/tasks").json() == AUTH_401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/create_user"),
        ("GET", "/api/conda/environments"),
        ("GET", "/api/conda/stats"),
        ("GET", "/api/conda/environment/x"),
        ("PUT", "/api/conda/environment/x"),
        ("DELETE", "/api/conda/environment/x"),
        ("POST", "/api/conda/environment"),
        ("POST", "/api/conda/environment/x/packages"),
        ("DELETE", "/api/conda/environment/x/packages"),
        ("POST", "/api/tasks"),
        ("GET", "/api/tasks"),
        ("GET", "/api/tasks/1"),
        ("POST", "/api/tasks/1/stop"),
        ("DELETE", "/api/tasks/1"),
        ("GET", "/api/tasks/stats"),
        ("GET", "/api/tasks/history"),
    ],
)
def test_every_route_but_login_needs_a_session(client: TestClient, method: str, path: str) -> None:
    """No cookie: 401 with the contract body."""
    r = client.request(method, path, json={})
    assert r.status_code == 401 and r.json() == AUTH_401


def test_create_user_statuses(client: TestClient) -> None:
    """201, 400 exists, 400 bad name or password, 403 non-admin: api.md bodies."""
    login(client)
    r = client.post("/create_user", json={"username": "bob", "password": "password-bob"})
    assert r.status_code == 201
    assert r.json() == {
        "success": True,
        "message": "User created successfully",
        "user": {"username": "bob", "is_admin": False},
    }
    r = client.post("/create_user", json={"username": "bob", "password": "password-bob"})
    assert r.status_code == 400 and r.json()["message"] == "User already exists"
    for body in (
        {"username": "b ob", "password": "password-x"},
        {"username": "carol", "password": "short"},
        {"username": "carol", "password": "long-enough", "is_admin": "yes"},
    ):
        r = client.post("/create_user", json=body)
        assert r.status_code == 400 and r.json()["success"] is False
    login(client, "bob", "password-bob")
    r = client.post("/create_user", json={"username": "eve", "password": "password-eve"})
    assert r.status_code == 403
    assert r.json()["message"] == "Unauthorized - Admin privileges required"


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"text"', "application/json"),
        (b"", "application/json"),
        (b"null", "application/json"),
        (b"{" * 5000 + b"}" * 5000, "application/json"),
        (json.dumps({"x": "y" * 1_000_000}).encode(), "application/json"),
        (b'{"username": 1}', "text/plain"),
    ],
)
def test_malformed_bodies_get_4xx_never_500(client: TestClient, content: bytes, ctype: str) -> None:
    """Invalid JSON, arrays, empty, deeply nested or 1 MB bodies: a JSON 4xx."""
    login(client)
    for path in ("/login", "/create_user", "/api/tasks", "/api/conda/environment"):
        r = client.post(path, content=content, headers={"content-type": ctype})
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert r.json()["success"] is False


def test_huge_body_is_refused_with_413(client: TestClient) -> None:
    """A body over the limit is refused without being parsed."""
    login(client)
    r = client.post(
        "/api/tasks", content=b"x" * (3 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_cross_site_requests_are_refused(client: TestClient) -> None:
    """A foreign Origin or Sec-Fetch-Site: cross-site on a change: 403."""
    login(client)
    r = client.post(
        "/api/conda/environment", json={"name": "x"}, headers={"origin": "http://evil.example"}
    )
    assert r.status_code == 403
    r = client.post(
        "/api/conda/environment", json={"name": "x"}, headers={"sec-fetch-site": "cross-site"}
    )
    assert r.status_code == 403
    r = client.post(
        "/api/conda/environment", json={"name": "x"}, headers={"origin": "http://testserver"}
    )
    assert r.status_code == 201


def test_unknown_route_404_and_wrong_method_405_as_json(client: TestClient) -> None:
    """Routing errors are JSON too."""
    login(client)
    assert client.get("/nope").json()["success"] is False
    r = client.patch("/api/tasks")
    assert r.status_code == 405 and r.json()["success"] is False


def test_environment_lifecycle_bodies(client: TestClient) -> None:
    """Create, list, detail, install, remove, rename, delete with api.md's bodies."""
    login(client)
    r = client.post("/api/conda/environment", json={"name": "ml", "packages": ["six"]})
    assert r.status_code == 201, r.text
    assert r.json()["message"] == "Environment created successfully"
    assert r.json()["environment"]["name"] == "ml"
    r = client.post("/api/conda/environment", json={"name": "ml"})
    assert r.status_code == 400
    assert r.json()["message"] == "Environment with this name already exists"
    [env] = client.get("/api/conda/environments").json()
    assert env["name"] == "ml" and "six" in env["packages"] and env["python_version"]
    r = client.post("/api/conda/environment/ml/packages", json={"packages": ["attrs>=1"]})
    assert r.json() == {
        "success": True,
        "message": "Packages installed successfully",
        "environment": "ml",
        "installed_packages": ["attrs>=1"],
    }
    r = client.post("/api/conda/environment/ml/packages", json={"packages": ["nope-pkg"]})
    assert r.status_code == 400 and r.json()["failed_packages"] == ["nope-pkg"]
    assert r.json()["message"] == "Failed to install packages"
    assert r.json()["error_details"] and r.json()["error"]
    r = client.request("DELETE", "/api/conda/environment/ml/packages", json={"packages": ["six"]})
    assert r.json()["removed_packages"] == ["six"]
    detail = client.get("/api/conda/environment/ml").json()
    assert {"name", "python_version", "created_at", "usage_stats", "packages"} <= detail.keys()
    assert set(detail["usage_stats"]) == {
        "total_tasks",
        "success_rate",
        "avg_execution_time",
        "disk_usage",
    }
    r = client.put("/api/conda/environment/ml", json={"new_name": "ml2"})
    assert r.json() == {
        "success": True,
        "message": "Environment renamed successfully",
        "old_name": "ml",
        "new_name": "ml2",
        "updated_tasks_count": 0,
    }
    assert client.get("/api/conda/environment/ml").status_code == 404
    assert client.get("/api/conda/environment/ml").json() == {
        "success": False,
        "message": "Environment not found",
        "error": "Environment 'ml' not found",
    }
    assert client.delete("/api/conda/environment/ml2").status_code == 204
    stats = client.get("/api/conda/stats").json()
    assert stats["total_environments"] == 0 and stats["latest_created"] is None


def test_environment_permission_bodies(client: TestClient) -> None:
    """Another user's env: 403 with the action named, per api.md."""
    login(client)
    client.post("/api/conda/environment", json={"name": "adminenv"})
    add_user(client, "bob")
    expectations = [
        (
            "PUT",
            "/api/conda/environment/adminenv",
            {"new_name": "z"},
            "You do not have permission to modify this environment",
        ),
        (
            "POST",
            "/api/conda/environment/adminenv/packages",
            {"packages": ["six"]},
            "You do not have permission to modify packages in this environment",
        ),
        (
            "DELETE",
            "/api/conda/environment/adminenv/packages",
            {"packages": ["six"]},
            "You do not have permission to remove packages from this environment",
        ),
        (
            "DELETE",
            "/api/conda/environment/adminenv",
            None,
            "You do not have permission to delete this environment",
        ),
    ]
    for method, path, body, error in expectations:
        r = client.request(method, path, json=body)
        assert r.status_code == 403
        assert r.json() == {
            "success": False,
            "message": "Unauthorized - Insufficient privileges",
            "error": error,
        }


def test_injection_specs_refused_before_any_command(
    client: TestClient, parts: dict[str, Any]
) -> None:
    """--override-channels, -c evil, shell syntax, spaces: 400 and the backend never called."""
    login(client)
    client.post("/api/conda/environment", json={"name": "ml"})
    calls = len(parts["backend"].calls)
    for spec in ("--override-channels", "-c evil", "numpy; rm -rf /", "a b"):
        r = client.post("/api/conda/environment/ml/packages", json={"packages": [spec]})
        assert r.status_code == 400
        assert r.json()["message"] == "Invalid package specification"
    assert len(parts["backend"].calls) == calls


def test_task_create_error_bodies(client: TestClient) -> None:
    """Each api.md error case of POST /api/tasks with its exact message and error."""
    login(client)
    base = {"script": "print(1)", "conda_env": "env"}
    cases = [
        (
            {**base, "cron_expression": "* * * * *", "delay_seconds": 3},
            "Please specify either cron expression or delay seconds, not both",
            "Cannot specify both cron_expression and delay_seconds",
        ),
        ({**base, "cron_expression": "bad"}, "The provided cron expression is invalid", None),
        (
            {**base, "delay_seconds": -5},
            "Please provide a non-negative delay value",
            "Delay seconds must be non-negative",
        ),
        (
            {**base, "conda_env": "missing", "reuse_env": True},
            "Cannot reuse non-existing environment",
            "Environment 'missing' not found",
        ),
    ]
    for body, message, error in cases:
        r = client.post("/api/tasks", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["message"] == message
        if error:
            assert r.json()["error"] == error
        else:
            assert r.json()["error"].startswith("Invalid cron expression: ")
    r = client.post("/api/tasks", json={**base, "task_name": "t1", "cron_expression": "0 0 * * *"})
    assert r.status_code == 201
    r = client.post("/api/tasks", json={**base, "task_name": "t1"})
    assert (
        r.json().items()
        >= {
            "success": False,
            "message": "Task with this name already exists",
            "error": "Task with name 't1' already exists",
        }.items()
    )
    assert r.json()["field"] == "task_name"
    r = client.post("/api/tasks", json={**base, "conda_env": "n2", "requirements": "nope-pkg"})
    assert r.json()["message"] == "Failed to install requirements in new environment"
    assert r.json()["failed_packages"] == ["nope-pkg"]
    r = client.post("/api/tasks", json={**base, "requirements": "nope-pkg"})
    assert r.json()["message"] == "Failed to install requirements in existing environment"
    assert "environment_state" in r.json()


def test_task_lifecycle_bodies(client: TestClient, parts: dict[str, Any]) -> None:
    """Create (201), list, detail with history and metrics, stats, history, delete."""
    login(client)
    r = client.post(
        "/api/tasks", json={"script": "print(1)", "conda_env": "env", "task_name": "now"}
    )
    assert r.status_code == 201
    body = r.json()
    assert body["message"] == "Task scheduled successfully"
    task = body["task"]
    for key in (
        "task_id",
        "task_name",
        "script_path",
        "conda_env",
        "status",
        "created_at",
        "cron_expression",
        "next_run_time",
        "last_run_time",
        "last_run_duration",
        "requirements",
    ):
        assert key in task
    tid = task["task_id"]
    parts["runner"].wait_started(1)
    detail = client.get(f"/api/tasks/{tid}").json()
    for _ in range(100):
        if detail["task"]["status"] == "completed":
            break
        detail = client.get(f"/api/tasks/{tid}").json()
    assert detail["task"]["status"] == "completed"
    assert detail["latest_execution"]["exit_code"] == 0
    assert "logs" in detail["latest_execution"]
    assert detail["performance_metrics"]["durations"] == [1.0]
    assert detail["task"]["executions"] == [detail["latest_execution"]["execution_id"]]
    [item] = client.get("/api/tasks").json()
    assert item["last_run_duration_formatted"] == 1.0 and item["completed_at"]
    stats = client.get("/api/tasks/stats").json()
    assert stats["completed"] == 1 and stats["success_rate"] == 100.0
    assert len(stats["last_7_days"]["dates"]) == 7
    assert stats["recent_tasks"][0]["name"] == "now"
    hist = client.get("/api/tasks/history").json()
    assert hist["status"] == "success" and hist["data"][0]["task_id"] == tid
    r = client.post(f"/api/tasks/{tid}/stop")
    assert r.status_code == 400
    assert r.json() == {
        "success": False,
        "message": "Task is not in a running state",
        "error": "Cannot stop a task with status: 'completed'",
        "current_status": "completed",
    }
    assert client.get("/api/tasks/999").json() == {
        "success": False,
        "message": "Task with ID 999 not found",
    }
    assert client.get("/api/tasks/abc").status_code == 404
    assert client.delete(f"/api/tasks/{tid}").status_code == 204
    assert client.get(f"/api/tasks/{tid}").status_code == 404


def test_history_limit_caps_the_execution_history(
    client: TestClient, parts: dict[str, Any]
) -> None:
    """?history_limit=N returns only the N newest executions; a bad value is a 400."""
    login(client)
    r = client.post(
        "/api/tasks",
        json={"script": "print(1)", "conda_env": "env", "cron_expression": "* * * * * *"},
    )
    tid = r.json()["task"]["task_id"]
    for n in range(1, 4):
        parts["clock"].advance(1)
        parts["runner"].wait_started(n)
    full = client.get(f"/api/tasks/{tid}").json()["execution_history"]
    for _ in range(100):
        if len(full) >= 3:
            break
        full = client.get(f"/api/tasks/{tid}").json()["execution_history"]
    assert len(full) == 3
    assert client.get(f"/api/tasks/{tid}?history_limit=0").status_code == 400
    assert client.get(f"/api/tasks/{tid}?history_limit=x").status_code == 400
    body = client.get(f"/api/tasks/{tid}?history_limit=1").json()
    assert [e["execution_id"] for e in body["execution_history"]] == [full[0]["execution_id"]]


def test_lone_surrogates_are_a_400_not_a_500(client: TestClient, parts: dict[str, Any]) -> None:
    """JSON text with a lone surrogate is refused on every route, login included."""
    login(client)
    bodies = {
        "/login": b'{"username": "\\ud800", "password": "xxxxxxxxxx"}',
        "/api/tasks": b'{"script": "print(1)", "conda_env": "env", "task_name": "\\ud800"}',
        "/api/conda/environment": b'{"name": "ok", "packages": ["\\udcff"]}',
    }
    for path, raw in bodies.items():
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"] == "Strings must be valid Unicode text"
    assert client.get("/api/tasks").json() == []


def test_error_answers_renew_the_session_too(client: TestClient) -> None:
    """An authenticated request renews the cookie even when it answers 404."""
    login(client)
    r = client.get("/api/tasks/999")
    assert r.status_code == 404
    assert "Max-Age=900" in r.headers["set-cookie"]


def test_history_items_carry_a_logs_key(client: TestClient, parts: dict[str, Any]) -> None:
    """execution_history items have api.md's logs key (null: full logs are in latest_execution)."""
    login(client)
    tid = client.post("/api/tasks", json={"script": "print(1)", "conda_env": "env"}).json()["task"][
        "task_id"
    ]
    parts["runner"].wait_started(1)
    history = client.get(f"/api/tasks/{tid}").json()["execution_history"]
    assert history and all("logs" in e and e["logs"] is None for e in history)


def test_task_limits_are_shown_effective_and_validated(client: TestClient) -> None:
    """A task's own limits, else the server's defaults, appear in create, list and detail;
    a bad limit is a 400 naming its field."""
    login(client)
    r = client.post(
        "/api/tasks",
        json={
            "script": "print(1)",
            "conda_env": "env",
            "cron_expression": "0 0 * * *",
            "memory_limit_mb": 512,
            "network": False,
        },
    )
    assert r.status_code == 201, r.text
    task = r.json()["task"]
    expected = {"memory_limit_mb": 512.0, "max_processes": 256, "cpu_limit": None, "network": False}
    assert {k: task[k] for k in expected} == expected
    [listed] = client.get("/api/tasks").json()
    detail = client.get(f"/api/tasks/{task['task_id']}").json()["task"]
    assert {k: listed[k] for k in expected} == {k: detail[k] for k in expected} == expected
    for field, value in (
        ("memory_limit_mb", "512"),
        ("max_processes", 5000),
        ("cpu_limit", 0),
        ("network", "off"),
    ):
        r = client.post("/api/tasks", json={"script": "print(1)", "conda_env": "env", field: value})
        assert r.status_code == 400, (field, r.text)
        assert r.json()["field"] == field and field in r.json()["message"]


def test_task_limit_per_user_is_a_403(parts: dict[str, Any]) -> None:
    """A non-admin over the per-user task limit gets 403 "Task limit reached"."""
    settings = Settings(
        data_dir="/nonexistent/ctm",
        admin_password="admin-password",
        timezone="UTC",
        max_tasks_per_user=1,
        allowed_hosts=("testserver",),
    )
    with TestClient(create_app(settings, **parts), base_url="http://testserver") as c:
        add_user(c, "bob")
        body = {"script": "print(1)", "conda_env": "env", "cron_expression": "0 0 * * *"}
        assert c.post("/api/tasks", json=body).status_code == 201
        r = c.post("/api/tasks", json=body)
        assert r.status_code == 403
        assert r.json() == {
            "success": False,
            "message": "Task limit reached",
            "error": "At most 1 tasks per user",
        }


def test_others_tasks_pin_an_environment_only_while_running(
    client: TestClient, parts: dict[str, Any]
) -> None:
    """Delete answers 400 while bob's task runs in admin's env, 204 once it ended; bob's task
    stays, with its history."""
    parts["runner"].auto_exit_code = None
    login(client)
    assert client.post("/api/conda/environment", json={"name": "shared"}).status_code == 201
    add_user(client, "bob")
    tid = client.post("/api/tasks", json={"script": "print(1)", "conda_env": "shared"}).json()[
        "task"
    ]["task_id"]
    [handle] = parts["runner"].wait_started(1)
    script_path = client.get(f"/api/tasks/{tid}").json()["task"]["script_path"]
    login(client)
    r = client.delete("/api/conda/environment/shared")
    assert r.status_code == 400
    assert r.json()["message"] == "Cannot delete environment that is referenced by tasks"
    assert r.json()["referencing_tasks"] == [script_path]
    parts["runner"].finish(handle, 0)
    assert client.app.state.services.coordinator.wait_idle(5)  # type: ignore[attr-defined]
    assert client.delete("/api/conda/environment/shared").status_code == 204
    detail = client.get(f"/api/tasks/{tid}").json()
    assert detail["task"]["conda_env"] == "shared"
    assert [e["status"] for e in detail["execution_history"]] == ["completed"]


def test_history_and_task_detail_come_a_page_at_a_time(
    client: TestClient, parts: dict[str, Any]
) -> None:
    """``limit`` and ``before`` walk every execution once, newest first; the default call is
    the first page of 500 with the api.md keys; bad values are a 400."""
    login(client)
    r = client.post(
        "/api/tasks",
        json={"script": "print(1)", "conda_env": "env", "cron_expression": "0 0 1 1 *"},
    )
    tid = r.json()["task"]["task_id"]
    other = client.post(
        "/api/tasks",
        json={"script": "print(2)", "conda_env": "env", "cron_expression": "0 0 1 1 *"},
    ).json()
    repo, now = parts["repo"], parts["clock"].now()
    for i in range(7):
        start = now - timedelta(minutes=10 - i)
        repo.add_execution(
            Execution(
                id=f"e{i}",
                task_id=tid,
                status=ExecutionStatus.COMPLETED,
                start_time=start,
                end_time=start + timedelta(seconds=1),
                duration=1.0,
            )
        )
    repo.add_execution(
        Execution(
            id="x",
            task_id=other["task"]["task_id"],
            status=ExecutionStatus.FAILED,
            start_time=now - timedelta(hours=1),
            end_time=now,
            duration=1.0,
        )
    )
    newest_first = [f"e{i}" for i in reversed(range(7))]

    def walk(path: str, items: str, cursor: str) -> list[str]:
        seen: list[str] = []
        before = None
        while True:
            query = "?limit=3" + (f"&before={before}" if before else "")
            body = client.get(path + query).json()
            assert len(body[items]) <= 3
            seen += [d["execution_id"] for d in body[items]]
            before = body[cursor]
            if before is None:
                return seen

    assert walk("/api/tasks/history", "data", "next_before") == [*newest_first, "x"]
    assert (
        walk(f"/api/tasks/{tid}", "execution_history", "execution_history_next_before")
        == newest_first
    )
    default = client.get("/api/tasks/history").json()
    assert set(default) == {"status", "data", "next_before"} and default["next_before"] is None
    assert len(default["data"]) == 8
    page = client.get(f"/api/tasks/{tid}?limit=2&before=e5").json()
    assert [e["execution_id"] for e in page["execution_history"]] == ["e4", "e3"]
    assert page["latest_execution"]["execution_id"] == "e6"  # the latest, whatever the page
    assert page["task"]["executions"] == ["e4", "e3"]
    for query in ("limit=0", "limit=5001", "limit=x", "before=nope"):
        for path in ("/api/tasks/history", f"/api/tasks/{tid}"):
            r = client.get(f"{path}?{query}")
            assert r.status_code == 400, (path, query)
            assert r.json()["success"] is False
    # Another task's execution is no cursor for this task's list.
    assert client.get(f"/api/tasks/{tid}?before=x").status_code == 400
