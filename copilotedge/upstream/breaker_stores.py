"""Where circuit state lives: a shared Django cache (Redis), or this process's memory.

:class:`CacheStore` keeps the keys of :mod:`copilotedge.upstream.breakers` in the cache
``CACHE_ALIAS`` when that is Redis, so every server process sees one circuit per
upstream; while the cache is down it falls back to a :class:`LocalStore`, which is what
any other cache gets from the start: correct, only not shared.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches

from copilotedge.conf import settings
from copilotedge.log_limits import Throttle

# Named as before the split, so logging configured for the breaker still applies.
logger = logging.getLogger("copilotedge.upstream.breakers")


class LocalStore:
    """A tiny in-process key/value store with expiry and atomic ``add``/``incr``."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item[0]

    def get(self, key: str) -> Any:
        with self._lock:
            return self._live(key)

    def set(self, key: str, value: Any, ttl: float) -> None:
        with self._lock:
            self._data[key] = (value, time.monotonic() + ttl)

    def add(self, key: str, value: Any, ttl: float) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._data[key] = (value, time.monotonic() + ttl)
            return True

    def incr(self, key: str, ttl: float, by: int = 1) -> int:
        """Add ``by`` to ``key``; a missing key starts at 0 and expires ``ttl`` s from now."""
        with self._lock:
            value = self._live(key)
            if value is None:
                self._data[key] = (by, time.monotonic() + ttl)
                return by
            expires = self._data[key][1]
            self._data[key] = (int(value) + by, expires)
            return int(value) + by

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)


class CacheStore:
    """The same operations on a shared Django cache; falls back to memory when it fails."""

    def __init__(self, alias: str, fallback: LocalStore) -> None:
        self.alias = alias
        self.fallback = fallback

    def _cache(self) -> Any:
        return caches[self.alias]

    def _failed(self) -> None:
        if _store_errors.ready():
            logger.warning(
                "The cache %r is unavailable: circuit state is kept per process until it is back.",
                self.alias,
                exc_info=True,
            )

    def get(self, key: str) -> Any:
        try:
            return self._cache().get(key)
        except Exception:
            self._failed()
            return self.fallback.get(key)

    def set(self, key: str, value: Any, ttl: float) -> None:
        try:
            self._cache().set(key, value, timeout=ttl)
        except Exception:
            self._failed()
            self.fallback.set(key, value, ttl)

    def add(self, key: str, value: Any, ttl: float) -> bool:
        try:
            return bool(self._cache().add(key, value, timeout=ttl))
        except Exception:
            self._failed()
            return self.fallback.add(key, value, ttl)

    def incr(self, key: str, ttl: float, by: int = 1) -> int:
        try:
            cache = self._cache()
            # The key is there but once a window: try the one round trip first.
            try:
                return int(cache.incr(key, by))
            except ValueError:  # a new window
                if cache.add(key, by, timeout=ttl):
                    return by
                return int(cache.incr(key, by))  # another process began it meanwhile
        except Exception:
            self._failed()
            return self.fallback.incr(key, ttl, by)

    def delete(self, *keys: str) -> None:
        try:
            self._cache().delete_many(list(keys))
        except Exception:
            self._failed()
        self.fallback.delete(*keys)


_local = LocalStore()
_store_errors = Throttle()


def is_shared_cache(alias: str) -> bool:
    """Whether the cache ``alias`` is Redis (so state in it is seen by every process)."""
    try:
        backend = type(caches[alias])
    except Exception:
        return False
    return "redis" in f"{backend.__module__}.{backend.__name__}".lower()


def store() -> LocalStore | CacheStore:
    alias = settings.CACHE_ALIAS
    return CacheStore(alias, _local) if is_shared_cache(alias) else _local


async def arun(function: Any, *args: Any) -> Any:
    # A shared store does network I/O: off the event loop, and not on the ORM's thread.
    if isinstance(function.__self__, CacheStore):
        return await sync_to_async(function, thread_sensitive=False)(*args)
    return function(*args)
