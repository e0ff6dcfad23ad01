"""The web dashboard in a real headless Chromium against a real ``ctm serve`` (venv backend).

Each test leaves a screenshot per page/state in artifacts/screenshots/. The tests share one
server; they are written to run in file order but each sets up what it needs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import ENV, PHONE, UI
from tests.integration.conftest import ADMIN_PASSWORD, Server

pytestmark = pytest.mark.slow

STATIC = Path(__file__).resolve().parents[2] / "src" / "ctm_http" / "static"

HELLO = """\
import time
for i in range(3):
    print(f"step {i}", flush=True)
    time.sleep(0.4)
print("done", flush=True)
"""

LONG = """\
import time
for i in range(600):
    print(f"tick {i}", flush=True)
    time.sleep(0.2)
"""


def status_of(ui: UI) -> str | None:
    return ui.page.locator("#task-status .badge").get_attribute("data-status")


def svg_marks(ui: UI, selector: str) -> list[dict[str, float | str]]:
    """The drawn marks (path d / rect size) of the SVGs under ``selector``."""
    return ui.page.eval_on_selector_all(
        f"{selector} svg path, {selector} svg rect.bar, {selector} svg rect.column-part",
        """els => els.map(e => e.tagName === 'path'
              ? {kind: 'path', d: e.getAttribute('d') || ''}
              : {kind: 'rect', w: e.getBBox().width, h: e.getBBox().height})""",
    )


def create_task_in_ui(ui: UI, name: str, code: str, env: str = ENV) -> int:
    ui.go("#/tasks/new")
    form = ui.page.locator("#task-form")
    form.get_by_label("Task name").fill(name)
    form.get_by_label("Python code").fill(code)
    form.get_by_label("Environment", exact=True).fill(env)
    form.get_by_role("button", name="Create task").click()
    ui.page.wait_for_url(re.compile(r"#/tasks/\d+$"))
    return int(ui.page.url.rsplit("/", 1)[1])


# --- page, static files, login ------------------------------------------------------------------


def test_page_is_public_strict_and_self_contained(server: Server) -> None:
    """The page loads without a session, with a strict CSP and nothing from outside."""
    r = httpx.get(server.base + "/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    for name in ("app.js", "charts.js", "app.css"):
        s = httpx.get(f"{server.base}/static/{name}")
        assert s.status_code == 200, name
        assert s.headers["x-content-type-options"] == "nosniff"
    assert "javascript" in httpx.get(server.base + "/static/app.js").headers["content-type"]
    assert httpx.get(server.base + "/static/missing.js").status_code == 404
    assert httpx.get(server.base + "/api/tasks").status_code == 401  # the data stays behind login
    # offline: nothing is loaded from another origin, no inline script or style
    for path in STATIC.rglob("*"):
        if path.suffix in {".html", ".js", ".css"}:
            text = path.read_text()
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
            assert not re.search(r"""(from|import)\s*\(?\s*["'](https?:)?//""", text), path
            assert "@import" not in text, path
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "style=" not in html


def test_login_by_keyboard_with_errors_in_words(make_ui: Callable[..., UI]) -> None:
    """Login works from the keyboard alone, and a wrong password is explained in words."""
    ui = make_ui()
    ui.open()
    page = ui.page
    page.locator("#login-form").wait_for()
    assert page.evaluate("document.activeElement.id") == "login-username"
    ui.shot("01-login")
    page.keyboard.type("admin")
    page.keyboard.press("Tab")
    page.keyboard.type("wrong-password")
    page.keyboard.press("Enter")
    error = page.locator("#login-error")
    error.wait_for(state="visible")
    assert "Wrong username or password" in error.inner_text()
    ui.shot("02-login-error")
    # focus is visible on keyboard focus
    page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline
    page.locator("#login-password").fill(ADMIN_PASSWORD)
    page.locator("#login-password").press("Enter")
    page.locator("#topbar").wait_for(state="visible")
    page.get_by_role("heading", level=1, name="Tasks").wait_for()
    assert "admin (admin)" in page.locator("#whoami-name").inner_text()
    assert page.locator("#nav-users").is_visible()


# --- environments -----------------------------------------------------------------------------


def test_environment_create_rename_and_failed_install(ui: UI, admin_api: httpx.Client) -> None:
    """An env is created with a busy state, renamed, and a failed install names the package."""
    if admin_api.get(f"/api/conda/environment/{ENV}").status_code == 200:
        pytest.skip(f"{ENV} exists already (tests run out of order)")
    page = ui.page
    ui.go("#/environments")
    page.get_by_role("heading", level=1, name="Environments").wait_for()
    form = page.locator("#env-form")
    form.get_by_label("Name").fill("web-tmp")
    form.get_by_role("button", name="Create environment").click()
    # a long operation: a busy state first, then the result
    busy = form.locator(".busy-status")
    busy.wait_for(state="visible")
    assert "Creating environment" in busy.inner_text()
    assert form.get_by_role("button").first.is_disabled()
    ui.shot("03-environment-creating")
    form.locator(".success").wait_for(timeout=60_000)
    assert "web-tmp" in form.locator(".success").inner_text()
    row = page.locator('#environment-table tr[data-env="web-tmp"]')
    row.wait_for()
    assert re.match(r"3\.\d+", row.locator("td").nth(0).inner_text())
    disk = row.locator("[data-disk-for]")
    page.wait_for_function("el => el.textContent !== '…'", arg=disk.element_handle())
    assert re.search(r"\d+(\.\d+)? (MB|GB)", disk.inner_text())

    # detail: packages with versions and usage stats; then rename it to web-env
    row.get_by_role("link", name="web-tmp").click()
    page.get_by_role("heading", level=1, name="web-tmp").wait_for()
    pip_row = page.locator('#packages tr[data-package="pip"]')
    pip_row.wait_for()
    assert re.match(r"\d+\.", pip_row.locator("td").first.inner_text())
    assert "Tasks using it" in page.locator("#env-usage-cards").inner_text()
    rename = page.locator("#rename-form")
    rename.get_by_label("New name").fill(ENV)
    rename.get_by_role("button", name="Rename").click()
    page.get_by_role("heading", level=1, name=ENV).wait_for()
    assert page.url.endswith(f"#/environments/{ENV}")

    # a failed install names the failed package and says why, next to the field
    install = page.locator("#install-form")
    install.get_by_label("Packages to install").fill("no-such-package-ctm-zz9")
    install.get_by_role("button", name="Install").click()
    err = install.locator('[data-error-for="packages"]')
    err.wait_for(state="visible", timeout=60_000)
    text = err.inner_text()
    assert "Failed to install packages" in text
    assert "no-such-package-ctm-zz9" in err.locator(".failed-packages").inner_text()
    assert "not found" in err.locator(".error-details").inner_text()
    assert install.get_by_label("Packages to install").get_attribute("aria-invalid") == "true"
    ui.shot("04-environment-install-failed")


# --- tasks -------------------------------------------------------------------------------------


def test_task_runs_and_updates_live(ui: UI, web_env: str) -> None:
    """A created task's badge and log change from running to completed without a reload."""
    page = ui.page
    tid = create_task_in_ui(ui, "hello-web", HELLO, web_env)
    page.locator("#task-status").wait_for(state="attached")
    page.evaluate("window.__noReload = true")
    # every status the badge shows, recorded in the page
    page.evaluate("""() => {
        window.__seen = [];
        const slot = document.querySelector('#task-status');
        const note = () => {
            const b = slot.querySelector('.badge');
            const last = window.__seen[window.__seen.length - 1];
            if (b && last !== b.dataset.status) window.__seen.push(b.dataset.status);
        };
        note();
        new MutationObserver(note).observe(slot, {childList: true, subtree: true});
    }""")
    page.wait_for_function("() => window.__seen.includes('completed')", timeout=30_000)
    seen = page.evaluate("window.__seen")
    assert seen[-1] == "completed" and len(seen) >= 2, seen  # it changed in place
    assert page.evaluate("window.__noReload") is True
    log = page.locator("#task-log")
    page.wait_for_function("() => document.querySelector('#task-log').textContent.includes('done')")
    assert "step 0" in log.inner_text() and "step 2" in log.inner_text()
    assert "Exit code" in page.locator("#latest-run").inner_text()
    page.locator("#execution-history tbody tr").first.wait_for()
    # duration and memory charts drawn from performance_metrics
    page.locator("#duration-chart svg path.line").wait_for(state="attached")
    durations = svg_marks(ui, "#duration-chart")
    assert durations and all(m["d"].startswith("M ") for m in durations)
    assert len(svg_marks(ui, "#memory-chart")) == 2  # peak and average
    ui.shot("05-task-completed")

    # the list: badge, next/last run, stats with the 7-day chart and recent runs
    ui.go("#/tasks")
    row = page.locator(f'#task-table tr[data-task-id="{tid}"]')
    row.wait_for()
    assert row.locator(".badge").get_attribute("data-status") == "completed"
    page.locator("#task-7day-chart svg rect.column-part").first.wait_for()
    bars = svg_marks(ui, "#task-7day-chart")
    assert bars and all(b["h"] > 0 and b["w"] > 0 for b in bars)
    assert "hello-web" in page.locator("#recent-runs").inner_text()
    assert page.locator("#task-stat-cards").inner_text().count("Completed") == 1
    ui.shot("06-tasks-list")


def test_task_form_shows_api_validation_next_to_fields(ui: UI, web_env: str) -> None:
    """The API's validation messages appear under the field they are about."""
    page = ui.page
    ui.go("#/tasks/new")
    form = page.locator("#task-form")
    form.get_by_label("Python code").fill("print('never')")
    form.get_by_label("Environment", exact=True).fill(web_env)

    form.get_by_label("Repeatedly, on a cron schedule").check()
    form.get_by_label("Cron expression").fill("every tuesday")
    form.get_by_role("button", name="Create task").click()
    cron_error = form.locator('[data-error-for="cron_expression"]')
    cron_error.wait_for(state="visible")
    assert "The provided cron expression is invalid" in cron_error.inner_text()
    assert form.get_by_label("Cron expression").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.name") == "cron_expression"
    ui.shot("07-task-form-cron-error")

    form.get_by_label("Once, after a delay").check()
    form.get_by_label("Delay in seconds").fill("-5")
    form.get_by_role("button", name="Create task").click()
    delay_error = form.locator('[data-error-for="delay_seconds"]')
    delay_error.wait_for(state="visible")
    assert "non-negative delay" in delay_error.inner_text()
    assert cron_error.is_hidden()

    form.get_by_label("Now, once").check()
    form.get_by_label("Environment", exact=True).fill("no-such-env")
    form.get_by_label("Reuse an existing environment only").check()
    form.get_by_role("button", name="Create task").click()
    env_error = form.locator('[data-error-for="conda_env"]')
    env_error.wait_for(state="visible")
    assert "Cannot reuse non-existing environment" in env_error.inner_text()
    ui.shot("08-task-form-env-error")

    # every control has a label, every button a name
    unlabelled = page.evaluate("""() => [
        ...document.querySelectorAll('input, textarea, select, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !(e.tagName === 'BUTTON' && e.textContent.trim()))
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unlabelled == []


def test_stop_and_delete_a_long_running_task(ui: UI, web_env: str, admin_api: httpx.Client) -> None:
    """A running task is stopped from its page, then deleted after confirmation."""
    page = ui.page
    tid = create_task_in_ui(ui, "long-web", LONG, web_env)
    page.wait_for_function(
        "() => document.querySelector('#task-status .badge')?.dataset.status === 'running'"
    )
    # the log grows while it runs, without a reload
    page.wait_for_function(
        "() => document.querySelector('#task-log').textContent.includes('tick 3')"
    )
    ui.shot("09-task-running")
    stop = page.get_by_role("button", name="Stop run")
    stop.click()
    page.wait_for_function(
        "() => document.querySelector('#task-status .badge')?.dataset.status === 'stopped'",
        timeout=30_000,
    )
    assert stop.is_hidden()
    page.locator("#execution-history .badge-stopped").wait_for()
    assert admin_api.get(f"/api/tasks/{tid}").json()["task"]["status"] == "stopped"
    ui.shot("10-task-stopped")

    page.get_by_role("button", name="Delete").click()
    dialog = page.locator("#confirm-dialog")
    dialog.wait_for(state="visible")
    ui.shot("11-task-delete-confirm")
    dialog.get_by_role("button", name="Delete task").click()
    page.wait_for_url(re.compile(r"#/tasks$"))
    page.locator("#tasks-table :is(table, .empty)").wait_for()
    assert page.locator(f'#task-table tr[data-task-id="{tid}"]').count() == 0
    assert admin_api.get(f"/api/tasks/{tid}").status_code == 404


def test_environment_charts_and_refused_delete(
    ui: UI, web_env: str, admin_api: httpx.Client
) -> None:
    """The pie and bar charts are drawn from real data; deleting an env while one of its tasks
    runs is refused in words."""
    running = admin_api.post(
        "/api/tasks", json={"script": "import time\ntime.sleep(120)\n", "conda_env": web_env}
    ).json()["task"]
    deadline = time.monotonic() + 30  # only a running task pins its environment
    while admin_api.get(f"/api/tasks/{running['task_id']}").json()["task"]["status"] != "running":
        assert time.monotonic() < deadline, "the pinning task never started"
        time.sleep(0.1)
    page = ui.page
    ui.go("#/environments")
    page.locator("#env-usage-chart svg path.pie-slice").first.wait_for()
    slices = svg_marks(ui, "#env-usage-chart")
    assert slices and all(s["d"].startswith("M ") for s in slices)
    page.locator("#package-count-chart svg rect.bar").first.wait_for()
    bars = svg_marks(ui, "#package-count-chart")
    assert bars and all(b["w"] > 0 for b in bars)
    assert web_env in page.locator("#package-count-chart").inner_text()
    ui.shot("12-environments")

    ui.go(f"#/environments/{web_env}")
    page.get_by_role("heading", level=1, name=web_env).wait_for()
    page.locator("#env-tasks li").first.wait_for()
    page.get_by_role("button", name="Delete environment").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Delete environment").click()
    alert = page.locator(".danger-zone .alert")
    alert.wait_for()
    assert "Cannot delete environment that is referenced by tasks" in alert.inner_text()
    assert "task_" in alert.inner_text() or ".py" in alert.inner_text()  # the referencing scripts
    ui.shot("13-environment-delete-refused")
    admin_api.delete(f"/api/tasks/{running['task_id']}")


# --- users, logout, session end ----------------------------------------------------------------


def test_admin_creates_user_who_logs_in_and_out(make_ui: Callable[..., UI]) -> None:
    """An admin creates a user, who logs in, sees no Users link, and logs out."""
    admin = make_ui()
    admin.open()
    admin.login()
    page = admin.page
    page.get_by_role("link", name="Users").click()
    form = page.locator("#create-user-form")
    form.get_by_label("Username").fill("carol")
    form.get_by_label("Password").fill("carol-password-1")
    form.get_by_role("button", name="Create user").click()
    form.locator(".success").wait_for()
    assert "carol" in form.locator(".success").inner_text()
    form.get_by_label("Username").fill("carol")
    form.get_by_label("Password").fill("carol-password-1")
    form.get_by_role("button", name="Create user").click()
    dup = form.locator('[data-error-for="username"]')
    dup.wait_for(state="visible")
    assert "User already exists" in dup.inner_text()
    admin.shot("14-users")
    page.get_by_role("button", name="Log out").click()
    page.locator("#login-form").wait_for(state="visible")
    assert "You have logged out" in page.locator("#login-notice").inner_text()
    assert page.evaluate("fetch('/api/me').then(r => r.status)") == 401
    admin.shot("15-logged-out")

    admin.login("carol", "carol-password-1")
    assert "carol" in page.locator("#whoami-name").inner_text()
    assert page.locator("#nav-users").is_hidden()
    page.get_by_role("button", name="Log out").click()
    page.locator("#login-form").wait_for(state="visible")


def test_session_end_goes_back_to_login(ui: UI) -> None:
    """When the session ends, the next action returns to the login form."""
    page = ui.page
    ui.go("#/environments")
    page.get_by_role("heading", level=1, name="Environments").wait_for()
    # End the session server-side, as expiry does (clearing the browser's cookie alone races
    # with an in-flight poll whose answer renews it).
    page.evaluate("() => fetch('/logout', {method: 'POST', credentials: 'same-origin'})")
    ui.go("#/tasks")  # the next API call answers 401
    page.locator("#login-form").wait_for(state="visible")
    assert "session has ended" in page.locator("#login-notice").inner_text()
    ui.login()  # and back where we were going
    page.get_by_role("heading", level=1, name="Tasks").wait_for()


def test_phone_layout_has_no_sideways_scroll(
    make_ui: Callable[..., UI], admin_api: httpx.Client, web_env: str
) -> None:
    """On a phone-sized screen every page fits without sideways scrolling."""
    phone = make_ui(PHONE, tag="phone")
    phone.open()
    phone.page.locator("#login-form").wait_for()
    phone.shot("01-login")
    phone.login()
    tasks = admin_api.get("/api/tasks").json()
    pages = [
        ("02-tasks", "#/tasks", "#task-table"),
        ("03-new-task", "#/tasks/new", "#task-form"),
        ("05-environments", "#/environments", "#environment-table"),
        ("06-environment", f"#/environments/{web_env}", "#packages"),
        ("07-users", "#/users", "#create-user-form"),
    ]
    if tasks:
        pages.insert(2, ("04-task", f"#/tasks/{tasks[0]['task_id']}", "#execution-history"))
    for name, route, ready in pages:
        phone.go(route)
        phone.page.locator(ready).first.wait_for()
        phone.page.wait_for_timeout(200)
        overflow = phone.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        phone.shot(name)
        assert overflow <= 0, f"{route} scrolls sideways by {overflow}px"
