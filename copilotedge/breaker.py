"""Circuit breakers, one per upstream, shared by every process through a Redis cache.

A circuit is *closed* while its upstream answers. ``CIRCUIT_FAILURE_THRESHOLD`` failures
(connect errors, timeouts, 5xx) within ``CIRCUIT_FAILURE_WINDOW`` seconds *open* it: calls
then fail at once with :class:`~copilotedge.exceptions.ServiceUnavailable` (or go to a
fallback) for ``CIRCUIT_COOLDOWN`` seconds. After that it is *half-open*: one probe call
is let through (one across all processes); its success closes the circuit, its failure
opens it for another cool-down.

Failures are counted in a window rather than as a run of consecutive ones so that a
success costs nothing: a healthy request reads one key and writes none.

The state lives in the Django cache ``CACHE_ALIAS`` when that is Redis, so every server
process sees one circuit per upstream; with any other cache (or while Redis is down) each
process keeps its own state in memory, which is correct, only not shared.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import caches

from .conf import settings
from .exceptions import ServiceUnavailable
from .fallbacks import configured_upstreams

logger = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

_KEY = "copilotedge:circuit:{name}:{part}"
_STORE_ERROR_LOG_INTERVAL = 30.0


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

    def incr(self, key: str, ttl: float) -> int:
        """Add one to ``key``; a missing key starts at 1 and expires ``ttl`` s from now."""
        with self._lock:
            value = self._live(key)
            if value is None:
                self._data[key] = (1, time.monotonic() + ttl)
                return 1
            expires = self._data[key][1]
            self._data[key] = (int(value) + 1, expires)
            return int(value) + 1

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
        global _last_store_error
        now = time.monotonic()
        if now - _last_store_error > _STORE_ERROR_LOG_INTERVAL:
            _last_store_error = now
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

    def incr(self, key: str, ttl: float) -> int:
        try:
            cache = self._cache()
            if cache.add(key, 1, timeout=ttl):
                return 1
            try:
                return int(cache.incr(key))
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=ttl)
                return 1
        except Exception:
            self._failed()
            return self.fallback.incr(key, ttl)

    def delete(self, *keys: str) -> None:
        try:
            self._cache().delete_many(list(keys))
        except Exception:
            self._failed()
        self.fallback.delete(*keys)


_local = LocalStore()
_last_store_error = -_STORE_ERROR_LOG_INTERVAL


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


async def _run(function: Any, *args: Any) -> Any:
    # A shared store does network I/O: off the event loop, and not on the ORM's thread.
    if isinstance(function.__self__, CacheStore):
        return await sync_to_async(function, thread_sensitive=False)(*args)
    return function(*args)


class CircuitBreaker:
    """The circuit of one upstream, by name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._store = store()

    def _key(self, part: str) -> str:
        return _KEY.format(name=self.name, part=part)

    def state(self) -> str:
        """The state now (blocking; :meth:`astate` from async code)."""
        open_until = self._store.get(self._key("open_until"))
        if open_until is None:
            return CLOSED
        return OPEN if time.time() < float(open_until) else HALF_OPEN

    async def astate(self) -> str:
        result: str = await sync_to_async(self.state, thread_sensitive=False)()
        return result

    async def abefore_call(self) -> bool:
        """Let a call through or raise :class:`ServiceUnavailable` with ``retry_after``.

        Returns whether the call is the half-open probe, whose outcome decides the state.
        """
        open_until = await _run(self._store.get, self._key("open_until"))
        if open_until is None:
            return False
        remaining = float(open_until) - time.time()
        if remaining > 0:
            raise ServiceUnavailable(
                "The model provider is failing; try again shortly.", retry_after=remaining
            )
        probe_ttl = settings.CONNECT_TIMEOUT + settings.FIRST_TOKEN_TIMEOUT + 1
        if await _run(self._store.add, self._key("probe"), 1, probe_ttl):
            logger.info("Circuit %s is half-open: probing the upstream.", self.name)
            return True
        raise ServiceUnavailable(
            "The model provider is recovering; try again shortly.", retry_after=1.0
        )

    def _window_key(self, part: str) -> str:
        # Both counters of a window share its number, so they start and expire together.
        window = settings.CIRCUIT_FAILURE_WINDOW
        return self._key(f"{part}:{int(time.time() // window)}")

    async def asuccess(self, probe: bool) -> None:
        if not probe:
            window = settings.CIRCUIT_FAILURE_WINDOW
            await _run(self._store.incr, self._window_key("calls"), window)
            return
        if probe:
            await _run(
                self._store.delete,
                self._key("open_until"),
                self._window_key("failures"),
                self._window_key("calls"),
                self._key("probe"),
            )
            logger.warning("Circuit %s closed: the upstream answered again.", self.name)

    async def afailure(self, probe: bool) -> None:
        if not probe:
            # Open on a failure rate, not a count: at hundreds of requests a second a
            # handful of failed answers is noise, not an outage.
            window = settings.CIRCUIT_FAILURE_WINDOW
            failures = await _run(self._store.incr, self._window_key("failures"), window)
            calls = await _run(self._store.incr, self._window_key("calls"), window)
            if (
                failures < settings.CIRCUIT_FAILURE_THRESHOLD
                or failures < settings.CIRCUIT_FAILURE_RATIO * calls
            ):
                return
        await self._open()
        if probe:
            await _run(self._store.delete, self._key("probe"))

    async def arelease(self, probe: bool) -> None:
        """The call ended without telling (cancelled): free the probe slot for another."""
        if probe:
            await _run(self._store.delete, self._key("probe"))

    def reset(self) -> None:
        """Close the circuit and forget its failures (operators, tests)."""
        self._store.delete(
            self._key("open_until"),
            self._window_key("failures"),
            self._window_key("calls"),
            self._key("probe"),
        )

    async def _open(self) -> None:
        cooldown = settings.CIRCUIT_COOLDOWN
        # The key outlives the cool-down so that "past it" reads as half-open, not closed.
        ttl = max(600.0, 10 * cooldown)
        await _run(self._store.set, self._key("open_until"), time.time() + cooldown, ttl)
        await _run(self._store.delete, self._window_key("failures"), self._window_key("calls"))
        logger.warning("Circuit %s opened for %.0f s.", self.name, cooldown)


def known_upstreams() -> list[str]:
    """The names of the default upstream and of every fallback upstream in the settings."""
    return [upstream.name for upstream in configured_upstreams()]


def circuit_states() -> dict[str, str]:
    """Upstream name -> ``closed``/``open``/``half_open``, for ``/health`` and metrics."""
    return {name: CircuitBreaker(name).state() for name in known_upstreams()}


async def acircuit_states() -> dict[str, str]:
    result: dict[str, str] = await sync_to_async(circuit_states, thread_sensitive=False)()
    return result
