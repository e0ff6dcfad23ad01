"""API tokens against a real ``ctm serve``: a client with no cookie drives every route of the
description with ``Authorization: Bearer``, and the token dies when deleted or its user is
disabled (expiry is driven with the fake clock in tests/unit/test_tokens_http.py)."""

from __future__ import annotations

import httpx

from ctm_http import openapi
from tests.integration.conftest import Server
from tests.integration.test_server_tasks import wait_for

PUBLIC = {("POST", "/login"), ("POST", "/logout"), ("GET", "/openapi.json"), ("GET", "/docs")}
PUBLIC |= {("GET", "/")}


def test_a_token_drives_every_route_without_a_cookie(server: Server) -> None:
    """Each (method, path) of /openapi.json that needs authentication answers something other
    than 401 to a bearer-only client that never had a cookie, and no answer sets one."""
    with server.client() as admin:
        server.login(admin)
        r = admin.post("/api/tokens", json={"name": "everything", "expires_in_days": 1})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        assert admin.post(
            "/create_user", json={"username": "victim", "password": "victim-password"}
        ).is_success
    bot = httpx.Client(
        base_url=server.base, timeout=60.0, headers={"Authorization": f"Bearer {token}"}
    )
    seen: dict[tuple[str, str], int] = {}

    def call(method: str, path: str, concrete: str | None = None, **kw: object) -> httpx.Response:
        r = bot.request(method, concrete or path, **kw)  # type: ignore[arg-type]
        assert "set-cookie" not in r.headers, (method, path)
        seen[(method, path)] = r.status_code
        return r

    with bot:
        env = "/api/conda/environment/{name}"
        assert call("POST", "/api/conda/environment", json={"name": "tok-env"}).status_code == 201
        assert call("GET", "/api/conda/environments").status_code == 200
        assert call("GET", "/api/conda/stats").status_code == 200
        assert call("GET", env, "/api/conda/environment/tok-env").status_code == 200
        pkgs = "/api/conda/environment/{name}/packages"
        assert (
            call(
                "DELETE",
                pkgs,
                "/api/conda/environment/tok-env/packages",
                json={"packages": ["not-installed"]},
            ).status_code
            == 400
        )
        assert (
            call(
                "POST", pkgs, "/api/conda/environment/tok-env/packages", json={"packages": ["-bad"]}
            ).status_code
            == 400
        )
        r = call(
            "POST",
            "/api/tasks",
            json={"script": "import time; time.sleep(30)", "conda_env": "tok-env"},
        )
        assert r.status_code == 201, r.text
        tid = r.json()["task"]["task_id"]
        task = "/api/tasks/{task_id}"
        wait_for(
            lambda: bot.get(f"/api/tasks/{tid}").json()["task"]["status"] == "running",
            what="the run to start",
        )
        assert call("GET", "/api/tasks").status_code == 200
        assert call("GET", "/api/tasks/stats").status_code == 200
        assert call("GET", "/api/tasks/history").status_code == 200
        assert call("GET", task, f"/api/tasks/{tid}").status_code == 200
        running = bot.get(f"/api/tasks/{tid}").json()["latest_execution"]["execution_id"]
        log = "/api/tasks/{task_id}/executions/{execution_id}/log"
        assert call("GET", log, f"/api/tasks/{tid}/executions/{running}/log").status_code == 200
        run = "/api/tasks/{task_id}/run"
        assert call("POST", run, f"/api/tasks/{tid}/run").status_code == 409  # one is running
        stop = "/api/tasks/{task_id}/stop"
        assert call("POST", stop, f"/api/tasks/{tid}/stop").status_code == 200
        r = call("POST", "/api/tasks/{task_id}/pause", f"/api/tasks/{tid}/pause")
        assert r.status_code == 200 and r.json()["task"]["paused"] is True
        r = call("POST", run, f"/api/tasks/{tid}/run")
        assert r.status_code == 201, r.text
        again = r.json()["execution_id"]
        wait_for(
            lambda: any(
                e["execution_id"] == again and e["status"] == "running"
                for e in bot.get(f"/api/tasks/{tid}").json()["execution_history"]
            ),
            what="the run now to start",
        )
        assert bot.post(f"/api/tasks/{tid}/stop").status_code == 200
        r = call("POST", "/api/tasks/{task_id}/resume", f"/api/tasks/{tid}/resume")
        assert r.status_code == 200 and r.json()["task"]["paused"] is False
        assert call("DELETE", task, f"/api/tasks/{tid}").status_code == 204
        assert (
            call(
                "PUT", env, "/api/conda/environment/tok-env", json={"new_name": "tok-env2"}
            ).status_code
            == 200
        )
        assert call("DELETE", env, "/api/conda/environment/tok-env2").status_code == 204
        assert call("GET", "/api/me").json()["user"]["username"] == "admin"
        assert (
            call(
                "POST",
                "/create_user",
                json={"username": "made-by-token", "password": "long-enough"},
            ).status_code
            == 201
        )
        assert call("GET", "/api/users").status_code == 200
        user = "/api/users/{username}"
        assert call("PATCH", user, "/api/users/victim", json={"is_admin": True}).status_code == 200
        assert call("DELETE", user, "/api/users/victim").status_code == 200
        assert call("GET", "/api/audit").status_code == 200
        r = call("POST", "/api/tokens", json={"name": "second"})
        assert r.status_code == 201
        second = r.json()["token_info"]["id"]
        assert call("GET", "/api/tokens").status_code == 200
        assert call("DELETE", "/api/tokens/{token_id}", f"/api/tokens/{second}").status_code == 200
        r = call(
            "POST",
            "/api/me/password",
            json={"current_password": "wrong-one", "new_password": "whatever-1"},
        )
        assert r.status_code == 403  # checked like any login; a right one would end the token
    described = {(m.upper(), p) for p, ops in openapi.spec()["paths"].items() for m in ops}
    protected = {op for op in described if op not in PUBLIC}
    # A route added later that this test does not drive shows here.
    assert protected - set(seen) == set(), protected - set(seen)
    assert 401 not in seen.values(), {k: v for k, v in seen.items() if v == 401}


def test_a_token_dies_when_deleted_or_its_user_disabled(server: Server) -> None:
    with server.client() as admin:
        server.login(admin)
        assert admin.post(
            "/create_user", json={"username": "carol", "password": "carol-password"}
        ).is_success
        with server.client() as carol:
            server.login(carol, "carol", "carol-password")
            first = carol.post("/api/tokens", json={"name": "one"}).json()
            second = carol.post("/api/tokens", json={"name": "two"}).json()

        def status(token: str) -> int:
            r = httpx.get(
                server.base + "/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            return r.status_code

        assert status(first["token"]) == status(second["token"]) == 200
        r = admin.delete(f"/api/tokens/{first['token_info']['id']}")
        assert r.status_code == 200
        assert status(first["token"]) == 401
        assert status(second["token"]) == 200
        assert admin.patch("/api/users/carol", json={"disabled": True}).status_code == 200
        assert status(second["token"]) == 401
        assert admin.patch("/api/users/carol", json={"disabled": False}).status_code == 200
        assert status(second["token"]) == 401  # deleted with the disabling, not suspended
