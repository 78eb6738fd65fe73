"""The usage report in a real browser: Debian's Chromium, driven by Playwright, against daphne."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from tests.helpers import SampleLedger
from tests.servers import DaphneServer

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
REPORT = "/admin/copilotedge/usagereport/"
# The admin needs its CSS and JavaScript with DEBUG off: servestatic (as in the demo)
# serves them straight from the apps' static directories, in this test's server only.
STATIC_OVERRIDES = {
    "MIDDLEWARE": ["servestatic.middleware.ServeStaticMiddleware", *settings.MIDDLEWARE],
    "SERVESTATIC_USE_FINDERS": True,
    "SERVESTATIC_AUTOREFRESH": False,
}

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(sample_ledger: SampleLedger) -> Iterator[DaphneServer]:
    auditor = get_user_model().objects.create_user("auditor", password="pw", is_staff=True)
    auditor.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    get_user_model().objects.create_user("intern", password="pw", is_staff=True)
    with DaphneServer(STATIC_OVERRIDES) as running:
        yield running


@pytest.fixture
def browser(server: DaphneServer, browser: Any) -> Any:
    # After the server (and its rows): Playwright's sync API runs an event loop on this
    # thread, and Django refuses ORM calls while one runs.
    return browser


def log_in(browser: Any, server: DaphneServer, username: str, target: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/admin/login/?next={target}")
    page.fill("#id_username", username)
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    page.wait_for_load_state("networkidle")
    return page


def test_staff_sees_the_report_with_charts_and_numbers(browser: Any, server: DaphneServer) -> None:
    page = log_in(browser, server, "auditor", f"{REPORT}?period=7d")
    assert page.url.endswith(f"{REPORT}?period=7d")
    assert page.title().startswith("Usage report")

    def total(name: str) -> str:
        return str(page.locator(f"#total-{name} dd").inner_text())

    assert total("requests") == "5"
    assert total("cost") == "$0.0030"
    assert total("saved") == "$0.0020"
    assert total("error-rate") == "20.0%"
    assert total("cache-hit-rate") == "20.0%"
    assert total("latency-p95") == "380 ms"
    assert total("ttft-p50") == "55 ms"

    charts = page.locator("svg.ce-chart")
    assert charts.count() == 6
    for index in range(charts.count()):
        box = charts.nth(index).bounding_box()
        assert box is not None and box["width"] > 300, "a chart is not laid out"
    daily = page.locator("#chart-requests rect.ce-bar")
    assert daily.count() == 7
    values = [int(daily.nth(i).get_attribute("data-value")) for i in range(daily.count())]
    assert sum(values) == 5
    tallest = daily.nth(values.index(max(values))).bounding_box()
    assert tallest is not None and tallest["height"] > 50  # a bar you can see
    models = page.locator("#chart-models rect.ce-bar")
    assert models.first.get_attribute("data-label") == SampleLedger.MODEL_A
    assert page.locator("#chart-users rect.ce-bar").first.get_attribute("data-label") == "alice"
    # The admin's own stylesheet loaded (served with DEBUG off).
    header = page.locator("#header").evaluate("e => getComputedStyle(e).backgroundColor")
    assert header not in ("rgba(0, 0, 0, 0)", "transparent")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "usage_report.png"), full_page=True)

    page.select_option("#period", "24h")
    page.click(".ce-report form input[type=submit]")
    page.wait_for_load_state("networkidle")
    assert total("requests") == "3"
    assert "period=24h" in page.url


def test_the_report_is_refused_to_everyone_else(browser: Any, server: DaphneServer) -> None:
    # A signed-in user who is not staff cannot even log in to the admin.
    page = log_in(browser, server, "alice", REPORT)
    assert "/admin/login/" in page.url
    assert page.locator(".errornote").count() == 1
    assert page.locator("svg.ce-chart").count() == 0
    # Staff without the view permission get a 403 and no numbers.
    page = log_in(browser, server, "intern", "/admin/")
    response = page.goto(f"{server.url}{REPORT}")
    assert response is not None and response.status == 403
    assert page.locator("#total-requests").count() == 0
    page.goto(f"{server.url}/admin/")
    assert page.locator(f'a[href="{REPORT}"]').count() == 0
