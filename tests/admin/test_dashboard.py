"""The admin: the read-only ledger with totals and CSV, and the Usage report page."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import AsyncClient, Client

from copilotedge.admin import charts, dashboard
from copilotedge.models import UsageRecord
from tests.helpers import SampleLedger

REPORT = "/admin/copilotedge/usagereport/"
CHANGELIST = "/admin/copilotedge/usagerecord/"
ROWS_CSV = "/admin/copilotedge/usagerecord/export.csv"

pytestmark = pytest.mark.django_db


def staff(name: str, *, view_usage: bool = True) -> Any:
    member = get_user_model().objects.create_user(name, password="pw", is_staff=True)
    if view_usage:
        member.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    return member


@pytest.fixture
def admin_client(sample_ledger: SampleLedger) -> Client:
    client = Client()
    client.force_login(staff("auditor"))
    return client


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"><dt>[^<]*</dt><dd>([^<]*)</dd>', html)
    assert match, f"no #{element_id} on the page"
    return match[1]


def bars(html: str, section: str) -> list[tuple[str, str]]:
    chunk = html.split(f'id="{section}"', 1)[1].split("</section>", 1)[0]
    return re.findall(r'class="ce-bar"[^>]*data-label="([^"]*)" data-value="([^"]*)"', chunk)


def test_the_report_shows_totals_charts_and_tables(admin_client: Client) -> None:
    response = admin_client.get(REPORT, {"period": "7d"})
    assert response.status_code == 200
    html = response.content.decode()
    assert text_of(html, "total-requests") == "5"
    assert text_of(html, "total-tokens") == f"{510:,}"
    assert text_of(html, "total-cost") == "$0.0030"
    assert text_of(html, "total-saved") == "$0.0020"
    assert text_of(html, "total-error-rate") == "20.0%"
    assert text_of(html, "total-cache-hit-rate") == "20.0%"
    assert text_of(html, "total-latency-p50") == "200 ms"
    assert text_of(html, "total-latency-p95") == "380 ms"
    assert text_of(html, "total-ttft-p50") == "55 ms"
    assert text_of(html, "total-ttft-p95") == "68 ms"  # 68.5 shown rounded (half to even)
    # Inline SVG, seven daily bars, and no script or external resource anywhere.
    assert html.count('<svg class="ce-chart"') == 6
    daily = bars(html, "chart-requests")
    assert len(daily) == 7 and sum(int(value) for _, value in daily) == 5
    assert bars(html, "chart-models") == [
        (SampleLedger.MODEL_A, "0.00300000"),
        (SampleLedger.MODEL_B, "0.00000000"),
    ]
    assert [label for label, _ in bars(html, "chart-users")] == ["alice", "bob"]
    assert "cdn" not in html.lower()
    assert "alice" in html.split('id="table-user"', 1)[1]


def test_the_period_choice_narrows_the_numbers(admin_client: Client) -> None:
    html = admin_client.get(REPORT, {"period": "24h"}).content.decode()
    assert text_of(html, "total-requests") == "3"  # only the rows of the last minute
    assert '<option value="24h" selected>' in html
    # An unknown period falls back to the default instead of failing.
    assert admin_client.get(REPORT, {"period": "forever"}).status_code == 200


def test_only_staff_with_the_view_permission_see_the_report(sample_ledger: SampleLedger) -> None:
    client = Client()
    assert client.get(REPORT).status_code == 302  # to the admin login
    client.force_login(sample_ledger.alice)  # signed in, not staff
    assert client.get(REPORT)["Location"].startswith("/admin/login/")
    client.force_login(staff("intern", view_usage=False))
    assert client.get(REPORT).status_code == 403
    assert client.get(f"{REPORT}export/model.csv").status_code == 403
    assert "Usage report" not in client.get("/admin/").content.decode()


def test_the_admin_index_and_the_changelist_link_to_the_report(admin_client: Client) -> None:
    assert f'href="{REPORT}"' in admin_client.get("/admin/").content.decode()
    assert f'href="{REPORT}"' in admin_client.get(CHANGELIST).content.decode()


def test_report_tables_export_as_csv(admin_client: Client, sample_ledger: SampleLedger) -> None:
    response = admin_client.get(f"{REPORT}export/model.csv", {"period": "7d"})
    assert response["Content-Type"] == "text/csv"
    lines = list(csv.reader(io.StringIO(response.content.decode())))
    assert lines[0] == [
        "model",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "cost_saved",
        "errors",
        "cache_hits",
    ]
    assert lines[1][:2] == [SampleLedger.MODEL_A, "4"]
    assert lines[1][5] == "0.00300000"
    totals = list(
        csv.DictReader(io.StringIO(admin_client.get(f"{REPORT}export/totals.csv").content.decode()))
    )
    assert totals[0]["requests"] == "5" and totals[0]["error_rate"] == "0.2"
    assert admin_client.get(f"{REPORT}export/secrets.csv").status_code == 404


def test_the_ledger_admin_is_read_only(admin_client: Client) -> None:
    row = UsageRecord.objects.first()
    assert row is not None
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    page = admin_client.get(f"{CHANGELIST}{row.pk}/change/")
    assert page.status_code == 200 and 'type="submit"' not in page.content.decode().split(
        'id="content-main"'
    )[1].split("</form>")[0].replace('name="_popup"', "")
    assert admin_client.post(f"{CHANGELIST}{row.pk}/delete/").status_code == 403


def test_the_changelist_totals_follow_the_filters(admin_client: Client) -> None:
    html = admin_client.get(CHANGELIST, {"outcome__exact": "ok"}).content.decode()
    totals = html.split('id="usage-totals"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<td>([^<]*)</td>", totals)
    assert cells == ["4", "340", "170", "$0.0030", "$0.0020", "0.0%"]
    html = admin_client.get(CHANGELIST, {"q": "bob"}).content.decode()
    totals = html.split('id="usage-totals"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<td>([^<]*)</td>", totals)[0] == "1"


@pytest.mark.django_db(transaction=True)
async def test_the_rows_export_streams_the_filtered_rows(sample_ledger: SampleLedger) -> None:
    client = AsyncClient()
    await client.aforce_login(await get_user_model().objects.aget(username="alice"))
    assert (await client.get(ROWS_CSV)).status_code == 302  # not staff
    from asgiref.sync import sync_to_async

    await client.aforce_login(await sync_to_async(staff)("exporter"))
    response = await client.get(ROWS_CSV, {"protocol__exact": "openai"})
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    lines = list(csv.DictReader(io.StringIO(body)))
    assert len(lines) == 3
    assert {line["protocol"] for line in lines} == {"openai"}
    assert list(lines[0]) == list(dashboard.ROW_COLUMNS)
    assert {line["latency_ms"] for line in lines} == {"100", "200", "300"}


def test_chart_labels_are_escaped() -> None:
    svg = charts.bar_chart([('<script>alert("x")</script>', 3)], title="T & <b>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "T &amp; &lt;b&gt;" in svg


def test_charts_of_nothing_draw_no_bars() -> None:
    assert 'class="ce-bar"' not in charts.bar_chart([], title="empty")
    column = charts.column_chart([("2025-01-01", 0), ("2025-01-02", 0)], title="zeros")
    assert column.count('class="ce-bar"') == 2 and 'height="0.0"' in column


def test_the_peak_label_keeps_the_values_kind() -> None:
    assert ">3<" in charts.column_chart([("a", 1), ("b", 3)], title="requests")
    assert ">$0.0030<" in charts.column_chart(
        [("a", Decimal("0.003"))], title="cost", fmt=dashboard.usd
    )


@pytest.mark.django_db(transaction=True)
async def test_the_reports_rows_link_exports_the_periods_rows(sample_ledger: SampleLedger) -> None:
    from asgiref.sync import sync_to_async

    client = AsyncClient()
    await client.aforce_login(await sync_to_async(staff)("exporter"))
    page = (await client.get(REPORT, {"period": "24h"})).content.decode()
    link = re.search(r'id="export-rows" href="([^"]+)"', page)
    assert link is not None
    response = await client.get(link[1].replace("&amp;", "&"))
    assert response.status_code == 200
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert len(list(csv.DictReader(io.StringIO(body)))) == 3  # the last minute's rows
