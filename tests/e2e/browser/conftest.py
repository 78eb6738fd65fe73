"""Fixtures for the browser tests: Debian's Chromium, driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import CHROMIUM, NO_CHROMIUM, launch_chromium


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    """Skip every browser test up front (before servers start) when Chromium is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(NO_CHROMIUM)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium, launched for the test (see :func:`tests.browser.launch_chromium`).

    The test cannot touch the database while it is open: a module whose fixtures write
    rows overrides it to request them first.
    """
    with launch_chromium() as launched:
        yield launched
