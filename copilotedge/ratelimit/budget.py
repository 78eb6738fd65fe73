"""The monthly budget: what a caller may spend, and what it has spent this month.

The budget is the API key's own, else ``COPILOTEDGE_MONTHLY_BUDGET``. The month-to-date
spend comes from the usage ledger and is cached in the process for
:data:`BUDGET_CACHE_SECONDS`, so a turn's admission does not query the ledger each time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from copilotedge.conf import settings

if TYPE_CHECKING:
    from copilotedge.auth import Principal

#: How long a caller's month-to-date spend is cached in the process (seconds).
BUDGET_CACHE_SECONDS = 10.0

SpendLookup = Callable[["Principal", datetime], Awaitable[Decimal]]


def budget_for(principal: Principal) -> Decimal | None:
    """USD a month: the key's own budget, else the setting (never for a bare IP)."""
    key = principal.api_key
    if key is not None and key.monthly_budget is not None:
        return Decimal(key.monthly_budget)
    if key is None and principal.user is None:
        return None
    return settings.MONTHLY_BUDGET


def month_start(now: float) -> datetime:
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


# Month-to-date spend per identity in this process: (month start, expiry, amount).
_spend_cache: dict[str, tuple[datetime, float, Decimal]] = {}
_SPEND_CACHE_MAX = 10_000


async def month_spend(principal: Principal, start: datetime) -> Decimal:
    """The caller's cost since ``start`` from the usage ledger, cached for a few seconds."""
    from django.db.models import Sum

    from copilotedge.models import UsageRecord

    identity = principal.identity
    cached = _spend_cache.get(identity)
    if cached is not None and cached[0] == start and cached[1] > time.monotonic():
        return cached[2]
    records = UsageRecord.objects.filter(created_at__gte=start)
    if principal.api_key is not None:
        records = records.filter(api_key=principal.api_key)
    else:
        records = records.filter(user=principal.user)
    total = Decimal((await records.aaggregate(total=Sum("cost")))["total"] or 0)
    if len(_spend_cache) >= _SPEND_CACHE_MAX:
        _spend_cache.clear()
    _spend_cache[identity] = (start, time.monotonic() + BUDGET_CACHE_SECONDS, total)
    return total


def forget_spend() -> None:
    """Drop every cached spend (after editing the ledger by hand, and in tests)."""
    _spend_cache.clear()


def add_spend(principal: Principal, cost: Decimal) -> None:
    """Count a finished turn's ``cost`` in the cached spend, if the caller has one cached."""
    # Until the cache refreshes, count a finished turn so a burst cannot overspend.
    cached = _spend_cache.get(principal.identity)
    if cached is not None:
        _spend_cache[principal.identity] = (cached[0], cached[1], cached[2] + cost)
