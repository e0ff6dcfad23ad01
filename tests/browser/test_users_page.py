"""The Users page, the account page and the audit log in a real headless Chromium against a
real ``ctm serve`` (venv backend).

This module has a server of its own (the ``server`` fixture is per module), so its admin is
the only admin. Each test leaves screenshots in artifacts/screenshots/ and sets up what it
needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.browser.conftest import PHONE, UI, confirm, unlabelled_controls
from tests.integration.conftest import Server

pytestmark = pytest.mark.slow

DAVE_PW = "dave-password-1"
DAVE_PW2 = "dave-password-2"
ERIN_PW = "erin-password-1"
ERIN_PW2 = "erin-password-2"


def user_row(ui: UI, name: str) -> Any:
    return ui.page.locator(f'#user-table tr[data-user="{name}"]')


def audit_rows(ui: UI) -> list[dict[str, Any]]:
    """The audit table as shown, top to bottom."""
    rows: list[dict[str, Any]] = ui.page.eval_on_selector_all(
        "#audit-rows tr",
        """rows => rows.map(r => ({
            id: Number(r.dataset.eventId), action: r.dataset.action, outcome: r.dataset.outcome,
            cells: [...r.cells].map(c => c.innerText.trim())}))""",
    )
    return rows


def is_subsequence(wanted: list[tuple[str, str, str]], seen: list[tuple[str, str, str]]) -> bool:
    it = iter(seen)
    return all(w in it for w in wanted)


def wait_until_not_running(api: httpx.Client, task_id: int) -> None:
    deadline = time.monotonic() + 30
    while api.get(f"/api/tasks/{task_id}").json()["task"]["status"] in ("running", "scheduled"):
        assert time.monotonic() < deadline, "the task never finished"
        time.sleep(0.2)


def test_admin_manages_a_user_from_the_table(
    make_ui: Callable[..., UI], server: Server, admin_api: httpx.Client, web_env: str
) -> None:
    """An admin creates, disables, enables, re-passwords and deletes a user from the table; the
    user is logged out when disabled, the last admin cannot be demoted, a user who owns tasks is
    not deleted, and the audit log lists it all, newest first."""
    admin = make_ui()
    admin.open()
    admin.login()
    page = admin.page
    page.get_by_role("link", name="Users", exact=True).click()
    page.get_by_role("heading", level=1, name="Users").wait_for()
    me = user_row(admin, "admin")
    me.wait_for()
    assert me.locator("[data-you]").inner_text() == "you"
    assert me.locator("[data-role]").inner_text() == "Admin"
    assert int(me.locator("[data-sessions]").inner_text()) >= 1  # this very session
    text = page.locator("#view").inner_text()
    assert "Created in this session" not in text and "no route" not in text
    assert unlabelled_controls(admin) == []

    # create a user: the table shows them at once
    form = page.locator("#create-user-form")
    form.get_by_label("Username").fill("dave")
    form.get_by_label("Password").fill(DAVE_PW)
    form.get_by_role("button", name="Create user").click()
    row = user_row(admin, "dave")
    row.wait_for()
    assert row.locator("[data-role]").inner_text() == "User"
    assert row.locator("[data-state]").get_attribute("data-state") == "active"
    assert row.locator("[data-you]").count() == 0
    admin.shot("users-01-created")

    # dave logs in in a browser of his own and watches the task list (which polls)
    dave = make_ui()
    dave.open()
    dave.login("dave", DAVE_PW)
    dave.page.get_by_role("heading", level=1, name="Tasks").wait_for()
    assert dave.page.locator("#nav-users").is_hidden()
    assert dave.page.locator("#nav-audit").is_hidden()

    # disabling ends his session: his next poll sends him to the login form
    row.get_by_role("button", name="Disable").click()
    confirm(admin, "Disable user")
    row.locator('[data-state="disabled"]').wait_for()
    result = page.locator("#users-result")
    assert "dave is disabled; 1 session ended" in result.inner_text()
    assert row.get_by_role("button", name="Enable").is_visible()
    admin.shot("users-02-disabled")
    dave.page.locator("#login-form").wait_for(state="visible", timeout=15_000)
    assert "session has ended" in dave.page.locator("#login-notice").inner_text()
    dave.page.locator("#login-username").fill("dave")
    dave.page.locator("#login-password").fill(DAVE_PW)
    dave.page.locator("#login-form button[type=submit]").click()
    dave.page.locator("#login-error").wait_for(state="visible")
    assert "Wrong username or password" in dave.page.locator("#login-error").inner_text()
    dave.shot("users-03-disabled-user-cannot-log-in")

    row.get_by_role("button", name="Enable").click()
    row.locator('[data-state="active"]').wait_for()
    assert "dave is enabled" in result.inner_text()

    # a new password: the API's check shows next to the field, then dave logs in with it
    row.get_by_role("button", name="Set password").click()
    dialog = page.locator("#password-dialog")
    dialog.wait_for(state="visible")
    assert page.evaluate("document.activeElement.type") == "password"
    dialog.get_by_label("New password").fill("short")
    dialog.get_by_role("button", name="Set password").click()
    err = dialog.locator('[data-error-for="password"]')
    err.wait_for(state="visible")
    assert "8-1024 characters" in err.inner_text()
    assert dialog.get_by_label("New password").get_attribute("aria-invalid") == "true"
    admin.shot("users-04-set-password-error")
    dialog.get_by_label("New password").fill(DAVE_PW2)
    dialog.get_by_role("button", name="Set password").click()
    dialog.wait_for(state="detached")
    page.locator("#users-result .success").wait_for()
    assert "New password set for dave" in result.inner_text()
    dave.login("dave", DAVE_PW2)
    dave.page.get_by_role("heading", level=1, name="Tasks").wait_for()

    # the only admin cannot remove their own admin rights: the API's 409, in words
    me.get_by_role("button", name="Remove admin").click()
    confirm(admin, "Remove admin")
    alert = page.locator("#users-result .alert")
    alert.wait_for()
    assert "Cannot remove the last admin" in alert.inner_text()
    assert "'admin' is the only enabled admin" in alert.inner_text()
    assert me.locator("[data-role]").inner_text() == "Admin"
    admin.shot("users-05-last-admin-refused")

    # a user who owns a task is not deleted: the 409 says how many and what to do
    with server.client() as as_dave:
        server.login(as_dave, "dave", DAVE_PW2)
        r = as_dave.post(
            "/api/tasks",
            json={"script": "print('hi')\n", "conda_env": web_env, "task_name": "dave-task"},
        )
        assert r.status_code == 201, r.text
        task_id = r.json()["task"]["task_id"]
    row.get_by_role("button", name="Delete").click()
    confirm(admin, "Delete user")
    alert.wait_for()
    assert "User still owns tasks" in alert.inner_text()
    assert "'dave' owns 1 task(s)" in alert.inner_text()
    assert row.is_visible()
    admin.shot("users-06-owns-tasks-refused")

    wait_until_not_running(admin_api, task_id)
    assert admin_api.delete(f"/api/tasks/{task_id}").status_code in (200, 204)
    row.get_by_role("button", name="Delete").click()
    confirm(admin, "Delete user")
    row.wait_for(state="detached")
    assert "User dave deleted" in result.inner_text()
    names = [u["username"] for u in admin_api.get("/api/users").json()["users"]]
    assert "dave" not in names
    admin.shot("users-07-deleted")

    # the audit log: every step, newest first, with who and from where
    page.get_by_role("link", name="Audit", exact=True).click()
    page.get_by_role("heading", level=1, name="Audit log").wait_for()
    page.locator("#audit-rows tr").first.wait_for()
    rows = audit_rows(admin)
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    # columns: time, actor, address, action, target, outcome, details
    seen = [(r["action"], r["cells"][4], r["outcome"]) for r in reversed(rows)]
    assert is_subsequence(
        [
            ("user.create", "dave", "ok"),
            ("login", "dave", "ok"),
            ("user.update", "dave", "ok"),  # disabled
            ("login", "dave", "refused"),
            ("user.update", "dave", "ok"),  # enabled
            ("user.update", "dave", "ok"),  # new password
            ("login", "dave", "ok"),
            ("task.create", f"{task_id}:dave-task", "ok"),
            ("task.delete", f"{task_id}:dave-task", "ok"),
            ("user.delete", "dave", "ok"),
        ],
        seen,
    ), seen
    newest = rows[0]["cells"]
    assert newest[1:4] == ["admin", "127.0.0.1", "user.delete"] and newest[5] == "OK"
    disabled = [
        r for r in rows if r["action"] == "user.update" and "disabled: true" in r["cells"][6]
    ]
    assert disabled and disabled[0]["cells"][1] == "admin"
    admin.shot("users-08-audit")


def test_a_user_changes_their_own_password(
    make_ui: Callable[..., UI], admin_api: httpx.Client
) -> None:
    """A non-admin changes their password on the account page; the API's errors appear next
    to the field they are about; the old password stops working; admins see it audited."""
    r = admin_api.post("/create_user", json={"username": "erin", "password": ERIN_PW})
    assert r.status_code == 201, r.text
    ui = make_ui()
    ui.open()
    ui.login("erin", ERIN_PW)
    page = ui.page
    assert page.locator("#nav-users").is_hidden() and page.locator("#nav-audit").is_hidden()
    page.get_by_role("link", name="Your account").click()
    page.get_by_role("heading", level=1, name="Your account").wait_for()
    assert page.locator(".whoami-link").get_attribute("aria-current") == "page"
    form = page.locator("#my-password-form")
    current = form.get_by_label("Current password")
    new = form.get_by_label("New password", exact=True)
    repeat = form.get_by_label("New password again")
    assert unlabelled_controls(ui) == []

    # a wrong current password: the API's 403, under that field, which gets the focus
    current.fill("not-my-password")
    new.fill(ERIN_PW2)
    repeat.fill(ERIN_PW2)
    form.get_by_role("button", name="Change password").click()
    err = form.locator('[data-error-for="current_password"]')
    err.wait_for(state="visible")
    assert "Current password is incorrect" in err.inner_text()
    assert current.get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.name") == "current_password"
    ui.shot("account-01-wrong-current-password")

    # a new password that is too short: the API's 400, under the new password
    current.fill(ERIN_PW)
    new.fill("short")
    repeat.fill("short")
    form.get_by_role("button", name="Change password").click()
    new_err = form.locator('[data-error-for="new_password"]')
    new_err.wait_for(state="visible")
    assert "8-1024 characters" in new_err.inner_text()
    assert err.is_hidden()

    # two different new passwords never reach the server
    new.fill(ERIN_PW2)
    repeat.fill("something-else")
    form.get_by_role("button", name="Change password").click()
    form.locator('[data-error-for="repeat_password"]').wait_for(state="visible")

    repeat.fill(ERIN_PW2)
    form.get_by_role("button", name="Change password").click()
    form.locator(".success").wait_for()
    assert "Password changed" in form.locator(".success").inner_text()
    assert current.input_value() == ""
    ui.shot("account-02-password-changed")

    # admins-only pages say so
    ui.go("#/users")
    page.get_by_role("heading", level=1, name="Users").wait_for()
    assert "Only admins" in page.locator("#view .notice").inner_text()
    ui.go("#/audit")
    page.get_by_role("heading", level=1, name="Audit log").wait_for()
    assert "Only admins" in page.locator("#view .notice").inner_text()

    # the old password is gone, the new one works
    page.get_by_role("button", name="Log out").click()
    page.locator("#login-form").wait_for(state="visible")
    page.locator("#login-username").fill("erin")
    page.locator("#login-password").fill(ERIN_PW)
    page.locator("#login-form button[type=submit]").click()
    page.locator("#login-error").wait_for(state="visible")
    ui.login("erin", ERIN_PW2)

    # the admin sees the change in the audit log
    admin = make_ui()
    admin.open()
    admin.login()
    admin.go("#/audit")
    admin.page.locator('#audit-rows tr[data-action="user.password"]').first.wait_for()
    changed = [r for r in audit_rows(admin) if r["action"] == "user.password"]
    assert changed[0]["cells"][1] == "erin" and changed[0]["cells"][4] == "erin"
    assert changed[0]["outcome"] == "ok"


def test_audit_log_loads_more_and_updates_live(
    make_ui: Callable[..., UI], admin_api: httpx.Client
) -> None:
    """The audit log shows a page of events, older ones on *Load more* until the end, and new
    ones at the top without a reload; the pages fit a phone screen."""
    r = admin_api.post("/create_user", json={"username": "frank", "password": "frank-password"})
    assert r.status_code == 201, r.text
    for i in range(60):  # more than one page of events
        r = admin_api.patch("/api/users/frank", json={"disabled": i % 2 == 0})
        assert r.status_code == 200, r.text
    ui = make_ui()
    ui.open()
    ui.login()
    page = ui.page
    ui.go("#/users")
    page.get_by_role("link", name="Audit log").click()
    page.get_by_role("heading", level=1, name="Audit log").wait_for()
    page.locator("#audit-rows tr").first.wait_for()
    assert page.locator("#audit-rows tr").count() == 50
    more = page.get_by_role("button", name="Load more")
    assert more.is_visible() and page.locator("#audit-end").is_hidden()
    clicks = 0
    while more.is_visible():
        before = page.locator("#audit-rows tr").count()
        more.click()
        page.wait_for_function(
            "(n) => document.querySelectorAll('#audit-rows tr').length > n "
            "|| document.querySelector('#audit-more').hidden",
            arg=before,
        )
        clicks += 1
        assert clicks < 10
    assert page.locator("#audit-end").is_visible()
    ids = [row["id"] for row in audit_rows(ui)]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    everything = admin_api.get("/api/audit", params={"limit": 5000}).json()["events"]
    assert ids == [e["id"] for e in everything]
    ui.shot("audit-01-whole-log")

    # a new event appears at the top by itself
    page.evaluate("window.__noReload = true")
    assert admin_api.patch("/api/users/frank", json={"is_admin": True}).status_code == 200
    newest = admin_api.get("/api/audit", params={"limit": 1}).json()["events"][0]["id"]
    page.wait_for_function(
        "(id) => document.querySelector('#audit-rows tr')?.dataset.eventId === String(id)",
        arg=newest,
        timeout=15_000,
    )
    assert page.evaluate("window.__noReload") is True
    top = audit_rows(ui)[0]
    assert top["action"] == "user.update" and "is_admin: true" in top["cells"][6]

    # phone-sized: no sideways scrolling, tables as cards
    phone = make_ui(PHONE, tag="phone")
    phone.open()
    phone.login()
    for name, route, ready in [
        ("users-01-users", "#/users", "#user-table"),
        ("users-02-audit", "#/audit", "#audit-rows tr"),
        ("users-03-account", "#/account", "#my-password-form"),
    ]:
        phone.go(route)
        phone.page.locator(ready).first.wait_for()
        phone.page.wait_for_timeout(200)
        overflow = phone.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        phone.shot(name)
        assert overflow <= 0, f"{route} scrolls sideways by {overflow}px"
    phone.go("#/users")
    user_row(phone, "frank").get_by_role("button", name="Set password").click()
    phone.page.locator("#password-dialog").wait_for(state="visible")
    phone.shot("users-04-set-password-dialog")
    phone.page.keyboard.press("Escape")
    phone.page.locator("#password-dialog").wait_for(state="detached")


def test_wrong_current_passwords_are_throttled_in_words(
    make_ui: Callable[..., UI], admin_api: httpx.Client
) -> None:
    """After too many wrong current passwords the form says how long to wait, by the field."""
    r = admin_api.post("/create_user", json={"username": "gina", "password": "gina-password"})
    assert r.status_code == 201, r.text
    ui = make_ui()
    ui.open()
    ui.login("gina", "gina-password")
    ui.go("#/account")
    form = ui.page.locator("#my-password-form")
    err = form.locator('[data-error-for="current_password"]')
    form.get_by_label("New password", exact=True).fill("gina-password-2")
    form.get_by_label("New password again").fill("gina-password-2")
    for _ in range(6):  # 5 failures lock the (user, address) pair, as for logins
        form.get_by_label("Current password").fill("not-gina-password")
        form.get_by_role("button", name="Change password").click()
        err.wait_for(state="visible")
        if "Too many" in err.inner_text():
            break
        ui.page.wait_for_function("() => !document.querySelector('#my-password-form[aria-busy]')")
    assert "Too many wrong passwords. Try again in 15 minute(s)." in err.inner_text()
    ui.shot("account-03-throttled")
