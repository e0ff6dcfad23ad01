"""The task page's log, live through server-sent events, in a real headless Chromium against a
real ``ctm serve``; and the polled log when the browser has no EventSource."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from tests.browser.conftest import UI
from tests.browser.test_dashboard import create_task_in_ui

pytestmark = pytest.mark.slow

LINES = 20
NUMBERED = f"""\
import time
time.sleep(1)
for i in range({LINES}):
    print(f"line {{i}}", flush=True)
    time.sleep(0.15)
"""
EXPECTED = [f"line {i}" for i in range(LINES)]

# Each time the log's text changes, how many lines it holds (recorded in the page).
RECORD = """() => {
    window.__counts = [];
    const log = document.querySelector('#task-log');
    const note = () => {
        const n = log.textContent.split('\\n').filter((l) => l.startsWith('line ')).length;
        if (window.__counts[window.__counts.length - 1] !== n) window.__counts.push(n);
    };
    note();
    new MutationObserver(note).observe(log, {childList: true, characterData: true, subtree: true});
}"""


def log_lines(ui: UI) -> list[str]:
    text: str = ui.page.locator("#task-log").text_content() or ""
    return [line for line in text.split("\n") if line.startswith("line ")]


def test_the_log_shows_lines_live_in_order(ui: UI, web_env: str, admin_api: httpx.Client) -> None:
    """While the run goes, its lines arrive on the page in order through one event stream
    (several steps, never a line twice); after the end the log stays whole, and each run of
    the history has a link that downloads its whole log."""
    page = ui.page
    streams: list[str] = []
    page.on(
        "request",
        lambda r: streams.append(r.url) if r.resource_type == "eventsource" else None,
    )
    tid = create_task_in_ui(ui, "live-log", NUMBERED, web_env)
    page.locator("#task-log").wait_for(state="attached")
    page.evaluate(RECORD)
    page.wait_for_function(
        "() => document.querySelector('#task-log').textContent.includes('line 3')"
    )
    assert page.locator("#task-status .badge").get_attribute("data-status") == "running"
    ui.shot("30-task-log-live")
    page.wait_for_function(
        f"() => document.querySelector('#task-log').textContent.includes('line {LINES - 1}')",
        timeout=30_000,
    )
    page.wait_for_function(
        "() => document.querySelector('#task-status .badge')?.dataset.status === 'completed'",
        timeout=30_000,
    )
    assert log_lines(ui) == EXPECTED
    counts = page.evaluate("window.__counts")
    assert counts == sorted(counts) and counts[-1] == LINES
    assert len([n for n in counts if 0 < n < LINES]) >= 3, counts  # it grew step by step
    assert streams and all(re.search(rf"/api/tasks/{tid}/executions/\w+/log$", u) for u in streams)

    link = page.locator("#execution-history tbody tr").first.get_by_role(
        "link", name=re.compile("log")
    )
    href = link.get_attribute("href")
    assert href is not None and href.endswith("?download=1")
    assert link.get_attribute("download") is not None
    whole = admin_api.get(href)
    assert whole.status_code == 200 and whole.text.splitlines() == EXPECTED
    assert page.locator("#latest-log-download").get_attribute("href") == href
    ui.shot("31-task-log-done")


def test_without_event_source_the_log_is_polled(make_ui: Callable[..., UI], web_env: str) -> None:
    """A browser without EventSource still sees the log grow, from the polled task detail."""
    ui = make_ui()
    ui.context.add_init_script("delete window.EventSource")
    ui.open()
    ui.login()
    create_task_in_ui(ui, "polled-log", NUMBERED, web_env)
    ui.page.wait_for_function(
        f"() => document.querySelector('#task-log').textContent.includes('line {LINES - 1}')",
        timeout=30_000,
    )
    assert log_lines(ui) == EXPECTED
