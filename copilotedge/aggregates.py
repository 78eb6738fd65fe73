"""The usage report's database work: sums by group and percentiles, in as few scans as possible.

On PostgreSQL the report reads the period's rows twice, whatever their number: once for
every breakdown at once (``GROUPING SETS`` over day, model, user and key, hashed), once
for the latency and time-to-first-token percentiles (``percentile_cont``). Other
databases get one portable ORM query per breakdown and ``ORDER BY … OFFSET`` percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from django.db import connections, transaction
from django.db.models import (
    Aggregate,
    Count,
    DecimalField,
    FloatField,
    Q,
    QuerySet,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce, TruncDate

from .models import UsageRecord

FAILED_OUTCOMES = (UsageRecord.Outcome.ERROR, UsageRecord.Outcome.INCOMPLETE)
SUM_COLUMNS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "cost_saved",
    "errors",
    "cache_hits",
)
# Sums of the ledger's 8-decimal amounts, kept at 8 decimals.
_MONEY = DecimalField(max_digits=20, decimal_places=8)
# The grouping column of each breakdown in the grouping-sets query, and the GROUPING()
# bitmask PostgreSQL gives its rows (a bit is set for each column *not* grouped).
GROUP_COLUMNS = {"day": "day", "model": "model_served", "user": "user_id", "key": "api_key_id"}
_GROUPING_BITS = {"day": 0b0111, "model": 0b1011, "user": 0b1101, "key": 0b1110}


def sums() -> dict[str, Any]:
    """The report's sums as ORM aggregates."""
    return {
        "requests": Count("id"),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
        "total_tokens": Coalesce(Sum("total_tokens"), 0),
        "cost": Coalesce(Sum("cost"), Value(Decimal(0)), output_field=_MONEY),
        "cost_saved": Coalesce(Sum("cost_saved"), Value(Decimal(0)), output_field=_MONEY),
        "errors": Count("id", filter=Q(outcome__in=FAILED_OUTCOMES)),
        "cache_hits": Count("id", filter=Q(cache_hit=True)),
    }


def is_postgresql(queryset: QuerySet[Any]) -> bool:
    return connections[queryset.db].vendor == "postgresql"


@contextmanager
def _report_session(queryset: QuerySet[Any]) -> Iterator[Any]:
    """A cursor in a transaction tuned for one big aggregation (settings end with it).

    The planner guesses one day per row when grouping by a day computed from
    ``created_at`` (it inherits the column's distinct count), so it would sort the whole
    period instead of hashing into a few dozen groups: sorting is disabled for this
    transaction (hash aggregation spills to disk if ever needed). The percentile sorts
    get enough memory to stay in memory for a million rows.
    """
    with transaction.atomic(using=queryset.db), connections[queryset.db].cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL work_mem = '64MB'")
        yield cursor


def grouped_sums(
    queryset: QuerySet[UsageRecord], top: int | None
) -> dict[str, list[dict[str, Any]]]:
    """PostgreSQL: each breakdown's rows, in one scan of ``queryset``.

    Days and models come whole; users and keys costliest first, at most ``top`` of each.
    """
    base = (
        queryset.order_by()
        .annotate(day=TruncDate("created_at"))
        .values(
            "day",
            *[c for c in GROUP_COLUMNS.values() if c != "day"],
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost",
            "cost_saved",
            "outcome",
            "cache_hit",
        )
    )
    inner, params = base.query.sql_with_params()
    grouping = "GROUPING(day, model_served, user_id, api_key_id)"
    sql = f"""
        SELECT * FROM (
            SELECT {grouping} AS grouping_bits, day, model_served, user_id, api_key_id,
                COUNT(*) AS requests,
                COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
                COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
                COALESCE(SUM(total_tokens), 0) AS total_tokens,
                COALESCE(SUM(cost), 0) AS cost,
                COALESCE(SUM(cost_saved), 0) AS cost_saved,
                COUNT(*) FILTER (WHERE outcome IN (%s, %s)) AS errors,
                COUNT(*) FILTER (WHERE cache_hit) AS cache_hits,
                ROW_NUMBER() OVER (
                    PARTITION BY {grouping}
                    ORDER BY COALESCE(SUM(cost), 0) DESC, COUNT(*) DESC,
                             model_served, user_id, api_key_id
                ) AS position
            FROM ({inner}) AS rows
            GROUP BY GROUPING SETS ((day), (model_served), (user_id), (api_key_id))
        ) AS grouped
        WHERE grouping_bits IN (%s, %s) OR %s::integer IS NULL OR position <= %s
        ORDER BY grouping_bits, position
    """
    arguments = [
        *FAILED_OUTCOMES,
        *params,
        _GROUPING_BITS["day"],
        _GROUPING_BITS["model"],
        top,
        top,
    ]
    by_bits = {bits: name for name, bits in _GROUPING_BITS.items()}
    result: dict[str, list[dict[str, Any]]] = {name: [] for name in GROUP_COLUMNS}
    with _report_session(queryset) as cursor:
        cursor.execute(sql, arguments)
        names = [column.name for column in cursor.description]
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            name = by_bits[row["grouping_bits"]]
            result[name].append(
                {"group": row[GROUP_COLUMNS[name]], **{c: row[c] for c in SUM_COLUMNS}}
            )
    return result


class PercentileCont(Aggregate):
    """PostgreSQL's ``percentile_cont(p) WITHIN GROUP (ORDER BY expr)`` (nulls ignored)."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float, **extra: Any) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError("A percentile is a fraction from 0 to 1.")
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def percentiles(
    queryset: QuerySet[UsageRecord], wanted: Mapping[str, tuple[float, ...]]
) -> dict[str, list[float | None]]:
    """Continuous percentiles (nulls ignored) of each column, as ``percentile_cont`` defines
    them: ``{"latency_ms": (0.5, 0.95)}`` → ``{"latency_ms": [p50, p95]}``.

    PostgreSQL computes all of them in one query. Elsewhere each rank's two neighbouring
    values come from ``ORDER BY … OFFSET`` and are interpolated.
    """
    if is_postgresql(queryset):
        aggregates = {
            f"{column}__{i}": PercentileCont(column, fraction)
            for column, fractions in wanted.items()
            for i, fraction in enumerate(fractions)
        }
        with _report_session(queryset):
            values = queryset.order_by().aggregate(**aggregates)
        return {
            column: [values[f"{column}__{i}"] for i in range(len(fractions))]
            for column, fractions in wanted.items()
        }
    return {column: _percentiles_by_offset(queryset, column, f) for column, f in wanted.items()}


def _percentiles_by_offset(
    queryset: QuerySet[UsageRecord], column: str, fractions: tuple[float, ...]
) -> list[float | None]:
    present = queryset.filter(**{f"{column}__isnull": False})
    count = present.count()
    if not count:
        return [None for _ in fractions]
    ordered = present.order_by(column).values_list(column, flat=True)
    results: list[float | None] = []
    for fraction in fractions:
        rank = fraction * (count - 1)
        low = math.floor(rank)
        pair = list(ordered[low : low + 2])
        value = float(pair[0])
        if len(pair) == 2:
            value += (float(pair[1]) - value) * (rank - low)
        results.append(value)
    return results
