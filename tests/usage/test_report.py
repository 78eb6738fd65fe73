"""Usage-report numbers: totals, percentiles (database or fallback), breakdowns, periods."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from copilotedge.models import UsageRecord
from copilotedge.usage import aggregates, report
from tests.helpers import SampleLedger

pytestmark = pytest.mark.django_db


def test_totals_of_the_sample_ledger(sample_ledger: SampleLedger) -> None:
    totals = report.totals(report.Period.parse("7d").records())
    assert totals.requests == 5
    assert totals.prompt_tokens == SampleLedger.prompt_tokens
    assert totals.completion_tokens == SampleLedger.completion_tokens
    assert totals.total_tokens == SampleLedger.prompt_tokens + SampleLedger.completion_tokens
    assert totals.cost == SampleLedger.cost
    assert totals.cost_saved == SampleLedger.cost_saved
    assert totals.error_rate == pytest.approx(0.2)
    assert totals.cache_hit_rate == pytest.approx(0.2)
    assert totals.latency_p50_ms == pytest.approx(SampleLedger.latency_p50_ms)
    assert totals.latency_p95_ms == pytest.approx(SampleLedger.latency_p95_ms)
    assert totals.ttft_p50_ms == pytest.approx(SampleLedger.ttft_p50_ms)
    assert totals.ttft_p95_ms == pytest.approx(SampleLedger.ttft_p95_ms)


def test_totals_of_nothing_are_zero_not_none() -> None:
    totals = report.totals(UsageRecord.objects.none())
    assert (totals.requests, totals.cost, totals.error_rate) == (0, Decimal(0), 0.0)
    assert totals.latency_p50_ms is None and totals.ttft_p95_ms is None


@pytest.mark.parametrize("count", [1, 2, 7, 100])
def test_percentiles_match_percentile_cont_on_any_database(user: Any, count: int) -> None:
    values = [(i * 37) % 101 for i in range(count)]  # unordered, with repeats for 100
    UsageRecord.objects.bulk_create(
        UsageRecord(
            protocol="openai", model_requested="m", model_served="m", outcome="ok", latency_ms=value
        )
        for value in values
    )
    ordered = sorted(values)

    def expected(fraction: float) -> float:  # the definition of percentile_cont
        rank = fraction * (len(ordered) - 1)
        low = int(rank)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

    fractions = (0.0, 0.5, 0.95, 1.0)
    got = aggregates.percentiles(UsageRecord.objects.all(), {"latency_ms": fractions})
    assert got["latency_ms"] == pytest.approx([expected(f) for f in fractions])


def ledger_reads(queries: CaptureQueriesContext) -> int:
    return sum('FROM "copilotedge_usagerecord"' in q["sql"] for q in queries.captured_queries)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-scan plan is PostgreSQL's")
def test_postgresql_reads_the_ledger_twice_for_the_whole_report(
    sample_ledger: SampleLedger,
) -> None:
    with CaptureQueriesContext(connection) as queries:
        report.build(report.Period.parse("7d"))
    assert ledger_reads(queries) == 2  # every breakdown at once, then the percentiles


@pytest.mark.parametrize("top", [0, 1])
def test_the_report_agrees_with_one_query_per_breakdown(
    sample_ledger: SampleLedger, top: int
) -> None:
    """On PostgreSQL this checks the grouping-sets query against the portable ORM queries."""
    period = report.Period.parse("7d")
    built = report.build(period, top=top)
    records = period.records()
    limit = top or None
    assert built.daily == report.breakdown(records, report.BY_DAY, days=period.days())
    assert built.models == report.breakdown(records, report.BY_MODEL)
    assert built.users == report.breakdown(records, report.BY_USER, limit=limit)
    assert built.keys == report.breakdown(records, report.BY_KEY, limit=limit)
    assert built.totals == report.totals(records)
    assert len(built.users) == (1 if top else 2)


def test_daily_breakdown_has_every_day_oldest_first(sample_ledger: SampleLedger) -> None:
    period = report.Period.parse("7d")
    rows = report.breakdown(period.records(), report.BY_DAY, days=period.days())
    assert [row.label for row in rows] == [day.isoformat() for day in period.days()]
    by_day = {row.label: row for row in rows}
    today = timezone.localdate(sample_ledger.today).isoformat()
    assert by_day[today].requests >= 3  # "a minute ago" is today unless run at midnight
    assert sum(row.requests for row in rows) == 5
    assert sum(row.cost for row in rows) == SampleLedger.cost
    assert sum(1 for row in rows if row.requests == 0) >= 4


def test_model_user_and_key_breakdowns_costliest_first(sample_ledger: SampleLedger) -> None:
    records = report.Period.parse("7d").records()
    models = report.breakdown(records, report.BY_MODEL)
    assert [(r.label, r.requests, r.cost) for r in models] == [
        (SampleLedger.MODEL_A, 4, Decimal("0.003")),
        (SampleLedger.MODEL_B, 1, Decimal(0)),
    ]
    users = report.breakdown(records, report.BY_USER)
    assert [(r.label, r.requests, r.errors) for r in users] == [("alice", 4, 0), ("bob", 1, 1)]
    keys = report.breakdown(records, report.BY_KEY, limit=1)
    assert [(r.label, r.requests, r.cache_hits) for r in keys] == [(str(sample_ledger.key), 4, 1)]
    everything = report.breakdown(records, report.BY_KEY)
    assert everything[1].label == report.NO_KEY


def test_period_parsing() -> None:
    now = timezone.make_aware(datetime(2025, 3, 10, 15, 30))
    week = report.Period.parse("7d", now)
    assert week.since == timezone.make_aware(datetime(2025, 3, 4))
    assert week.until == now and len(week.days()) == 7
    assert report.Period.parse("2w", now).since == timezone.make_aware(datetime(2025, 2, 25))
    assert report.Period.parse("24h", now).since == now - timedelta(hours=24)
    assert report.Period.parse("90m", now).since == now - timedelta(minutes=90)
    dated = report.Period.parse("2025-03-01", now)
    assert dated.since == timezone.make_aware(datetime(2025, 3, 1)) and len(dated.days()) == 10
    for bad in ("", "7", "d", "0d", "-1d", "7y", "2025-13-01"):
        with pytest.raises(ValueError):
            report.Period.parse(bad, now)


def test_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown grouping"):
        report.breakdown(UsageRecord.objects.all(), "protocol")


@pytest.mark.django_db(transaction=True)
def test_the_report_outside_a_transaction(sample_ledger: SampleLedger) -> None:
    """On PostgreSQL the percentiles then run on a second connection, alongside the sums."""
    built = report.build(report.Period.parse("7d"))
    assert (built.totals.requests, built.totals.cost) == (5, SampleLedger.cost)
    assert built.totals.latency_p95_ms == pytest.approx(SampleLedger.latency_p95_ms)
    assert built.totals.ttft_p50_ms == pytest.approx(SampleLedger.ttft_p50_ms)


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_text_that_would_start_a_formula_is_guarded(text: str) -> None:
    assert report.guarded(text) == "'" + text
    assert report.guarded("alice") == "alice"
