"""API tokens over HTTP on fakes: shown once, bearer acts as its user without cookie or
cross-site check, and stops working when deleted, expired, or its user disabled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from ctm_adapters.clock import FakeClock
from tests.unit.test_user_admin_http import ADMIN_PASSWORD, build_app, client, log_in


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Iterator[Any]:
    application = build_app(clock=clock)
    with TestClient(application, client=("127.0.0.1", 40000)):
        yield application


@pytest.fixture
def admin(app: Any) -> TestClient:
    c = log_in(app, "admin", ADMIN_PASSWORD)
    assert c.post("/create_user", json={"username": "alice", "password": "alice-pw-1"}).status_code
    return c


def bearer(app: Any, token: str) -> TestClient:
    c = client(app)
    c.headers["Authorization"] = f"Bearer {token}"
    return c


def new_token(c: TestClient, **body: Any) -> dict[str, Any]:
    r = c.post("/api/tokens", json={"name": "ci", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_a_token_acts_as_its_user_without_cookie_or_cross_site_check(
    app: Any, admin: TestClient
) -> None:
    """The secret is in the create answer only; with it a client that has no cookie creates
    and reads tasks as alice, from a foreign Origin too, and gets no cookie back."""
    alice = log_in(app, "alice", "alice-pw-1")
    created = new_token(alice)
    secret = created["token"]
    assert secret.startswith("ctm_") and len(secret) >= 46
    assert created["token_info"]["username"] == "alice"
    listed = alice.get("/api/tokens").json()["tokens"]
    assert [t["name"] for t in listed] == ["ci"] and secret not in str(listed)
    script = bearer(app, secret)
    r = script.post(
        "/api/tasks",
        json={"script": "print(1)", "conda_env": "e1", "delay_seconds": 60},
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert r.status_code == 201, r.text
    assert "set-cookie" not in r.headers
    assert script.get("/api/me").json()["user"]["username"] == "alice"
    assert script.get("/api/users").status_code == 403  # alice's permissions, not more
    assert not script.cookies


def test_a_token_stops_working_when_deleted_expired_or_its_user_disabled(
    app: Any, admin: TestClient, clock: FakeClock
) -> None:
    alice = log_in(app, "alice", "alice-pw-1")
    deleted = new_token(alice)
    assert alice.delete(f"/api/tokens/{deleted['token_info']['id']}").status_code == 200
    assert bearer(app, deleted["token"]).get("/api/me").status_code == 401

    short = new_token(alice, expires_in_days=1)
    assert bearer(app, short["token"]).get("/api/me").status_code == 200
    clock.advance(24 * 3600)
    assert bearer(app, short["token"]).get("/api/me").status_code == 401

    admin = log_in(app, "admin", ADMIN_PASSWORD)  # the day also ended the sessions
    kept = new_token(admin)["token"]
    doomed = new_token(log_in(app, "alice", "alice-pw-1"))["token"]
    assert admin.patch("/api/users/alice", json={"disabled": True}).status_code == 200
    assert bearer(app, doomed).get("/api/me").status_code == 401
    admin.patch("/api/users/alice", json={"disabled": False})
    assert bearer(app, doomed).get("/api/me").status_code == 401  # gone, not suspended
    assert bearer(app, kept).get("/api/me").status_code == 200


def test_a_new_password_ends_the_users_tokens(app: Any, admin: TestClient) -> None:
    alice = log_in(app, "alice", "alice-pw-1")
    secret = new_token(alice)["token"]
    r = alice.post(
        "/api/me/password", json={"current_password": "alice-pw-1", "new_password": "alice-pw-2"}
    )
    assert r.status_code == 200
    assert bearer(app, secret).get("/api/me").status_code == 401


def test_tokens_are_ones_own_and_admins_see_all(app: Any, admin: TestClient) -> None:
    alice = log_in(app, "alice", "alice-pw-1")
    mine = new_token(alice)["token_info"]["id"]
    theirs = new_token(admin)["token_info"]["id"]
    assert [t["id"] for t in alice.get("/api/tokens").json()["tokens"]] == [mine]
    assert {t["id"] for t in admin.get("/api/tokens").json()["tokens"]} == {mine, theirs}
    r = alice.delete(f"/api/tokens/{theirs}")
    assert r.status_code == 404 and r.json()["message"] == "Token not found"
    assert admin.delete(f"/api/tokens/{mine}").status_code == 200
    events = admin.get("/api/audit").json()["events"]
    assert [e["action"] for e in events[:3]] == ["token.delete", "token.create", "token.create"]


@pytest.mark.parametrize(
    "header",
    ["Bearer ", "Bearer nope", "Bearer ctm_" + "x" * 43, "Bearer " + "y" * 300, "Basic abc"],
)
def test_a_bad_bearer_is_401(app: Any, admin: TestClient, header: str) -> None:
    c = client(app)
    c.headers["Authorization"] = header
    r = c.get("/api/tasks")
    assert r.status_code == 401
    assert r.json()["message"] == "Authentication required"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "a\u202eb"},
        {"name": "ok", "expires_in_days": 0},
        {"name": "ok", "expires_in_days": 3651},
        {"name": "ok", "expires_in_days": True},
        {"name": "ok", "expires_in_days": 1.5},
    ],
)
def test_bad_token_requests_are_400(admin: TestClient, body: dict[str, Any]) -> None:
    r = admin.post("/api/tokens", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["success"] is False
