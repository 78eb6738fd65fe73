"""The admin's "Usage report" page and its CSV exports.

The numbers come from :mod:`copilotedge.usage.report` (the same functions the
``copilotedge_usage_report`` command uses); the charts are inline SVG from
:mod:`copilotedge.admin.charts`. The admin classes in :mod:`copilotedge.admin.usage`
route to these views.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.contrib.admin import ModelAdmin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from copilotedge.admin import charts
from copilotedge.models import UsageRecord
from copilotedge.usage import report

PERIODS = {
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "365d": "Last 365 days",
}
DEFAULT_PERIOD = "7d"
TOP = 10
TABLES = ("totals", report.BY_DAY, report.BY_MODEL, report.BY_USER, report.BY_KEY)
VIEW_PERMISSION = "copilotedge.view_usagerecord"

# Columns of the rows export, in order (foreign keys as ids: one flat, fast query).
ROW_COLUMNS = (
    "request_id",
    "created_at",
    "user_id",
    "api_key_id",
    "conversation_id",
    "protocol",
    "model_requested",
    "model_served",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "token_source",
    "cost",
    "cache_hit",
    "cost_saved",
    "outcome",
    "status_code",
    "error_code",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "steps",
    "tool_calls",
)
_ROWS_PER_CHUNK = 2000


def usd(value: Decimal | float | int) -> str:
    """Dollars with cents, or with four decimals for sub-cent amounts."""
    amount = Decimal(str(value))
    return f"${amount:,.2f}" if amount >= 1 or amount == 0 else f"${amount:,.4f}"


def percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def millis(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def selected_period(request: HttpRequest) -> tuple[str, report.Period]:
    choice = request.GET.get("period", DEFAULT_PERIOD)
    if choice not in PERIODS:
        choice = DEFAULT_PERIOD
    return choice, report.Period.parse(choice)


def _charts(data: report.Report) -> dict[str, Any]:
    def points(rows: Sequence[report.Row], column: str) -> list[tuple[str, Any]]:
        return [(row.label, getattr(row, column)) for row in rows]

    return {
        "requests": charts.column_chart(points(data.daily, "requests"), title="Requests per day"),
        "tokens": charts.column_chart(points(data.daily, "total_tokens"), title="Tokens per day"),
        "cost": charts.column_chart(
            points(data.daily, "cost"), title="Cost per day (USD)", fmt=usd
        ),
        "models": charts.bar_chart(
            points(data.models, "cost"), title="Cost by model (USD)", fmt=usd
        ),
        "users": charts.bar_chart(
            points(data.users, "cost"), title="Top users by cost (USD)", fmt=usd
        ),
        "keys": charts.bar_chart(
            points(data.keys, "cost"), title="Top API keys by cost (USD)", fmt=usd
        ),
    }


def _headline(totals: report.Totals) -> list[tuple[str, str, str]]:
    """(id, label, shown value) for each headline number."""
    return [
        ("requests", "Requests", f"{totals.requests:,}"),
        ("tokens", "Tokens", f"{totals.total_tokens:,}"),
        ("cost", "Cost", usd(totals.cost)),
        ("saved", "Saved by cache", usd(totals.cost_saved)),
        ("error-rate", "Error rate", percent(totals.error_rate)),
        ("cache-hit-rate", "Cache hit rate", percent(totals.cache_hit_rate)),
        ("latency-p50", "Latency p50", millis(totals.latency_p50_ms)),
        ("latency-p95", "Latency p95", millis(totals.latency_p95_ms)),
        ("ttft-p50", "Time to first token p50", millis(totals.ttft_p50_ms)),
        ("ttft-p95", "Time to first token p95", millis(totals.ttft_p95_ms)),
    ]


def report_view(model_admin: ModelAdmin[Any], request: HttpRequest) -> HttpResponse:
    """The report page for the period chosen in ``?period=``."""
    choice, period = selected_period(request)
    data = report.build(period, top=TOP)
    rows_url = reverse("admin:copilotedge_usagerecord_export")
    window = urlencode(
        {"created_at__gte": period.since.isoformat(), "created_at__lt": period.until.isoformat()}
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Usage report",
        "opts": model_admin.opts,
        "periods": PERIODS,
        "period": choice,
        "report": data,
        "headline": _headline(data.totals),
        "charts": _charts(data),
        "tables": [
            ("Models", report.BY_MODEL, data.models),
            (f"Top {TOP} users", report.BY_USER, data.users),
            (f"Top {TOP} API keys", report.BY_KEY, data.keys),
        ],
        "rows_export_url": f"{rows_url}?{window}",
        "changelist_url": reverse("admin:copilotedge_usagerecord_changelist"),
    }
    return TemplateResponse(request, "admin/copilotedge/usage_report.html", context)


def _csv(lines: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([report.plain(value) for value in line] for line in lines)
    return buffer.getvalue()


def table_lines(data: report.Report, table: str) -> list[list[Any]]:
    """A report table as CSV lines, header first."""
    if table == "totals":
        values = data.totals.as_dict()
        return [list(values), list(values.values())]
    rows = {
        report.BY_DAY: data.daily,
        report.BY_MODEL: data.models,
        report.BY_USER: data.users,
        report.BY_KEY: data.keys,
    }[table]
    return [[table, *report.Row.COLUMNS], *[row.csv_values(table) for row in rows]]


def export_table_view(
    model_admin: ModelAdmin[Any], request: HttpRequest, table: str
) -> HttpResponse:
    """One report table as CSV; the user and key tables in full, not just the top."""
    if table not in TABLES:
        raise Http404("No such table.")
    choice, period = selected_period(request)
    data = (
        report.build(period, top=0)
        if table != "totals"
        else report.Report(period, report.totals(period.records()), [], [], [], [])
    )
    response = HttpResponse(_csv(table_lines(data, table)), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="usage-{table}-{choice}.csv"'
    return response


async def _row_chunks(queryset: QuerySet[UsageRecord]) -> AsyncIterator[str]:
    yield _csv([ROW_COLUMNS])
    batch: list[list[Any]] = []
    # values(), not values_list(): Django 5.2's values_list().aiterator() runs its query
    # on the event loop's thread (its __iter__ is not a generator) and is refused.
    rows = queryset.values(*ROW_COLUMNS).aiterator(chunk_size=_ROWS_PER_CHUNK)
    async for row in rows:
        batch.append([row[column] for column in ROW_COLUMNS])
        if len(batch) == _ROWS_PER_CHUNK:
            yield _csv(batch)
            batch = []
    if batch:
        yield _csv(batch)


def export_rows_response(queryset: QuerySet[UsageRecord]) -> StreamingHttpResponse:
    """The rows as CSV, streamed from a server-side cursor (any number of rows)."""
    response = StreamingHttpResponse(
        _row_chunks(queryset.order_by("-created_at")), content_type="text/csv"
    )
    response["Content-Disposition"] = 'attachment; filename="usage-rows.csv"'
    return response
