"""The rate limiter: requests and tokens per window, and a monthly budget, per caller.

The core is pure: a :class:`Limiter` is given a store and a clock and knows nothing of
HTTP. The algorithm is GCRA (:mod:`copilotedge.ratelimit_gcra`: a token bucket kept as
one number): a limit of ``N/period`` lets a full bucket of ``N`` through at once and then
one more every ``period / N``; unlike a fixed window it never lets ``2 N`` through around
a window boundary. Each check is one atomic store operation over several buckets,
all-or-nothing (:mod:`copilotedge.ratelimit_stores`: a Lua script on Redis, one round
trip; a per-process lock on any other Django cache).

Limits apply per API key, else per user, else per client IP (``Principal.identity``); an
empty ``Principal()`` (the Python API's default: the site's own code) is not limited.
An :class:`~copilotedge.models.ApiKey` overrides requests and tokens per minute and the
monthly budget (``COPILOTEDGE_MONTHLY_BUDGET`` otherwise). Tokens are reserved up front
(the prompt estimate plus ``max_tokens``, or :data:`DEFAULT_COMPLETION_TOKENS`) and
settled with the real usage when the turn ends, so concurrent requests cannot overspend.

The async API the faces use. HTTP faces get the request check from
:class:`~copilotedge.middleware.RateLimitMiddleware`; the WebSocket consumer calls it
once per chat message::

    decision = await ratelimit.acheck_request(principal)   # counts one request; never raises
    if not decision.allowed:
        raise decision.error             # RateLimited (429) or ServiceUnavailable (503)
    decision.headers()                   # the six x-ratelimit-* headers

    reservation = await ratelimit.areserve(principal, chat_request)  # budget, then tokens
    ratelimit.settle(reservation, used_tokens, cost)   # scheduled off the hot path

:class:`~copilotedge.chat.Turn` already calls ``areserve`` in ``open()``/``complete()``
and ``settle`` in ``finish()``, so no face calls those itself. A view the middleware
must not count (health checks, metrics) is decorated with :func:`exempt`.

Reset headers are durations as OpenAI writes them (``"250ms"``, ``"1s"``, ``"6m0s"``): the
time until the bucket is full again. When the store is unreachable,
``COPILOTEDGE_RATE_LIMIT_FAIL_OPEN`` decides: allow and log an ERROR (the headers then
report the full limit), or refuse with a 503 ``rate_limiter_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from . import exceptions, metrics
from .conf import settings
from .ratelimit_gcra import (
    Bucket,
    Op,
    Rate,
    Store,
    StoreUnavailable,
    format_duration,
    parse_rate,
)

if TYPE_CHECKING:
    from .auth import Principal
    from .chat import ChatRequest

logger = logging.getLogger(__name__)

#: Completion tokens reserved for a request without ``max_tokens`` (Workers AI's default).
DEFAULT_COMPLETION_TOKENS = 256
#: How long a caller's month-to-date spend is cached in the process (seconds).
BUDGET_CACHE_SECONDS = 10.0
#: Every limiter key starts with this (after the cache's own prefix).
KEY_NAMESPACE = "copilotedge:rl:"

LIMIT_REQUESTS = "x-ratelimit-limit-requests"
REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
RESET_REQUESTS = "x-ratelimit-reset-requests"
LIMIT_TOKENS = "x-ratelimit-limit-tokens"
REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
RESET_TOKENS = "x-ratelimit-reset-tokens"


@dataclass
class Decision:
    """A check's outcome: the buckets for the headers and, when refused, the error."""

    requests_rate: Rate
    tokens_rate: Rate
    requests: Bucket | None = None
    tokens: Bucket | None = None
    error: exceptions.CopilotEdgeError | None = None
    reserved: int = 0

    @property
    def allowed(self) -> bool:
        return self.error is None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        pairs = ((self.requests_rate, self.requests), (self.tokens_rate, self.tokens))
        for (limit, remaining, reset), (rate, bucket) in zip(_HEADERS, pairs, strict=True):
            # No bucket: the caller is not limited, or the store is down and we fail open.
            bucket = bucket or Bucket(limit=rate.limit, remaining=rate.limit, reset=0.0)
            headers[limit] = str(bucket.limit)
            headers[remaining] = str(bucket.remaining)
            headers[reset] = format_duration(bucket.reset)
        return headers


_HEADERS = (
    (LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS),
    (LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS),
)


def rates_for(principal: Principal) -> tuple[Rate, Rate]:
    """Requests and tokens rates: the key's per-minute overrides, else the settings."""
    key = principal.api_key
    requests = parse_rate(settings.RATE_LIMIT)
    tokens = parse_rate(settings.TOKEN_RATE_LIMIT)
    if key is not None and key.requests_per_minute:
        requests = Rate(key.requests_per_minute, 60.0)
    if key is not None and key.tokens_per_minute:
        tokens = Rate(key.tokens_per_minute, 60.0)
    return requests, tokens


def budget_for(principal: Principal) -> Decimal | None:
    """USD a month: the key's own budget, else the setting (never for a bare IP)."""
    key = principal.api_key
    if key is not None and key.monthly_budget is not None:
        return Decimal(key.monthly_budget)
    if key is None and principal.user is None:
        return None
    return settings.MONTHLY_BUDGET


def is_limited(principal: Principal) -> bool:
    # A Principal with nothing in it is the site's own code (the Python API).
    return bool(principal.api_key or principal.user or principal.ip)


def month_start(now: float) -> datetime:
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


SpendLookup = Callable[["Principal", datetime], Awaitable[Decimal]]


class Limiter:
    """Request, token and budget checks for a :class:`Principal` on an injected store.

    ``clock`` gives epoch seconds (the buckets and the budget's month follow it);
    ``spend`` answers a caller's month-to-date cost (default: the usage ledger).
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        spend: SpendLookup | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.spend = spend or amonth_spend

    @staticmethod
    def key(principal: Principal, kind: str) -> str:
        # The braces are a Redis Cluster hash tag: one caller's buckets share a slot.
        return f"{KEY_NAMESPACE}{{{principal.identity}}}:{kind}"

    def _request_ops(self, principal: Principal) -> tuple[Decision, list[Op]]:
        requests, tokens = rates_for(principal)
        ops = [
            Op(self.key(principal, "req"), requests, 1),
            Op(self.key(principal, "tok"), tokens, 0),
        ]
        return Decision(requests, tokens), ops

    def _requests_decided(self, decision: Decision, buckets: list[Bucket]) -> Decision:
        decision.requests, decision.tokens = buckets
        if not decision.requests.allowed:
            retry = decision.requests.retry_after
            decision.error = exceptions.RateLimited(
                f"Rate limit reached for requests: {decision.requests_rate}. "
                f"Try again in {format_duration(retry)}.",
                retry_after=retry,
            )
        return decision

    def _unavailable(self, decision: Decision) -> Decision:
        if settings.RATE_LIMIT_FAIL_OPEN:
            logger.error("The rate limit store is unavailable; allowing the request (fail open).")
        else:
            decision.error = exceptions.ServiceUnavailable(
                "The rate limiter is unavailable.", code="rate_limiter_unavailable", retry_after=1
            )
        return decision

    def check_request(self, principal: Principal) -> Decision:
        """The sync twin of :meth:`acheck_request`."""
        decision, ops = self._request_ops(principal)
        if not is_limited(principal):
            return decision
        try:
            return self._requests_decided(decision, self.store.apply(ops, self.clock()))
        except StoreUnavailable:
            return self._unavailable(decision)

    async def acheck_request(self, principal: Principal) -> Decision:
        """Count one request (and read the tokens bucket for the headers); never raises."""
        decision, ops = self._request_ops(principal)
        if not is_limited(principal):
            return decision
        try:
            return self._requests_decided(decision, await self.store.aapply(ops, self.clock()))
        except StoreUnavailable:
            return self._unavailable(decision)

    async def areserve(self, principal: Principal, tokens: int) -> Decision:
        """Check the budget, then take ``tokens`` from the window; ``error`` says why not."""
        decision = Decision(*rates_for(principal))
        if not is_limited(principal):
            return decision
        decision.error = await self._abudget_error(principal)
        if decision.error is not None:
            return decision
        rate = decision.tokens_rate
        if tokens > rate.limit:
            decision.error = exceptions.RateLimited(
                f"The request needs about {tokens} tokens, more than the limit of {rate}; "
                "lower max_tokens or shorten the messages.",
                param="max_tokens",
                retry_after=rate.period,
            )
            return decision
        try:
            (bucket,) = await self.store.aapply(
                [Op(self.key(principal, "tok"), rate, tokens)], self.clock()
            )
        except StoreUnavailable:
            return self._unavailable(decision)
        decision.tokens = bucket
        if bucket.allowed:
            decision.reserved = tokens
        else:
            decision.error = exceptions.RateLimited(
                f"Rate limit reached for tokens: {rate}, {bucket.remaining} left, about "
                f"{tokens} requested. Try again in {format_duration(bucket.retry_after)}.",
                retry_after=bucket.retry_after,
            )
        return decision

    async def asettle(self, principal: Principal, reserved: int, used: int) -> None:
        """Charge the real usage: refund or add the difference to what was reserved."""
        difference = used - reserved
        if not difference or not is_limited(principal):
            return
        _, rate = rates_for(principal)
        op = Op(self.key(principal, "tok"), rate, difference, force=True)
        try:
            await self.store.aapply([op], self.clock())
        except StoreUnavailable:
            logger.error("The rate limit store is unavailable; %d tokens not settled.", difference)

    async def _abudget_error(self, principal: Principal) -> exceptions.BudgetExceeded | None:
        budget = budget_for(principal)
        if budget is None:
            return None
        now = self.clock()
        start = month_start(now)
        spent = await self.spend(principal, start)
        if spent < budget:
            return None
        return exceptions.BudgetExceeded(
            f"The monthly budget of ${budget} is spent (${spent:.2f} this month).",
            retry_after=next_month(start).timestamp() - now,
        )


# Month-to-date spend per identity in this process: (month start, expiry, amount).
_spend_cache: dict[str, tuple[datetime, float, Decimal]] = {}
_SPEND_CACHE_MAX = 10_000


async def amonth_spend(principal: Principal, start: datetime) -> Decimal:
    """The caller's cost since ``start`` from the usage ledger, cached for a few seconds."""
    from django.db.models import Sum

    from .models import UsageRecord

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


def _add_spend(principal: Principal, cost: Decimal) -> None:
    # Until the cache refreshes, count a finished turn so a burst cannot overspend.
    cached = _spend_cache.get(principal.identity)
    if cached is not None:
        _spend_cache[principal.identity] = (cached[0], cached[1], cached[2] + cost)


# The module-level API: the configured store, the wall clock, the current request.


def get_limiter() -> Limiter:
    from .ratelimit_stores import get_store

    return Limiter(get_store())


@dataclass
class Tracked:
    """The decision of the request being served; a turn's reservation updates it."""

    decision: Decision | None = None


_tracked: contextvars.ContextVar[Tracked | None] = contextvars.ContextVar(
    "copilotedge_ratelimit", default=None
)


@contextmanager
def tracking() -> Iterator[Tracked]:
    """Collect what the checks made within the block decide (the middleware's headers)."""
    tracked = Tracked()
    token = _tracked.set(tracked)
    try:
        yield tracked
    finally:
        _tracked.reset(token)


def _count_rejection(decision: Decision, limit: str) -> None:
    if isinstance(decision.error, exceptions.BudgetExceeded):
        metrics.observe_rejection("budget")
    elif isinstance(decision.error, exceptions.RateLimited):
        metrics.observe_rejection(limit)


async def acheck_request(principal: Principal) -> Decision:
    """Count one request for ``principal``; see the module docstring."""
    decision = await get_limiter().acheck_request(principal)
    _count_rejection(decision, "requests")
    tracked = _tracked.get()
    if tracked is not None:
        tracked.decision = decision
    return decision


def check_request(principal: Principal) -> Decision:
    decision = get_limiter().check_request(principal)
    _count_rejection(decision, "requests")
    tracked = _tracked.get()
    if tracked is not None:
        tracked.decision = decision
    return decision


def estimate_tokens(request: ChatRequest) -> int:
    """Tokens to reserve for ``request``: the prompt estimate plus its completion cap."""
    from .tokens import estimate_prompt_tokens

    completion = request.params.get("max_tokens") or DEFAULT_COMPLETION_TOKENS
    return estimate_prompt_tokens(request.messages, request.params) + int(completion)


@dataclass(frozen=True)
class Reservation:
    """Tokens a turn took up front, settled with its real usage by :func:`settle`."""

    principal: Principal
    tokens: int
    limiter: Limiter


async def areserve(principal: Principal, request: ChatRequest) -> Reservation:
    """Admit a turn (budget, then tokens) or raise ``BudgetExceeded``/``RateLimited``/503."""
    limiter = get_limiter()
    decision = await limiter.areserve(principal, estimate_tokens(request))
    _count_rejection(decision, "tokens")
    tracked = _tracked.get()
    if tracked is not None and tracked.decision is not None and decision.tokens is not None:
        tracked.decision.tokens = decision.tokens
    if decision.error is not None:
        raise decision.error
    return Reservation(principal, decision.reserved, limiter)


_pending: set[asyncio.Task[None]] = set()


def settle(reservation: Reservation, used: int, cost: Decimal = Decimal(0)) -> None:
    """Schedule charging the real usage; the turn does not wait for the store."""
    principal = reservation.principal
    if cost:
        _add_spend(principal, cost)
    if used == reservation.tokens or not is_limited(principal):
        return
    coroutine = reservation.limiter.asettle(principal, reservation.tokens, used)
    # A fresh context: the charge outlives the request (and must not use its thread).
    task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def adrain() -> None:
    """Wait for every scheduled settlement (tests and shutdown)."""
    loop = asyncio.get_running_loop()
    while mine := [task for task in _pending if task.get_loop() is loop]:
        await asyncio.gather(*mine, return_exceptions=True)


V = TypeVar("V", bound=Callable[..., Any])


def exempt(view: V) -> V:
    """Mark a view the middleware does not count (health checks, metrics)."""
    view.copilotedge_ratelimit_exempt = True  # type: ignore[attr-defined]
    return view
