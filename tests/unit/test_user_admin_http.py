"""Accounts over HTTP: throttling by (username, address), user administration with revocation,
one's own password, and the audit log, through the real app on fakes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from ctm_adapters.clock import FakeClock
from ctm_adapters.fakes import (
    FakePasswordHasher,
)
from ctm_adapters.settings import Settings
from ctm_http.app import create_app
from tests.unit.conftest import fake_ports

ADMIN_PASSWORD = "admin-password"


def build_app(
    hasher: FakePasswordHasher | None = None, clock: FakeClock | None = None, **settings: Any
) -> Any:
    ports = fake_ports()
    ports["clock"] = clock or ports["clock"]
    ports["hasher"] = hasher or ports["hasher"]
    return create_app(
        Settings(
            data_dir="/nonexistent/ctm",
            admin_password=ADMIN_PASSWORD,
            timezone="UTC",
            allowed_hosts=("testserver",),
            **settings,
        ),
        **ports,
    )


@pytest.fixture
def app() -> Iterator[Any]:
    """The app on fakes, its lifespan running; clients from other addresses share it."""
    application = build_app()
    with TestClient(application, client=("127.0.0.1", 40000)):
        yield application


def client(app: Any, address: str = "127.0.0.1") -> TestClient:
    return TestClient(app, client=(address, 40000))


def log_in(app: Any, name: str, password: str, address: str = "127.0.0.1") -> TestClient:
    c = client(app, address)
    r = c.post("/login", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return c


@pytest.fixture
def admin(app: Any) -> TestClient:
    c = log_in(app, "admin", ADMIN_PASSWORD)
    for name in ("alice", "bob"):
        r = c.post("/create_user", json={"username": name, "password": f"password-{name}"})
        assert r.status_code == 201
    return c


def test_the_owner_logs_in_from_a_second_address_while_the_attacker_is_throttled(
    app: Any, admin: TestClient
) -> None:
    """Five wrong passwords for admin from 127.0.0.1 lock that pair out (429 with
    retry_after, the right password too); admin from 127.0.0.2 gets in, and alice from the
    attacker's address too."""
    attacker = client(app)
    for _ in range(5):
        r = attacker.post("/login", json={"username": "admin", "password": "guess-guess"})
        assert r.status_code == 401
    r = attacker.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 429
    assert r.json() == {
        "success": False,
        "message": "Too many failed login attempts",
        "retry_after": 900,
    }
    assert r.headers["retry-after"] == "900"
    log_in(app, "admin", ADMIN_PASSWORD, "127.0.0.2")
    log_in(app, "alice", "password-alice", "127.0.0.1")


def test_admins_list_and_manage_users_and_others_cannot(app: Any, admin: TestClient) -> None:
    """GET /api/users lists every user with their sessions; a non-admin gets 403 on the
    list, on PATCH and on DELETE."""
    alice = log_in(app, "alice", "password-alice")
    r = admin.get("/api/users")
    assert r.status_code == 200
    users = {u["username"]: u for u in r.json()["users"]}
    assert set(users) == {"admin", "alice", "bob"}
    assert users["alice"]["sessions"] == 1 and not users["alice"]["disabled"]
    assert users["admin"]["is_admin"] and not users["bob"]["is_admin"]
    for method, path, body in (
        ("GET", "/api/users", None),
        ("PATCH", "/api/users/bob", {"disabled": True}),
        ("DELETE", "/api/users/bob", None),
        ("GET", "/api/audit", None),
    ):
        r = alice.request(method, path, json=body)
        assert r.status_code == 403, (method, path)
        assert r.json()["message"] == "Unauthorized - Admin privileges required"


def test_disabling_a_user_shuts_them_out_at_once(app: Any, admin: TestClient) -> None:
    """Disabling ends alice's sessions (her next request is 401) and refuses her login;
    enabling lets her in again."""
    alice = log_in(app, "alice", "password-alice")
    log_in(app, "alice", "password-alice", "127.0.0.3")
    assert alice.get("/api/me").status_code == 200
    r = admin.patch("/api/users/alice", json={"disabled": True})
    assert r.status_code == 200
    assert r.json()["sessions_ended"] == 2
    assert r.json()["user"]["disabled"] is True
    assert alice.get("/api/me").status_code == 401
    r = client(app).post("/login", json={"username": "alice", "password": "password-alice"})
    assert r.status_code == 401
    admin.patch("/api/users/alice", json={"disabled": False})
    log_in(app, "alice", "password-alice", "127.0.0.4")


def test_an_admin_sets_a_password_and_promotes(app: Any, admin: TestClient) -> None:
    """A new password ends the user's sessions and replaces the old one; is_admin gives
    admin rights at the user's next request (no new login needed)."""
    bob = log_in(app, "bob", "password-bob")
    r = admin.patch("/api/users/bob", json={"password": "brand-new-pass"})
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1
    assert bob.get("/api/me").status_code == 401
    bob = log_in(app, "bob", "brand-new-pass")
    assert bob.get("/api/users").status_code == 403
    assert admin.patch("/api/users/bob", json={"is_admin": True}).status_code == 200
    assert bob.get("/api/users").status_code == 200


def test_the_last_admin_cannot_be_demoted_disabled_or_deleted(app: Any, admin: TestClient) -> None:
    """409 "Cannot remove the last admin" for each; with a second admin it works."""
    for method, body in (("PATCH", {"is_admin": False}), ("PATCH", {"disabled": True})):
        r = admin.request(method, "/api/users/admin", json=body)
        assert r.status_code == 409
        assert r.json()["message"] == "Cannot remove the last admin"
    r = admin.delete("/api/users/admin")
    assert r.status_code == 409
    admin.patch("/api/users/alice", json={"is_admin": True})
    alice = log_in(app, "alice", "password-alice")
    assert alice.delete("/api/users/admin").status_code == 200
    assert admin.get("/api/me").status_code == 401  # deleted: the session went with the user


def test_a_user_who_owns_tasks_is_not_deleted(app: Any, admin: TestClient) -> None:
    """409 with the task count while bob owns a task; after the task is deleted, bob goes."""
    bob = log_in(app, "bob", "password-bob")
    r = bob.post(
        "/api/tasks", json={"script": "print(1)", "conda_env": "bobenv", "delay_seconds": 3600}
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["task"]["task_id"]
    r = admin.delete("/api/users/bob")
    assert r.status_code == 409
    assert r.json()["tasks"] == 1
    assert admin.delete(f"/api/tasks/{task_id}").status_code == 204
    r = admin.delete("/api/users/bob")
    assert r.status_code == 200 and r.json() == {"success": True, "message": "User deleted"}
    assert bob.get("/api/me").status_code == 401
    assert admin.delete("/api/users/bob").status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"is_admin": "yes"}, 400),
        ({"disabled": 1}, 400),
        ({"password": "short"}, 400),
        ({"colour": "red"}, 400),
        ({"is_admin": None}, 400),
    ],
)
def test_bad_user_changes_are_400(admin: TestClient, body: dict[str, Any], status: int) -> None:
    r = admin.patch("/api/users/alice", json=body)
    assert r.status_code == status
    assert r.json()["success"] is False


def test_unknown_user_is_404(admin: TestClient) -> None:
    for method in ("PATCH", "DELETE"):
        r = admin.request(method, "/api/users/nobody", json={"disabled": True})
        assert r.status_code == 404
        assert r.json()["message"] == "User not found"


def test_changing_ones_own_password(app: Any, admin: TestClient) -> None:
    """The current password is checked (403, counted as a failed login); the change ends
    the user's other sessions and keeps this one."""
    alice = log_in(app, "alice", "password-alice")
    other = log_in(app, "alice", "password-alice", "127.0.0.5")
    r = alice.post(
        "/api/me/password", json={"current_password": "wrong", "new_password": "another-one"}
    )
    assert r.status_code == 403
    assert r.json()["message"] == "Current password is incorrect"
    r = alice.post(
        "/api/me/password", json={"current_password": "password-alice", "new_password": "x"}
    )
    assert r.status_code == 400
    r = alice.post(
        "/api/me/password",
        json={"current_password": "password-alice", "new_password": "another-one"},
    )
    assert r.status_code == 200
    assert r.json() == {"success": True, "message": "Password changed", "sessions_ended": 1}
    assert alice.get("/api/me").status_code == 200
    assert other.get("/api/me").status_code == 401
    log_in(app, "alice", "another-one", "127.0.0.6")


def test_the_audit_log_records_who_did_what_from_where(app: Any, admin: TestClient) -> None:
    """Logins (refused and accepted), user changes, environment and task changes appear
    newest first with actor, address and target, a page at a time."""
    r = client(app, "10.1.1.1").post("/login", json={"username": "bob", "password": "nope-nope"})
    assert r.status_code == 401
    bob = log_in(app, "bob", "password-bob", "10.1.1.2")
    r = bob.post("/api/tasks", json={"script": "print(1)", "conda_env": "e1"})
    assert r.status_code == 201
    task_id = r.json()["task"]["task_id"]
    admin.patch("/api/users/bob", json={"is_admin": True})
    r = admin.get("/api/audit", params={"limit": 3})
    assert r.status_code == 200
    page = r.json()
    got = [(e["action"], e["actor"], e["address"], e["target"]) for e in page["events"]]
    assert got == [
        ("user.update", "admin", "127.0.0.1", "bob"),
        ("task.create", "bob", "10.1.1.2", f"{task_id}:task_{task_id}.py"),
        ("environment.create", "bob", "10.1.1.2", "e1"),
    ]
    assert page["events"][0]["detail"]["is_admin"] is True
    rest = admin.get("/api/audit", params={"before": page["next_before"]}).json()
    actions = [(e["action"], e["target"], e["outcome"], e["address"]) for e in rest["events"]]
    assert actions[:2] == [
        ("login", "bob", "ok", "10.1.1.2"),
        ("login", "bob", "refused", "10.1.1.1"),
    ]
    assert ("user.create", "alice", "ok", "127.0.0.1") in actions
    assert rest["next_before"] is None
    assert admin.get("/api/audit", params={"before": "x"}).status_code == 400
    assert admin.get("/api/audit", params={"limit": "0"}).status_code == 400


class CountingHasher(FakePasswordHasher):
    """Checks that wait for each other: two must run at once for either to finish."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.together = threading.Barrier(parties, timeout=10)
        self.lock = threading.Lock()
        self.running = self.most = 0

    def verify(self, password_hash: str, password: str) -> bool:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.together.wait()  # a BrokenBarrierError (a 500) if checks ran one at a time
            return super().verify(password_hash, password)
        finally:
            with self.lock:
                self.running -= 1


def test_password_checks_run_in_parallel_up_to_login_checks() -> None:
    """Six logins at once with CTM_LOGIN_CHECKS=2: checks run two at a time (the barrier of
    two would break if they ran one after another), never more, and all six get in."""
    hasher = CountingHasher(parties=2)
    application = build_app(hasher, login_checks=2)
    statuses: list[int] = []
    # One client, entered: every request goes through its one event loop, as in the server.
    with TestClient(application) as shared:

        def one() -> None:
            r = shared.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            statuses.append(r.status_code)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert statuses == [200] * 6
    assert hasher.most == 2
