"""Debian's Chromium for the tests that drive a browser (never a downloaded one)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
NO_CHROMIUM = f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)"

requires_chromium = pytest.mark.skipif(not CHROMIUM.is_file(), reason=NO_CHROMIUM)


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """Playwright's Chromium on :data:`CHROMIUM`; skips the test without it or Playwright.

    Playwright's sync API runs an event loop on this thread while the browser is open,
    and Django refuses ORM calls while one runs: touch the database before, after, or
    from another thread.
    """
    if not CHROMIUM.is_file():
        pytest.skip(NO_CHROMIUM)
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
