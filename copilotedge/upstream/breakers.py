"""Circuit breakers, one per upstream, shared by every process through a Redis cache.

A circuit is *closed* while its upstream answers. ``CIRCUIT_FAILURE_THRESHOLD`` failures
(connect errors, timeouts, 5xx) within ``CIRCUIT_FAILURE_WINDOW`` seconds *open* it: calls
then fail at once with :class:`~copilotedge.exceptions.ServiceUnavailable` (or go to a
fallback) for ``CIRCUIT_COOLDOWN`` seconds. After that it is *half-open*: one probe call
is let through (one across all processes); its success closes the circuit, its failure
opens it for another cool-down.

Failures are counted against calls in a window, so a handful of failures among many
answers is noise, not an outage.

The state lives in the Django cache ``CACHE_ALIAS`` when that is Redis, so every server
process sees one circuit per upstream; with any other cache (or while Redis is down) each
process keeps its own state in memory, which is correct, only not shared
(:mod:`copilotedge.upstream.breaker_stores`). On Redis a healthy request waits for no round trip:
a process trusts the state it read for :data:`STATE_TTL` seconds (its own changes it
sees at once), and adds its successes to the shared count in the background.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async

from copilotedge import lifecycle
from copilotedge.conf import settings
from copilotedge.exceptions import ServiceUnavailable
from copilotedge.upstream.breaker_stores import LocalStore, arun, store
from copilotedge.upstream.fallbacks import configured_upstreams

logger = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

_KEY = "copilotedge:circuit:{name}:{part}"

#: Seconds a process trusts the ``open_until`` it read from a shared store: another
#: process's opening is seen this much later at most, and a healthy request reads nothing.
STATE_TTL = 1.0
#: key -> (``open_until`` as read or written here, when, by ``time.monotonic``)
_known: dict[str, tuple[Any, float]] = {}
#: window key -> successes not yet added to the shared count
_unsent: dict[str, int] = {}
#: window key -> the task adding them (a :func:`copilotedge.lifecycle.spawn` task)
_sending: dict[str, asyncio.Task[None]] = {}


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

    async def _aopen_until(self) -> Any:
        key = self._key("open_until")
        if isinstance(self._store, LocalStore):
            return self._store.get(key)
        known = _known.get(key)
        now = time.monotonic()
        if known is not None and now - known[1] < STATE_TTL:
            return known[0]
        value = await arun(self._store.get, key)
        _known[key] = (value, now)
        return value

    def _note_open_until(self, value: Any) -> None:
        _known[self._key("open_until")] = (value, time.monotonic())

    async def allows_call(self) -> bool:
        """Let a call through or raise :class:`ServiceUnavailable` with ``retry_after``.

        Returns whether the call is the half-open probe, whose outcome decides the state.
        """
        open_until = await self._aopen_until()
        if open_until is None:
            return False
        remaining = float(open_until) - time.time()
        if remaining > 0:
            raise ServiceUnavailable(
                "The model provider is failing; try again shortly.", retry_after=remaining
            )
        probe_ttl = settings.CONNECT_TIMEOUT + settings.FIRST_TOKEN_TIMEOUT + 1
        if await arun(self._store.add, self._key("probe"), 1, probe_ttl):
            logger.info("Circuit %s is half-open: probing the upstream.", self.name)
            return True
        raise ServiceUnavailable(
            "The model provider is recovering; try again shortly.", retry_after=1.0
        )

    def _window_key(self, part: str) -> str:
        # Both counters of a window share its number, so they start and expire together.
        window = settings.CIRCUIT_FAILURE_WINDOW
        return self._key(f"{part}:{int(time.time() // window)}")

    async def record_success(self, probe: bool) -> None:
        if not probe:
            self._count_success()
            return
        await arun(
            self._store.delete,
            self._key("open_until"),
            self._window_key("failures"),
            self._window_key("calls"),
            self._key("probe"),
        )
        self._note_open_until(None)
        logger.warning("Circuit %s closed: the upstream answered again.", self.name)

    def _count_success(self) -> None:
        key, window = self._window_key("calls"), settings.CIRCUIT_FAILURE_WINDOW
        if isinstance(self._store, LocalStore):
            self._store.incr(key, window)
            return
        # A shared store is a round trip: the answer does not wait for it, and the
        # successes that arrive meanwhile go in one INCRBY.
        _unsent[key] = _unsent.get(key, 0) + 1
        if _sending_here(key) is None:
            task = lifecycle.spawn(self._asend(key, window))
            _sending[key] = task
            task.add_done_callback(functools.partial(_sent, key))

    async def _asend(self, key: str, window: float) -> None:
        while count := _unsent.pop(key, 0):
            await arun(self._store.incr, key, window, count)

    async def _acalls(self, window: float) -> int:
        """The window's calls, this one included, once this process's successes are in."""
        key = self._window_key("calls")
        sending = _sending_here(key)
        if sending is not None:
            await asyncio.shield(sending)
        count: int = await arun(self._store.incr, key, window, 1 + _unsent.pop(key, 0))
        return count

    async def record_failure(self, probe: bool) -> None:
        if not probe:
            # Open on a failure rate, not a count: at hundreds of requests a second a
            # handful of failed answers is noise, not an outage.
            window = settings.CIRCUIT_FAILURE_WINDOW
            failures = await arun(self._store.incr, self._window_key("failures"), window)
            calls = await self._acalls(window)
            if (
                failures < settings.CIRCUIT_FAILURE_THRESHOLD
                or failures < settings.CIRCUIT_FAILURE_RATIO * calls
            ):
                return
        await self._open()
        if probe:
            await arun(self._store.delete, self._key("probe"))

    async def arelease(self, probe: bool) -> None:
        """The call ended without telling (cancelled): free the probe slot for another."""
        if probe:
            await arun(self._store.delete, self._key("probe"))

    def reset(self) -> None:
        """Close the circuit and forget its failures (operators, tests)."""
        self._store.delete(
            self._key("open_until"),
            self._window_key("failures"),
            self._window_key("calls"),
            self._key("probe"),
        )
        _known.pop(self._key("open_until"), None)
        _unsent.pop(self._window_key("calls"), None)

    async def _open(self) -> None:
        cooldown = settings.CIRCUIT_COOLDOWN
        # The key outlives the cool-down so that "past it" reads as half-open, not closed.
        ttl = max(600.0, 10 * cooldown)
        open_until = time.time() + cooldown
        await arun(self._store.set, self._key("open_until"), open_until, ttl)
        self._note_open_until(open_until)
        await arun(self._store.delete, self._window_key("failures"), self._window_key("calls"))
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


def _sent(key: str, task: asyncio.Task[None]) -> None:
    if _sending.get(key) is task:
        del _sending[key]


def _sending_here(key: str) -> asyncio.Task[None] | None:
    """The task adding ``key``'s successes on this event loop, if one is under way."""
    task = _sending.get(key)
    if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
        return None
    return task
