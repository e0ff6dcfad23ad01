"""Browser tests of the web dashboard (headless Chromium via Playwright)."""
