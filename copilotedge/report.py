"""Usage-report numbers, aggregated in the database.

The admin's usage report and ``copilotedge_usage_report`` both compute through these
functions, so they always agree. Every figure is one aggregate query over the period's
rows (PostgreSQL computes percentiles itself with ``percentile_cont``); Python only
formats the handful of grouped rows that come back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import (
    Aggregate,
    Count,
    DecimalField,
    F,
    FloatField,
    Q,
    QuerySet,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from .models import ApiKey, UsageRecord

BY_DAY = "day"
BY_MODEL = "model"
BY_USER = "user"
BY_KEY = "key"
GROUPINGS = (BY_DAY, BY_MODEL, BY_USER, BY_KEY)

ANONYMOUS = "(anonymous)"
NO_KEY = "(no key)"  # a session, or a key since deleted

_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
_FAILED = Q(outcome__in=[UsageRecord.Outcome.ERROR, UsageRecord.Outcome.INCOMPLETE])
_ZERO = Decimal(0)
# Sums of the ledger's 8-decimal amounts, kept at 8 decimals on every database.
_MONEY = DecimalField(max_digits=20, decimal_places=8)
_CENT_MILLIONTHS = Decimal("1e-8")


@dataclass(frozen=True)
class Period:
    """A reporting window ``[since, until)``.

    ``Nd``/``Nw`` mean whole calendar days (in the current time zone) ending today, so a
    daily chart has exactly N bars; ``Nh``/``Nm`` are rolling windows ending now.
    """

    since: datetime
    until: datetime
    label: str

    @classmethod
    def parse(cls, text: str, now: datetime | None = None) -> Period:
        """``7d``, ``24h``, ``2w``, ``90m``, or an ISO date (from that day's midnight)."""
        now = now or timezone.now()
        match = _DURATION.match(text)
        if match is None:
            try:
                day = date.fromisoformat(text.strip())
            except ValueError:
                raise ValueError(
                    f"{text!r} is not a period: use e.g. 7d, 24h, 2w, 90m or 2025-01-31."
                ) from None
            return cls(_midnight(day), now, text.strip())
        count, unit = int(match[1]), match[2]
        if count < 1:
            raise ValueError("A period must be at least 1 unit long.")
        if unit in "dw":
            days = count * (7 if unit == "w" else 1)
            today = timezone.localdate(now)
            return cls(_midnight(today - timedelta(days=days - 1)), now, f"{count}{unit}")
        return cls(now - count * _UNITS[unit], now, f"{count}{unit}")

    def days(self) -> list[date]:
        first, last = timezone.localdate(self.since), timezone.localdate(self.until)
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]

    def records(self) -> QuerySet[UsageRecord]:
        return UsageRecord.objects.filter(created_at__gte=self.since, created_at__lt=self.until)


def _midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


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
    queryset: QuerySet[UsageRecord], column: str, fractions: tuple[float, ...]
) -> list[float | None]:
    """Continuous percentiles of ``column`` (nulls ignored), as ``percentile_cont`` defines them.

    PostgreSQL computes them in one query; other databases get the two neighbouring
    values of each rank by ``ORDER BY … OFFSET`` and interpolate between them.
    """
    if connection.vendor == "postgresql":
        aggregates = {f"p{i}": PercentileCont(column, f) for i, f in enumerate(fractions)}
        values = queryset.aggregate(**aggregates)
        return [values[f"p{i}"] for i in range(len(fractions))]
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


def _sums() -> dict[str, Any]:
    return {
        "requests": Count("id"),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
        "total_tokens": Coalesce(Sum("total_tokens"), 0),
        "cost": Coalesce(Sum("cost"), Value(_ZERO), output_field=_MONEY),
        "cost_saved": Coalesce(Sum("cost_saved"), Value(_ZERO), output_field=_MONEY),
        "errors": Count("id", filter=_FAILED),
        "cache_hits": Count("id", filter=Q(cache_hit=True)),
    }


def plain(value: Any) -> Any:
    """``value`` for CSV, JSON and tables: decimals in positional notation (never ``0E-8``)."""
    return format(value, "f") if isinstance(value, Decimal) else value


def _money(value: Decimal) -> Decimal:
    # SQLite returns sums of decimals with float noise; the ledger keeps 8 decimals.
    return Decimal(value).quantize(_CENT_MILLIONTHS)


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass
class Totals:
    """The headline numbers of a set of usage rows."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: Decimal = _ZERO
    cost_saved: Decimal = _ZERO
    errors: int = 0
    cache_hits: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None

    def __post_init__(self) -> None:
        self.cost, self.cost_saved = _money(self.cost), _money(self.cost_saved)

    @property
    def error_rate(self) -> float:
        return _rate(self.errors, self.requests)

    @property
    def cache_hit_rate(self) -> float:
        return _rate(self.cache_hits, self.requests)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in self.__dataclass_fields__},
            "error_rate": self.error_rate,
            "cache_hit_rate": self.cache_hit_rate,
        }


def totals(queryset: QuerySet[UsageRecord], *, with_percentiles: bool = True) -> Totals:
    result = Totals(**queryset.aggregate(**_sums()))
    if with_percentiles:
        latency = percentiles(queryset, "latency_ms", (0.5, 0.95))
        ttft = percentiles(queryset, "ttft_ms", (0.5, 0.95))
        result.latency_p50_ms, result.latency_p95_ms = latency
        result.ttft_p50_ms, result.ttft_p95_ms = ttft
    return result


@dataclass
class Row:
    """One line of a breakdown (a day, a model, a user or a key)."""

    label: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: Decimal = _ZERO
    cost_saved: Decimal = _ZERO
    errors: int = 0
    cache_hits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    COLUMNS = (
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "cost_saved",
        "errors",
        "cache_hits",
    )

    def __post_init__(self) -> None:
        self.cost, self.cost_saved = _money(self.cost), _money(self.cost_saved)

    def as_dict(self, by: str) -> dict[str, Any]:
        return {by: self.label, **{name: getattr(self, name) for name in self.COLUMNS}}


def breakdown(
    queryset: QuerySet[UsageRecord],
    by: str,
    *,
    limit: int | None = None,
    days: list[date] | None = None,
) -> list[Row]:
    """The rows grouped ``by`` day (every day of ``days``, zeros included, oldest first),
    model, user or key (costliest first, at most ``limit``)."""
    group: Any
    if by == BY_DAY:
        group = TruncDate("created_at")
    elif by == BY_MODEL:
        group = F("model_served")
    elif by == BY_USER:
        group = F("user_id")
    elif by == BY_KEY:
        group = F("api_key_id")
    else:
        raise ValueError(f"Unknown grouping {by!r}; use one of {', '.join(GROUPINGS)}.")
    # Typed loosely: the stubs cannot follow annotations passed as **kwargs.
    grouped: Any = queryset.values(group=group).annotate(**_sums())
    if by == BY_DAY:
        found: dict[Any, dict[str, Any]] = {}
        for row in grouped.order_by():
            found[row.pop("group")] = row
        return [Row(label=day.isoformat(), **found.get(day, {})) for day in days or sorted(found)]
    ordered = grouped.order_by("-cost", "-requests", "group")
    found_rows: list[dict[str, Any]] = list(ordered[:limit] if limit else ordered)
    labels = _labels(by, [row["group"] for row in found_rows])
    return [
        Row(
            label=labels[row["group"]],
            extra={"id": row["group"]},
            **{k: v for k, v in row.items() if k != "group"},
        )
        for row in found_rows
    ]


def _labels(by: str, ids: list[Any]) -> dict[Any, str]:
    """Names for grouped ids, fetched in one query for just the rows shown."""
    if by == BY_MODEL:
        return {model: model or "(unknown)" for model in ids}
    present = [i for i in ids if i is not None]
    labels: dict[Any, str] = {None: ANONYMOUS if by == BY_USER else NO_KEY}
    if by == BY_USER:
        for user in get_user_model().objects.filter(pk__in=present):
            labels[user.pk] = user.get_username()
    else:
        for key in ApiKey.objects.filter(pk__in=present).select_related("user"):
            labels[key.pk] = str(key)
    # A deleted user or key leaves its rows behind with the id still set.
    return {i: labels.get(i, f"#{i} (deleted)") for i in ids}


@dataclass
class Report:
    """Everything the usage report page shows for one period."""

    period: Period
    totals: Totals
    daily: list[Row]
    models: list[Row]
    users: list[Row]
    keys: list[Row]


def build(period: Period, *, top: int = 10) -> Report:
    rows = period.records()
    return Report(
        period=period,
        totals=totals(rows),
        daily=breakdown(rows, BY_DAY, days=period.days()),
        models=breakdown(rows, BY_MODEL),
        users=breakdown(rows, BY_USER, limit=top),
        keys=breakdown(rows, BY_KEY, limit=top),
    )
