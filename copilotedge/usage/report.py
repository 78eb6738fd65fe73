"""Usage-report numbers, aggregated in the database (see :mod:`copilotedge.usage.aggregates`).

The admin's usage report, its CSV exports and ``copilotedge_usage_report`` all compute
through :func:`build`, so they always agree. Python only labels and adds up the few
dozen grouped rows that come back, never the ledger's rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import F, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from copilotedge.models import ApiKey, UsageRecord
from copilotedge.usage import aggregates

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
_ZERO = Decimal(0)
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


def plain(value: Any) -> Any:
    """``value`` for CSV, JSON and tables: decimals in positional notation (never ``0E-8``)."""
    return format(value, "f") if isinstance(value, Decimal) else value


#: What makes a spreadsheet read a cell as a formula (or a new cell) when it starts one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def guarded(text: str) -> str:
    """Text a user chose (a username, a key's name) safe to open in a spreadsheet: one that
    would start a formula, such as ``=HYPERLINK(…)``, is prefixed with ``'``."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


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


_PERCENTILES = {"latency_ms": (0.5, 0.95), "ttft_ms": (0.5, 0.95)}


def _add_percentiles(result: Totals, queryset: QuerySet[UsageRecord]) -> Totals:
    found = aggregates.percentiles(queryset, _PERCENTILES)
    result.latency_p50_ms, result.latency_p95_ms = found["latency_ms"]
    result.ttft_p50_ms, result.ttft_p95_ms = found["ttft_ms"]
    return result


def totals(queryset: QuerySet[UsageRecord], *, with_percentiles: bool = True) -> Totals:
    """The headline numbers of any set of rows (the changelist's filtered set, say)."""
    result = Totals(**queryset.aggregate(**aggregates.sums()))
    return _add_percentiles(result, queryset) if with_percentiles else result


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

    def csv_values(self, by: str) -> list[Any]:
        """The row as CSV cells; user and key labels :func:`guarded` (model ids are the
        site's own, and start with ``@``)."""
        label = guarded(self.label) if by in (BY_USER, BY_KEY) else self.label
        return [plain(label), *(plain(getattr(self, name)) for name in self.COLUMNS)]


def _group_expression(by: str) -> Any:
    if by not in GROUPINGS:
        raise ValueError(f"Unknown grouping {by!r}; use one of {', '.join(GROUPINGS)}.")
    return TruncDate("created_at") if by == BY_DAY else F(aggregates.GROUP_COLUMNS[by])


def _grouped(queryset: QuerySet[UsageRecord], by: str, limit: int | None) -> list[dict[str, Any]]:
    """One portable ORM query: the sums of each group, costliest first (days unordered)."""
    # Typed loosely: the stubs cannot follow annotations passed as **kwargs.
    grouped: Any = queryset.values(group=_group_expression(by)).annotate(**aggregates.sums())
    if by == BY_DAY:
        return list(grouped.order_by())
    ordered = grouped.order_by("-cost", "-requests", "group")
    return list(ordered[:limit] if limit else ordered)


def breakdown(
    queryset: QuerySet[UsageRecord],
    by: str,
    *,
    limit: int | None = None,
    days: list[date] | None = None,
) -> list[Row]:
    """Any set of rows grouped ``by`` day, model, user or key, on any database."""
    return _rows(by, _grouped(queryset, by, limit), days=days)


def _rows(by: str, found: list[dict[str, Any]], *, days: list[date] | None = None) -> list[Row]:
    """Grouped sums as rows: every day of ``days`` (zeros included, oldest first), or the
    groups in the order found, labelled."""
    if by == BY_DAY:
        per_day = {row["group"]: row for row in found}
        return [
            Row(label=day.isoformat(), **_sums_of(per_day.get(day, {})))
            for day in days or sorted(per_day)
        ]
    labels = _labels(by, [row["group"] for row in found])
    return [
        Row(label=labels[row["group"]], extra={"id": row["group"]}, **_sums_of(row))
        for row in found
    ]


def _sums_of(row: dict[str, Any]) -> dict[str, Any]:
    return {column: row[column] for column in aggregates.SUM_COLUMNS if column in row}


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
    """The whole report for ``period``; ``top`` users and keys (0: all of them).

    The admin page, its CSV exports and ``copilotedge_usage_report`` all come through here.
    """
    records = period.records()
    limit = top or None
    if aggregates.is_postgresql(records):
        found, found_percentiles = aggregates.grouped_sums_and_percentiles(
            records, limit, _PERCENTILES
        )
    else:
        found = {
            by: _grouped(records, by, limit if by in (BY_USER, BY_KEY) else None)
            for by in GROUPINGS
        }
        found_percentiles = aggregates.percentiles(records, _PERCENTILES)
    daily = _rows(BY_DAY, found[BY_DAY], days=period.days())
    # Every row of the period falls on one of its days: the totals are the days' sums.
    summed = {column: sum(getattr(row, column) for row in daily) for column in Row.COLUMNS}
    totals = Totals(**summed)
    totals.latency_p50_ms, totals.latency_p95_ms = found_percentiles["latency_ms"]
    totals.ttft_p50_ms, totals.ttft_p95_ms = found_percentiles["ttft_ms"]
    return Report(
        period=period,
        totals=totals,
        daily=daily,
        models=_rows(BY_MODEL, found[BY_MODEL]),
        users=_rows(BY_USER, found[BY_USER]),
        keys=_rows(BY_KEY, found[BY_KEY]),
    )
