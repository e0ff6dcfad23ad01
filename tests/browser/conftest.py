"""Fixtures for the dashboard tests: one real ctm server (venv backend) and one real headless
Chromium driven by Playwright for the whole module.

Chromium comes from the distribution (``apt-get install chromium``), never from
``playwright install``. Without it (or without the ``playwright`` package) the browser tests
are skipped with the reason, unless ``CTM_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN_PASSWORD, Server

CHROMIUM = os.environ.get("CTM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
ENV = "web-env"  # the environment the task tests run in


def _unavailable(reason: str) -> None:
    if os.environ.get("CTM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CTM_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("dashboard") / "data", extra_env={"CTM_STOP_GRACE_SECONDS": "3"}
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin_api(server: Server) -> Iterator[httpx.Client]:
    """An API client logged in as admin, for setup and for checking what the UI did."""
    with server.client() as client:
        server.login(client)
        yield client


@pytest.fixture(scope="module")
def web_env(admin_api: httpx.Client) -> str:
    """The environment ``ENV``: made through the UI by the environment test when it ran first,
    else created here through the API."""
    if admin_api.get(f"/api/conda/environment/{ENV}").status_code == 404:
        r = admin_api.post("/api/conda/environment", json={"name": ENV})
        assert r.status_code == 201, r.text
    return ENV


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)
    if not executable and not shutil.which(CHROMIUM):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class UI:
    """One browser context (cookies of its own) and page, with the helpers the tests share."""

    def __init__(self, browser: Any, server: Server, viewport: dict[str, int], tag: str) -> None:
        self.server = server
        self.base = server.base
        self.tag = tag
        self.context = browser.new_context(viewport=viewport, base_url=server.base)
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.js_errors: list[str] = []
        self.csp_violations: list[str] = []
        self.page.on("pageerror", lambda exc: self.js_errors.append(str(exc)))
        self.page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        if re.search(r"Content.Security.Policy", msg.text, re.IGNORECASE):
            self.csp_violations.append(msg.text)

    def open(self, hash_route: str = "") -> None:
        self.page.goto(f"/{hash_route}")

    def go(self, hash_route: str) -> None:
        """Navigate inside the single-page app (no reload)."""
        self.page.evaluate("(h) => { location.hash = h; }", hash_route)

    def login(self, user: str = "admin", password: str = ADMIN_PASSWORD) -> None:
        if not self.page.url.startswith(self.base):
            self.open()
        self.page.locator("#login-username").fill(user)
        self.page.locator("#login-password").fill(password)
        self.page.locator("#login-form button[type=submit]").click()
        self.page.locator("#topbar").wait_for(state="visible")

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.tag}-{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")  # the sticky bar at the top of the picture
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()
        assert self.js_errors == [], f"JavaScript errors: {self.js_errors}"
        assert self.csp_violations == [], f"CSP violations: {self.csp_violations}"


@pytest.fixture
def make_ui(browser: Any, server: Server) -> Iterator[Callable[..., UI]]:
    made: list[UI] = []

    def make(viewport: dict[str, int] | None = None, tag: str = "laptop") -> UI:
        ui = UI(browser, server, viewport or LAPTOP, tag)
        made.append(ui)
        return ui

    yield make
    for ui in made:
        ui.close()


@pytest.fixture
def ui(make_ui: Callable[..., UI]) -> UI:
    """A laptop-sized page, logged in as admin."""
    u = make_ui()
    u.open()
    u.login()
    return u


# --- helpers of the pages' tests ------------------------------------------------------------


def confirm(ui: UI, button: str) -> None:
    dialog = ui.page.locator("#confirm-dialog")
    dialog.wait_for(state="visible")
    dialog.get_by_role("button", name=button).click()
    dialog.wait_for(state="hidden")


def unlabelled_controls(ui: UI) -> list[str]:
    found: list[str] = ui.page.evaluate("""() => [
        ...document.querySelectorAll('input, textarea, select, button')]
        .filter(e => !e.closest('[hidden]') && e.type !== 'hidden' && !e.hidden)
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !(e.tagName === 'BUTTON' && e.textContent.trim()))
        .map(e => e.outerHTML.slice(0, 80))""")
    return found
