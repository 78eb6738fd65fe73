"""The usage report's database work: sums by group and percentiles, in as few scans as possible.

On PostgreSQL the report reads the period's rows twice, whatever their number: once for
every breakdown at once (``GROUPING SETS`` over day, model, user and key, hashed), once
for the latency and time-to-first-token percentiles (``percentile_cont``). Other
databases get one portable ORM query per breakdown and ``ORDER BY … OFFSET`` percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
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

from copilotedge.models import UsageRecord

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
# The column each breakdown groups by.
GROUP_COLUMNS = {"day": "day", "model": "model_served", "user": "user_id", "key": "api_key_id"}


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

    JIT compilation is off: these queries' costs always pass its threshold, and compiling
    took longer (0.2-0.3 s) than it saved. The percentile sorts get enough memory to stay
    in memory for about a million rows instead of spilling to disk.
    """
    with transaction.atomic(using=queryset.db), connections[queryset.db].cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SET LOCAL work_mem = '64MB'")
        yield cursor


# First-level sums, per grouping set, as SQL over the period's rows.
_ROW_SUMS = """
    COUNT(*) AS requests,
    COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
    COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
    COALESCE(SUM(cost), 0) AS cost,
    COALESCE(SUM(cost_saved), 0) AS cost_saved,
    COUNT(*) FILTER (WHERE outcome IN (%s, %s)) AS errors,
    COUNT(*) FILTER (WHERE cache_hit) AS cache_hits"""
# Second-level sums of first-level groups (a few hundred or thousand rows); PostgreSQL
# sums integers into numerics, so the counts are cast back.
_GROUP_SUMS = ", ".join(
    [
        f"SUM({c})::bigint AS {c}"
        for c in ("requests", "prompt_tokens", "completion_tokens", "errors", "cache_hits")
    ]
    + [f"SUM({c}) AS {c}" for c in ("cost", "cost_saved")]
)
# GROUPING(day, model_served, user_id, api_key_id) of the two first-level sets (a bit is
# set for each column *not* grouped).
_DAY_MODEL, _USER_KEY = 0b0011, 0b1100
_NULL_KEYS = {
    "day": "NULL::date",
    "model": "NULL::text",
    "user": "NULL::bigint",
    "key": "NULL::bigint",
}


def _second_level(name: str, source: str, *, limited: bool) -> str:
    """One breakdown summed from first-level groups, ranked costliest first (and cut at
    ``top`` when ``limited``), with the other breakdowns' key columns left NULL."""
    group = GROUP_COLUMNS[name]
    keys = ", ".join(
        GROUP_COLUMNS[key] if key == name else f"{null} AS {GROUP_COLUMNS[key]}"
        for key, null in _NULL_KEYS.items()
    )
    select = (
        f"SELECT '{name}' AS breakdown, {keys}, {_GROUP_SUMS}, ROW_NUMBER() OVER "
        f"(ORDER BY SUM(cost) DESC, SUM(requests) DESC, {group}) AS position "
        f"FROM {source} GROUP BY {group}"
    )
    if not limited:
        return select
    return f"SELECT * FROM ({select}) AS ranked_{name} WHERE %s::integer IS NULL OR position <= %s"


def grouped_sums(
    queryset: QuerySet[UsageRecord], top: int | None
) -> dict[str, list[dict[str, Any]]]:
    """PostgreSQL: each breakdown's rows, in one scan of ``queryset``.

    The scan hashes every row into two grouping sets, (day, model) and (user, key); the
    four breakdowns are then summed from those few groups, not from the rows again.
    Days and models come whole; users and keys costliest first, at most ``top`` of each.
    """
    base = (
        queryset.order_by()
        .annotate(day=TruncDate("created_at"))
        .values(
            "day",
            "model_served",
            "user_id",
            "api_key_id",
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "cost_saved",
            "outcome",
            "cache_hit",
        )
    )
    inner, params = base.query.sql_with_params()
    # OFFSET 0 keeps the subquery from being flattened, which hides the day expression's
    # origin from the planner: otherwise it inherits created_at's distinct count (one day
    # per row), expects a million groups and sorts the whole period instead of hashing
    # into a few dozen.
    sql = f"""
        WITH first_level AS MATERIALIZED (
            SELECT GROUPING(day, model_served, user_id, api_key_id) AS sets,
                   day, model_served, user_id, api_key_id, {_ROW_SUMS}
            FROM ({inner} OFFSET 0) AS period_rows
            GROUP BY GROUPING SETS ((day, model_served), (user_id, api_key_id))
        ),
        day_model AS (SELECT * FROM first_level WHERE sets = {_DAY_MODEL}),
        user_key AS (SELECT * FROM first_level WHERE sets = {_USER_KEY})
        {_second_level("day", "day_model", limited=False)}
        UNION ALL {_second_level("model", "day_model", limited=False)}
        UNION ALL {_second_level("user", "user_key", limited=True)}
        UNION ALL {_second_level("key", "user_key", limited=True)}
        ORDER BY breakdown, position
    """
    arguments = [*FAILED_OUTCOMES, *params, top, top, top, top]
    result: dict[str, list[dict[str, Any]]] = {name: [] for name in GROUP_COLUMNS}
    with _report_session(queryset) as cursor:
        cursor.execute(sql, arguments)
        names = [column.name for column in cursor.description]
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            name = row["breakdown"]
            sums = {c: row[c] for c in SUM_COLUMNS if c != "total_tokens"}
            sums["total_tokens"] = sums["prompt_tokens"] + sums["completion_tokens"]
            result[name].append({"group": row[GROUP_COLUMNS[name]], **sums})
    return result


def grouped_sums_and_percentiles(
    queryset: QuerySet[UsageRecord], top: int | None, wanted: Mapping[str, tuple[float, ...]]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[float | None]]]:
    """PostgreSQL: :func:`grouped_sums` and :func:`percentiles` of ``queryset``.

    Each is one scan of the period, and neither needs the other: outside a transaction
    they run at the same time, the percentiles on a second connection (closed after).
    Inside one (a test, a caller's ``atomic``) another connection might not see its
    rows, so they run one after the other.
    """
    if connections[queryset.db].in_atomic_block:
        return grouped_sums(queryset, top), percentiles(queryset, wanted)

    def on_own_connection() -> dict[str, list[float | None]]:
        try:
            return percentiles(queryset, wanted)
        finally:
            connections[queryset.db].close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        found_percentiles = pool.submit(on_own_connection)
        sums = grouped_sums(queryset, top)
        return sums, found_percentiles.result()


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
