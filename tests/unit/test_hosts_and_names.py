"""Accounts and faults: the Host check (DNS rebinding), the ``__Host-`` session cookie, and
names that are one printable line (NFC, no control, format or separator characters)."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from ctm_adapters.settings import Settings, settings_from_env
from ctm_core.commands import NewTask, NewUser
from ctm_core.errors import InvalidCredentialsFormat, InvalidInput, TaskExists
from ctm_core.validation import validate_username
from ctm_http._hosts import HostCheck, host_name
from ctm_http.app import create_app
from tests.unit.conftest import fake_ports, make_world

PASSWORD = "admin-password"
FOREIGN = "evil.example:18300"


def parts() -> dict[str, Any]:
    return fake_ports()


def settings(**kw: Any) -> Settings:
    return Settings(data_dir="/nonexistent/ctm", admin_password=PASSWORD, timezone="UTC", **kw)


@pytest.fixture
def loopback() -> Iterator[TestClient]:
    """The app with the default allowed hosts, reached as http://localhost:18300."""
    with TestClient(create_app(settings(), **parts()), base_url="http://localhost:18300") as c:
        yield c


def login(client: TestClient, **headers: str) -> Any:
    return client.post("/login", json={"username": "admin", "password": PASSWORD}, headers=headers)


# --- Host check ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/login"),
        ("GET", "/api/me"),
        ("GET", "/api/tasks"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/"),
        ("GET", "/static/app.js"),
        ("GET", "/no/such/route"),
    ],
)
def test_a_foreign_host_is_refused_before_any_route(
    loopback: TestClient, method: str, path: str
) -> None:
    """Host evil.example:18300 (with a matching Origin, as after DNS rebinding): 400 JSON."""
    headers = {"host": FOREIGN, "origin": f"http://{FOREIGN}"}
    if method == "POST":
        r = loopback.post(path, json={"username": "admin", "password": PASSWORD}, headers=headers)
    else:
        r = loopback.get(path, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["success"] is False
    assert body["message"] == "Invalid Host header"
    assert "evil.example" in body["error"] and "CTM_ALLOWED_HOSTS" in body["error"]
    assert "set-cookie" not in r.headers


def test_a_foreign_host_cannot_use_a_valid_session(loopback: TestClient) -> None:
    """A session cookie is no pass: a rebound name is refused even with a logged-in cookie."""
    assert login(loopback).status_code == 200
    assert loopback.get("/api/me").status_code == 200
    assert loopback.get("/api/me", headers={"host": FOREIGN}).status_code == 400


@pytest.mark.parametrize(
    "host", ["localhost:18300", "LOCALHOST:18300", "127.0.0.1:18300", "[::1]:18300", "localhost"]
)
def test_loopback_names_are_allowed_by_default(loopback: TestClient, host: str) -> None:
    """localhost, 127.0.0.1 and [::1] (any port, any case) reach the routes."""
    headers = {"host": host, "origin": f"http://{host}"}
    assert login(loopback, **headers).status_code == 200
    assert loopback.get("/api/me", headers=headers).status_code == 200


def test_the_bind_address_is_allowed_by_default() -> None:
    """CTM_HOST=10.1.2.3: Host 10.1.2.3:8000 works; another name (testserver) does not."""
    app = create_app(settings(host="10.1.2.3"), **parts())
    with TestClient(app, base_url="http://10.1.2.3:8000") as c:
        assert login(c).status_code == 200
        assert c.get("/api/me").status_code == 200
        assert c.get("/api/me", headers={"host": "testserver"}).status_code == 400


def test_configured_names_replace_the_default() -> None:
    """CTM_ALLOWED_HOSTS=ctm.example.org: that name (any case, any port) works, localhost not."""
    app = create_app(settings(allowed_hosts=("ctm.example.org",)), **parts())
    with TestClient(app, base_url="https://CTM.Example.org:8443") as c:
        assert login(c).status_code == 200
        assert c.get("/api/me").status_code == 200
        assert c.get("/openapi.json", headers={"host": "localhost:8000"}).status_code == 400
        assert c.get("/openapi.json", headers={"host": FOREIGN}).status_code == 400


def test_allowed_hosts_come_from_the_environment() -> None:
    """CTM_ALLOWED_HOSTS is comma-separated, case-insensitive; unset means the default."""
    s = settings_from_env({"CTM_ALLOWED_HOSTS": " ctm.example.org, Other.Example ,[::1] "})
    assert s.allowed_hosts == ("ctm.example.org", "other.example", "[::1]")
    assert settings_from_env({}).allowed_hosts is None


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("Example.ORG:443", "example.org"),
        ("localhost", "localhost"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("::1", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_host_names_are_compared_without_port_and_case(value: str, host: str) -> None:
    """The host part of a Host header or a configured name: lower case, IPv6 in brackets."""
    assert host_name(value) == host


def test_a_request_without_host_is_refused() -> None:
    """No Host header at all (HTTP/1.0): 400 in the error shape, the app never called."""
    called: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(HostCheck(app, {"localhost"})(scope, receive, send))
    assert not called
    assert sent[0]["status"] == 400
    assert b'"Invalid Host header"' in sent[1]["body"]


# --- the session cookie ----------------------------------------------------------------------


def test_secure_cookies_use_the_host_prefix() -> None:
    """CTM_SECURE_COOKIES=1: __Host-session, Secure, Path=/, no Domain; only that name reads."""
    app = create_app(settings(secure_cookies=True, allowed_hosts=("testserver",)), **parts())
    with TestClient(app, base_url="https://testserver") as c:
        r = login(c)
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-session=")
        attributes = [p.strip().lower() for p in cookie.split(";")[1:]]
        assert "secure" in attributes and "path=/" in attributes
        assert not any(a.startswith("domain") for a in attributes)
        token = cookie.split(";")[0].split("=", 1)[1]
        c.cookies.clear()
        me = c.get("/api/me", headers={"cookie": f"__Host-session={token}"})
        assert me.status_code == 200
        assert me.headers["set-cookie"].startswith(f"__Host-session={token};")
        # A cookie named plainly (tossed in by another port or a subdomain) is not read.
        assert c.get("/api/me", headers={"cookie": f"session={token}"}).status_code == 401
        out = c.post("/logout", headers={"cookie": f"__Host-session={token}"})
        assert out.status_code == 200
        assert out.headers["set-cookie"].startswith("__Host-session=;")
        assert "Max-Age=0" in out.headers["set-cookie"] and "Secure" in out.headers["set-cookie"]
        assert c.get("/api/me", headers={"cookie": f"__Host-session={token}"}).status_code == 401


def test_plain_cookies_keep_the_contract_name() -> None:
    """Without CTM_SECURE_COOKIES: the cookie is `session`; a __Host-session one is not read."""
    app = create_app(settings(allowed_hosts=("testserver",)), **parts())
    with TestClient(app, base_url="http://testserver") as c:
        r = login(c)
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("session=") and "Secure" not in cookie
        token = cookie.split(";")[0].split("=", 1)[1]
        c.cookies.clear()
        assert c.get("/api/me", headers={"cookie": f"session={token}"}).status_code == 200
        assert c.get("/api/me", headers={"cookie": f"__Host-session={token}"}).status_code == 401
        out = c.post("/logout", headers={"cookie": f"session={token}"})
        assert out.headers["set-cookie"].startswith("session=;")


# --- names -----------------------------------------------------------------------------------

NOT_PRINTABLE = {
    "zero-width space": "a\u200bb",
    "right-to-left override": "evil\u202etxt.py",
    "byte order mark": "\ufeffname",
    "NUL": "a\x00b",
    "CR": "a\rb",
    "LF": "a\nb",
    "DEL": "a\x7fb",
    "escape": "a\x1b[31mb",
    "line separator": "a\u2028b",
    "paragraph separator": "a\u2029b",
    "next line": "a\x85b",
}


@pytest.mark.parametrize("name", NOT_PRINTABLE.values(), ids=NOT_PRINTABLE.keys())
def test_task_names_are_one_printable_line(name: str) -> None:
    """A task name with a Cc, Cf, Zl or Zp character is refused, naming the field."""
    with pytest.raises(InvalidInput) as caught:
        NewTask.from_json({"script": "print(1)", "conda_env": "env", "task_name": name})
    assert caught.value.field == "task_name"
    assert caught.value.error is not None and caught.value.error.startswith("'task_name' must be")


def test_task_names_are_stored_in_nfc() -> None:
    """'Cafe' + combining acute is stored as 'Café' (NFC), and the two spellings are one name."""
    decomposed, composed = "Cafe\u0301", "Caf\u00e9"
    command = NewTask.from_json({"script": "print(1)", "conda_env": "env", "task_name": decomposed})
    assert command.task_name == composed
    world = make_world(auto_exit_code=0)
    body = {"script": "print(1)", "conda_env": "env", "cron_expression": "0 0 * * *"}
    created = world.tasks.create_task(
        world.alice, NewTask.from_json({**body, "task_name": composed})
    )
    assert world.repo.get_task(created.task.id).name == composed
    with pytest.raises(TaskExists):
        world.tasks.create_task(world.bob, NewTask.from_json({**body, "task_name": decomposed}))
    hand_built = NewTask(script="print(1)", conda_env="env", task_name=decomposed)
    assert hand_built.checked().task_name == composed
    world.coordinator.wait_idle(5)


def test_an_ordinary_unicode_task_name_is_kept() -> None:
    """Letters of any script, spaces and emoji stay allowed."""
    name = "Ünïcödé 数据 report ✓"
    command = NewTask.from_json({"script": "print(1)", "conda_env": "env", "task_name": name})
    assert command.task_name == unicodedata.normalize("NFC", name)


@pytest.mark.parametrize(
    "username", ["ad\u200bmin", "admin\u202e", "a\u2028b", "a\x00b", "\u0430dmin", "Cafe\u0301"]
)
def test_usernames_refuse_invisible_and_lookalike_characters(username: str) -> None:
    """Usernames are ASCII letters, digits, '_', '.', '-': zero-width, RTL, Cyrillic refused."""
    with pytest.raises(InvalidCredentialsFormat):
        validate_username(username)
    with pytest.raises(InvalidCredentialsFormat):
        NewUser.from_json({"username": username, "password": "long-enough"})


def test_names_over_http() -> None:
    """POST /api/tasks: a zero-width task name is a 400 naming task_name; NFC twins collide."""
    app = create_app(settings(allowed_hosts=("testserver",)), **parts())
    with TestClient(app, base_url="http://testserver") as c:
        assert login(c).status_code == 200
        body = {"script": "print(1)", "conda_env": "env", "cron_expression": "0 0 * * *"}
        r = c.post("/api/tasks", json={**body, "task_name": "a\u200bb"})
        assert r.status_code == 400, r.text
        assert r.json()["success"] is False and r.json()["field"] == "task_name"
        assert r.json()["error"].startswith("'task_name' must be")
        r = c.post("/api/tasks", json={**body, "task_name": "Cafe\u0301"})
        assert r.status_code == 201, r.text
        assert r.json()["task"]["task_name"] == "Caf\u00e9"
        task_id = r.json()["task"]["task_id"]
        assert c.get(f"/api/tasks/{task_id}").json()["task"]["task_name"] == "Caf\u00e9"
        r = c.post("/api/tasks", json={**body, "task_name": "Caf\u00e9"})
        assert r.status_code == 400
        assert r.json()["message"] == "Task with this name already exists"
        r = c.post("/create_user", json={"username": "bo\u200bb", "password": "long-enough"})
        assert r.status_code == 400
        assert r.json()["message"] == "Invalid username or password format"
