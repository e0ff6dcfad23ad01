"""Admins see a red banner on every page while runs are not contained; nobody sees it when
they are."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser.conftest import LAPTOP, UI
from tests.integration.conftest import Server


@pytest.fixture(scope="module")
def uncontained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("uncontained") / "data", extra_env={"CTM_SANDBOX": "off"})
    srv.start()
    yield srv
    srv.stop()


def test_admin_sees_the_banner_while_runs_are_not_contained(
    browser: Any, uncontained: Server
) -> None:
    """With CTM_SANDBOX=off the admin's every page says runs are NOT contained, and why."""
    ui = UI(browser, uncontained, LAPTOP, "uncontained")
    try:
        ui.login()
        banner = ui.page.locator("#containment-banner")
        banner.wait_for(state="visible")
        assert "NOT contained" in banner.inner_text()
        assert "CTM_SANDBOX=off" in banner.inner_text()
        ui.go("#/environments")
        assert banner.is_visible()
        ui.shot("containment-banner")
    finally:
        ui.close()


def test_no_banner_when_runs_are_contained(
    browser: Any, server: Server, admin_api: httpx.Client
) -> None:
    """On a server whose runs are contained the banner stays hidden, for admins too."""
    assert admin_api.get("/api/me").json()["containment"]["contained"] is True
    ui = UI(browser, server, LAPTOP, "contained")
    try:
        ui.login()
        ui.go("#/tasks")
        ui.page.locator("#topbar").wait_for(state="visible")
        assert not ui.page.locator("#containment-banner").is_visible()
    finally:
        ui.close()
