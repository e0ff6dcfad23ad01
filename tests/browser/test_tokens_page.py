"""API tokens on the account page in a real headless Chromium against a real ``ctm serve``
(venv backend): create one, see its secret once, use it from a script, delete it.

This module has a server of its own (the ``server`` fixture is per module). Each test leaves
screenshots in artifacts/screenshots/ and sets up what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.browser.conftest import PHONE, UI, confirm, unlabelled_controls
from tests.integration.conftest import Server

pytestmark = pytest.mark.slow

TINA_PW = "tina-password-1"
UMA_PW = "uma-password-1"


def token_row(ui: UI, name: str) -> Any:
    return ui.page.locator(f'#token-table tr[data-token-name="{name}"]')


def open_account(ui: UI) -> None:
    ui.page.get_by_role("link", name="Your account").click()
    ui.page.get_by_role("heading", level=1, name="Your account").wait_for()


def as_script(server: Server, secret: str) -> httpx.Response:
    """What a script sees when it calls /api/me with ``secret`` as its bearer token."""
    with httpx.Client(base_url=server.base, timeout=30.0) as script:
        return script.get("/api/me", headers={"Authorization": f"Bearer {secret}"})


def test_a_user_creates_uses_and_deletes_a_token(
    make_ui: Callable[..., UI], server: Server, admin_api: httpx.Client
) -> None:
    """A user creates a token on the account page and sees its secret once; a script can use
    it; after a reload only the listing is left; an admin sees it with its user; deleting it
    (after a confirmation) makes the script's calls 401; a bad name shows the API's error by
    the field."""
    r = admin_api.post("/create_user", json={"username": "tina", "password": TINA_PW})
    assert r.status_code == 201, r.text
    ui = make_ui()
    ui.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
    ui.open()
    ui.login("tina", TINA_PW)
    page = ui.page
    open_account(ui)
    page.locator("#tokens-empty").wait_for()
    assert page.locator("#tokens-list-title").inner_text() == "Your tokens"
    assert unlabelled_controls(ui) == []

    form = page.locator("#token-form")
    assert form.get_by_label("Lifetime in days").input_value() == "90"
    form.get_by_label("Name").fill("backup script")
    form.get_by_label("Lifetime in days").fill("30")
    form.get_by_role("button", name="Create token").click()

    # the secret, once, clearly marked, with how to use it
    box = page.locator("#token-secret .secret-box")
    box.wait_for()
    assert "You will not see it again" in box.inner_text()
    assert "backup script" in box.locator(".secret-title").inner_text()
    secret = page.locator("#token-secret-value").input_value()
    assert secret.startswith("ctm_") and len(secret) > 20
    assert page.get_by_label("The token", exact=True).input_value() == secret
    usage = box.locator(".secret-usage").inner_text().strip()
    assert usage == f'curl -H "Authorization: Bearer <token>" {server.base}/api/tasks'
    assert form.get_by_label("Name").input_value() == ""  # the form is ready for another
    assert unlabelled_controls(ui) == []

    box.get_by_role("button", name="Copy").click()
    status = page.locator("#token-copy-status")
    page.wait_for_function("() => document.querySelector('#token-copy-status').textContent")
    if "Copied" in status.inner_text():
        assert page.evaluate("navigator.clipboard.readText()") == secret
    else:  # no clipboard: the text is selected for Ctrl+C
        assert "selected" in status.inner_text()
        assert page.evaluate("document.activeElement.id") == "token-secret-value"

    row = token_row(ui, "backup script")
    row.wait_for()
    assert row.locator("[data-last-used]").inner_text() == "Never"
    assert row.locator("[data-token-user]").count() == 0  # no user column for a non-admin
    headers = page.locator("#token-table thead th").all_inner_texts()
    assert [x.strip().lower() for x in headers[:4]] == ["name", "created", "expires", "last used"]
    listed = admin_api.get("/api/tokens").json()["tokens"]
    mine = [t for t in listed if t["username"] == "tina"]
    assert len(mine) == 1 and mine[0]["name"] == "backup script"
    assert row.locator("td").nth(1).inner_text() == mine[0]["expires_at"]
    ui.shot("tokens-01-created")

    # a script uses it
    r = as_script(server, secret)
    assert r.status_code == 200, r.text
    assert r.json()["user"]["username"] == "tina"

    # after a reload the secret is gone for good; the token is listed, used just now
    page.reload()
    page.get_by_role("heading", level=1, name="Your account").wait_for()
    row.wait_for()
    assert page.locator("#token-secret-value").count() == 0
    assert page.locator("#token-secret").inner_text() == ""
    assert secret not in page.content()
    assert row.locator("[data-last-used]").inner_text() != "Never"
    ui.shot("tokens-02-after-reload")

    # an admin sees every user's tokens, with the user column
    assert admin_api.post("/api/tokens", json={"name": "admin-ci"}).status_code == 201
    admin = make_ui()
    admin.open()
    admin.login()
    open_account(admin)
    theirs = token_row(admin, "backup script")
    theirs.wait_for()
    assert theirs.locator("[data-token-user]").inner_text().strip() == "tina"
    assert "you" in token_row(admin, "admin-ci").locator("[data-token-user]").inner_text()
    assert admin.page.locator("#tokens-list-title").inner_text() == "All tokens (every user’s)"
    assert token_row(ui, "admin-ci").count() == 0  # tina sees only her own
    admin.shot("tokens-03-admin-sees-every-users-tokens")

    # cancelling the confirmation keeps it; confirming deletes it, and the script is refused
    row.get_by_role("button", name="Delete").click()
    confirm(ui, "Cancel")
    assert row.is_visible()
    row.get_by_role("button", name="Delete").click()
    dialog = page.locator("#confirm-dialog")
    dialog.wait_for(state="visible")
    assert "backup script" in dialog.inner_text()
    ui.shot("tokens-04-confirm-delete")
    confirm(ui, "Delete token")
    row.wait_for(state="detached")
    assert "Token “backup script” deleted." in page.locator("#tokens-result").inner_text()
    page.locator("#tokens-empty").wait_for()
    r = as_script(server, secret)
    assert r.status_code == 401, r.text
    ui.shot("tokens-05-deleted")

    # a bad name: the API's message, under the field, which gets the focus
    form.get_by_label("Name").fill("   ")
    form.get_by_role("button", name="Create token").click()
    err = form.locator('[data-error-for="name"]')
    err.wait_for(state="visible")
    assert "'name' must be a string of 1-100 characters" in err.inner_text()
    assert form.get_by_label("Name").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.name") == "name"
    assert page.locator("#token-secret .secret-box").count() == 0
    ui.shot("tokens-06-bad-name")

    # a lifetime out of range: the same, by its own field
    form.get_by_label("Name").fill("nightly")
    form.get_by_label("Lifetime in days").fill("0")
    form.get_by_role("button", name="Create token").click()
    days_err = form.locator('[data-error-for="expires_in_days"]')
    days_err.wait_for(state="visible")
    assert "from 1 to 3650" in days_err.inner_text()
    assert err.is_hidden()
    assert [t["name"] for t in admin_api.get("/api/tokens").json()["tokens"]] == ["admin-ci"]


def test_the_token_section_fits_a_phone(
    make_ui: Callable[..., UI], server: Server, admin_api: httpx.Client
) -> None:
    """On a phone the new secret, its usage hint and the token table fit without sideways
    scrolling."""
    r = admin_api.post("/create_user", json={"username": "uma", "password": UMA_PW})
    assert r.status_code == 201, r.text
    phone = make_ui(PHONE, tag="phone")
    phone.open()
    phone.login("uma", UMA_PW)
    page = phone.page
    phone.go("#/account")
    page.locator("#tokens-empty").wait_for()
    form = page.locator("#token-form")
    form.get_by_label("Name").fill("a rather long name for a token used by the nightly report job")
    form.get_by_role("button", name="Create token").click()
    page.locator("#token-secret .secret-box").wait_for()
    token_row(phone, "a rather long name for a token used by the nightly report job").wait_for()
    page.wait_for_timeout(200)
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    phone.shot("tokens-01-account-with-secret")
    assert overflow <= 0, f"the account page scrolls sideways by {overflow}px"
