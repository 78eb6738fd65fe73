"""Getting an answer despite a failing upstream: retries, breakers, fallbacks, timeouts.

A turn asks :func:`open_stream` or :func:`complete` with its request. They look in the
response cache first (:mod:`copilotedge.upstream.response_cache`), then try the request's
model on the default upstream and, in order, its fallbacks (``COPILOTEDGE_FALLBACKS``);
each candidate is guarded by its upstream's circuit breaker
(:mod:`copilotedge.upstream.breakers`) and retried with exponential backoff and full
jitter. Everything happens before the first byte reaches the client: a stream is handed
back only once its first delta has arrived, so a hang before the first token is retried
too. After that, a stalled stream ends with an error (between-token and overall
timeouts), never a hang. One attempt at one candidate, with those time limits, is
:mod:`copilotedge.upstream.attempts`. What was served (the model that answered, the
attempts made, the cache's part) is told in a :class:`Served`, which holds after a
failure too.

Retried: connection errors, timeouts before the first delta, 5xx, 429 capacity (3040).
Not retried: other 4xx, the daily quota (3036), validation errors. A ``Retry-After``
is honoured (never retried sooner); one longer than ``RETRY_MAX_DELAY`` is not waited
for: the next fallback is tried, or the client gets the error with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from copilotedge import exceptions
from copilotedge.chat.deltas import Delta
from copilotedge.chat.types import Answer, ChatRequest
from copilotedge.conf import settings
from copilotedge.upstream import attempts
from copilotedge.upstream import response_cache as cache
from copilotedge.upstream.breakers import CircuitBreaker, acircuit_states, circuit_states
from copilotedge.upstream.fallbacks import Candidate, candidates_for

T = TypeVar("T")

# The breakers' states for /health and metrics: {upstream name: closed | open | half_open}.
__all__ = ["Served", "acircuit_states", "circuit_states", "complete", "open_stream"]


@dataclass(slots=True)
class Served:
    """What upstream did for one request, filled in as it happens.

    The caller makes one per request and reads it however the call ended (a failure or a
    cancellation still made attempts): the model that answered, the attempts at upstream,
    and the response cache's part (HIT, MISS or BYPASS).
    """

    model: str
    attempts: int = 0
    cache_status: str = cache.BYPASS


class DeltaStream(Protocol):
    """What a turn reads an answer from: an upstream stream or a cache replay."""

    def batches(self) -> AsyncIterator[list[Delta]]: ...

    async def aclose(self) -> None: ...

    async def abort(self, error: BaseException) -> None:
        """End the stream unread: the turn failed before its first byte went out."""


def counts_against_upstream(error: exceptions.CopilotEdgeError) -> bool:
    """Whether ``error`` says the upstream itself is unwell (what breakers count)."""
    return isinstance(error, exceptions.UpstreamError) and not isinstance(
        error,
        exceptions.UpstreamRateLimited
        | exceptions.UpstreamRejected
        | exceptions.ModelNotFound
        | exceptions.UpstreamConfigurationError
        | exceptions.ServiceUnavailable,
    )


def falls_over(error: exceptions.CopilotEdgeError) -> bool:
    """Whether another candidate may succeed where this one failed.

    A request the upstream rejected as invalid would be rejected anywhere; anything else
    (unavailable, out of quota, unknown model, bad credentials there) may not be.
    """
    return isinstance(error, exceptions.UpstreamError) and not isinstance(
        error, exceptions.UpstreamRejected
    )


def backoff(attempt: int, retry_after: float | None) -> float | None:
    """Seconds to wait before retry number ``attempt`` (1-based), or ``None``: don't."""
    cap = settings.RETRY_MAX_DELAY
    jitter = random.uniform(0, min(cap, settings.RETRY_BASE_DELAY * 2 ** (attempt - 1)))
    if retry_after is None:
        return jitter
    if retry_after > cap:
        return None
    return max(retry_after, jitter)


async def _call(
    model: str,
    served: Served,
    started: float,
    attempt: Callable[[Candidate, float], Awaitable[T]],
) -> tuple[T, Candidate]:
    """Run ``attempt`` over the candidates with breakers, retries and the deadline."""
    deadline = started + settings.RETRY_DEADLINE
    last_error: exceptions.CopilotEdgeError | None = None
    for candidate in candidates_for(model):
        breaker = CircuitBreaker(candidate.upstream.name)
        for number in range(1, settings.RETRY_ATTEMPTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                probe = await breaker.allows_call()
            except exceptions.ServiceUnavailable as error:
                last_error = error
                break
            served.attempts += 1
            try:
                result = await attempt(candidate, remaining)
            except exceptions.CopilotEdgeError as error:
                last_error = error
                if counts_against_upstream(error):
                    await breaker.record_failure(probe)
                else:
                    await breaker.record_success(probe)  # it answered: it is up
                if not getattr(error, "retryable", False) or number == settings.RETRY_ATTEMPTS:
                    break
                delay = backoff(number, error.retry_after)
                if delay is None or time.monotonic() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
            except BaseException:
                await breaker.arelease(probe)
                raise
            else:
                await breaker.record_success(probe)
                served.model = candidate.model
                return result, candidate
        if last_error is not None and not falls_over(last_error):
            break
    if last_error is None:
        last_error = exceptions.UpstreamTimeout("No answer within the retry deadline.")
    raise last_error


async def _consult_cache(served: Served, plan: cache.Plan) -> tuple[cache.Entry | None, cache.Plan]:
    """A cached (or coalesced) answer, or none; the plan loses its key if the cache is down."""
    if plan.key is None:
        served.cache_status = cache.BYPASS
        return None, plan
    served.cache_status = cache.MISS
    if not plan.read:
        return None, plan
    try:
        entry = await cache.lookup_entry(plan.key)
    except cache.CacheUnavailable:
        served.cache_status = cache.BYPASS
        return None, cache.Plan()
    return entry, plan


async def _follow_or_lead(plan: cache.Plan) -> tuple[cache.Entry | None, Any]:
    """Single flight: wait for an identical in-flight request, or lead one.

    Returns ``(entry, None)`` when a leader answered, ``(None, flight)`` when this turn
    leads, ``(None, None)`` when it goes alone. A leader's upstream error is shared.
    """
    if plan.key is None or not plan.read:
        return None, None
    wait_limit = settings.RETRY_DEADLINE + settings.TOTAL_TIMEOUT
    while True:
        flight, leads = cache.join(plan.key)
        if leads:
            return None, flight
        try:
            async with asyncio.timeout(wait_limit):
                entry = await flight.wait()
        except TimeoutError:
            return None, None
        if entry is not None:
            return entry, None
        if flight.error is not None:
            raise copy.copy(flight.error)
        # The leader was cancelled: try to lead (or follow a new leader).


def _land(plan: cache.Plan, flight: Any, entry: cache.Entry | None, error: Any = None) -> None:
    if flight is not None and plan.key is not None:
        cache.land(plan.key, flight, entry, error)


async def _from_cache(
    request: ChatRequest, served: Served
) -> tuple[cache.Entry | None, cache.Plan, Any]:
    """A cached (or in-flight, shared) answer, else the plan and flight an upstream call fills."""
    entry, plan = await _consult_cache(served, cache.plan_for(request))
    flight = None
    if entry is None:
        entry, flight = await _follow_or_lead(plan)
    if entry is not None:
        served.cache_status = cache.HIT
        served.model = cache.served_model(entry, request.model)
    return entry, plan, flight


async def open_stream(
    request: ChatRequest, answer: Answer, served: Served, *, started: float
) -> DeltaStream:
    """``request``'s answer as a stream, from the cache or an upstream that sent a first delta.

    ``answer`` is where the caller folds the stream's deltas: once the stream ended
    normally it is what the cache stores. ``started`` is when the turn started (the retry
    deadline and the overall limit count from there).
    """
    entry, plan, flight = await _from_cache(request, served)
    if entry is not None:
        return cache.ReplayStream(entry)
    try:
        stream, candidate = await _call(
            request.model,
            served,
            started,
            lambda c, r: attempts.open_attempt(request, c, r, started=started),
        )
    except BaseException as error:
        _land(plan, flight, None, error)
        raise
    breaker = CircuitBreaker(candidate.upstream.name)

    async def on_end(error: BaseException | None) -> None:
        if error is None:
            entry = cache.entry_from_answer(served.model, answer)
            if plan.write and plan.key is not None:
                await cache.astore(plan.key, entry)
            _land(plan, flight, entry)
            return
        _land(plan, flight, None, error)
        if isinstance(error, exceptions.CopilotEdgeError) and counts_against_upstream(error):
            await breaker.record_failure(False)

    stream.on_end = on_end
    return stream


async def complete(request: ChatRequest, served: Served, *, started: float) -> Delta:
    """``request``'s whole answer, from the cache or upstream (``started`` as for
    :func:`open_stream`)."""
    entry, plan, flight = await _from_cache(request, served)
    if entry is not None:
        return cache.delta_from_entry(entry)
    try:
        delta, _ = await _call(
            request.model,
            served,
            started,
            lambda c, r: attempts.complete_attempt(request, c, r, started=started),
        )
    except BaseException as error:
        _land(plan, flight, None, error)
        raise
    for piece in delta.tool_calls:
        # Fix the ids now so that the client and every later cache hit see the same ones.
        piece.id = piece.id or f"call_{random.getrandbits(96):024x}"
    entry = cache.entry_from_delta(served.model, delta)
    if plan.write and plan.key is not None:
        await cache.astore(plan.key, entry)
    _land(plan, flight, entry)
    return delta
