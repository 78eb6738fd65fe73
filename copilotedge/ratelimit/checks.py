"""Checks of the rate limiter's settings and cache: copilotedge.E010-E012, W010-W011."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from django.core.cache import InvalidCacheBackendError, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.checks import CheckMessage, Error, Warning

from copilotedge.conf import settings


def check_rate_limits() -> Iterable[CheckMessage]:
    from copilotedge.ratelimit.gcra import parse_rate
    from copilotedge.ratelimit.stores import is_redis

    for name in ("RATE_LIMIT", "TOKEN_RATE_LIMIT"):
        try:
            parse_rate(getattr(settings, name))
        except ValueError as error:
            yield Error(
                f"COPILOTEDGE_{name} is not a rate: {error}.",
                hint='Write a count per unit: "60/m", "1000/h", "10/s" or "5000/d".',
                id="copilotedge.E010",
            )
    try:
        budget = settings.MONTHLY_BUDGET
    except (InvalidOperation, TypeError, ValueError):
        budget = Decimal(-1)
    if budget is not None and not budget >= 0:
        yield Error(
            "COPILOTEDGE_MONTHLY_BUDGET must be a number of USD (or None for no budget).",
            id="copilotedge.E012",
        )
    alias = settings.CACHE_ALIAS
    try:
        cache = caches[alias]
    except InvalidCacheBackendError:
        yield Error(
            f"COPILOTEDGE_CACHE_ALIAS names {alias!r}, which is not in CACHES.",
            id="copilotedge.E011",
        )
        return
    backend = type(cache).__name__
    if isinstance(cache, DummyCache):
        yield Warning(
            f"The cache {alias!r} is a DummyCache: it stores nothing, so rate limits "
            "are never reached.",
            hint="Set REDIS_URL (django-redis) or use another cache.",
            id="copilotedge.W011",
        )
    elif not is_redis(cache):
        yield Warning(
            f"The cache {alias!r} ({backend}) is not django-redis: rate limits are exact "
            "within one process only, so N server processes allow up to N times each limit.",
            hint="Set REDIS_URL to share the limits (django-redis) between processes.",
            id="copilotedge.W010",
        )
