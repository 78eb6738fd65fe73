"""Checks of the rate limiter's settings, cache and middleware: copilotedge.E010-E013, W010-W012."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from django.conf import settings as django_settings
from django.core.cache import InvalidCacheBackendError, caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.dummy import DummyCache
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from copilotedge.conf import settings

RATE_LIMIT_MIDDLEWARE = "copilotedge.middleware.RateLimitMiddleware"
AUTHENTICATION_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
_REDIS_CACHE_HINT = (
    'In CACHES, use django-redis for this alias: {"BACKEND": '
    '"django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:6379/0"} '
    '(pip install "copilotedge[redis]"), or point COPILOTEDGE_CACHE_ALIAS at such a cache.'
)


def check_rate_limits() -> Iterable[CheckMessage]:
    from copilotedge.ratelimit.gcra import parse_rate

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
            hint="Add that alias to CACHES in your settings, or set COPILOTEDGE_CACHE_ALIAS "
            "to one of its aliases.",
            id="copilotedge.E011",
        )
    else:
        yield from _check_cache(alias, cache)


def _check_cache(alias: str, cache: BaseCache) -> Iterable[CheckMessage]:
    from copilotedge.ratelimit.stores import is_redis

    backend = type(cache).__name__
    if isinstance(cache, DummyCache):
        yield Warning(
            f"The cache {alias!r} is a DummyCache: it stores nothing, so rate limits "
            "are never reached.",
            hint=_REDIS_CACHE_HINT,
            id="copilotedge.W011",
        )
    elif not is_redis(cache):
        yield Warning(
            f"The cache {alias!r} ({backend}) is not django-redis: rate limits are exact "
            "within one process only, so N server processes allow up to N times each limit.",
            hint=_REDIS_CACHE_HINT,
            id="copilotedge.W010",
        )


def _is(path: str, base: str) -> bool:
    """Whether the middleware at ``path`` is ``base`` or a subclass of it."""
    if path == base:
        return True
    try:
        factory, wanted = import_string(path), import_string(base)
    except ImportError:
        return False  # Django reports a middleware it cannot import when it loads them
    return isinstance(factory, type) and issubclass(factory, wanted)


def _position(middleware: list[str], base: str) -> int | None:
    return next((i for i, path in enumerate(middleware) if _is(path, base)), None)


def check_middleware() -> Iterable[CheckMessage]:
    """``RateLimitMiddleware`` is in ``MIDDLEWARE``, after ``AuthenticationMiddleware``.

    Without it, HTTP requests are not limited at all (the WebSocket still is); before
    authentication it cannot see a session's user, so it counts them by IP.
    """
    middleware = [str(path) for path in getattr(django_settings, "MIDDLEWARE", None) or []]
    limiter = _position(middleware, RATE_LIMIT_MIDDLEWARE)
    if limiter is None:
        yield Warning(
            f"{RATE_LIMIT_MIDDLEWARE} is not in MIDDLEWARE: HTTP requests to the app are "
            "not rate limited (the WebSocket still is), and answers carry no "
            "x-ratelimit-* headers.",
            hint=f'Add "{RATE_LIMIT_MIDDLEWARE}" to MIDDLEWARE in your settings, right '
            f'after "{AUTHENTICATION_MIDDLEWARE}".',
            id="copilotedge.W012",
        )
        return
    authentication = _position(middleware, AUTHENTICATION_MIDDLEWARE)
    if authentication is None or authentication > limiter:
        where = "is not in MIDDLEWARE" if authentication is None else "comes after it"
        yield Error(
            f"{RATE_LIMIT_MIDDLEWARE} must come after {AUTHENTICATION_MIDDLEWARE}, which "
            f"{where}: signed-in users are then counted by IP address and their session "
            "requests to the app are refused.",
            hint=f'In MIDDLEWARE in your settings, list "{AUTHENTICATION_MIDDLEWARE}" '
            f'before "{RATE_LIMIT_MIDDLEWARE}".',
            id="copilotedge.E013",
        )
