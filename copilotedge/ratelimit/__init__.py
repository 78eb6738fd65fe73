"""The rate limiter: requests and tokens per window, and a monthly budget, per caller.

The core is pure: a :class:`Limiter` (:mod:`copilotedge.ratelimit.limiter`) is given a
store and a clock and knows nothing of HTTP. The algorithm is GCRA
(:mod:`copilotedge.ratelimit.gcra`: a token bucket kept as one number): a limit of
``N/period`` lets a full bucket of ``N`` through at once and then one more every
``period / N``; unlike a fixed window it never lets ``2 N`` through around a window
boundary. Each check is one atomic store operation over several buckets, all-or-nothing
(:mod:`copilotedge.ratelimit.stores`: a Lua script on Redis, one round trip; a
per-process lock on any other Django cache).

Limits apply per API key, else per user, else per client IP (``Principal.identity``); an
empty ``Principal()`` (the Python API's default: the site's own code) is not limited.
An :class:`~copilotedge.models.ApiKey` overrides requests and tokens per minute and the
monthly budget (``COPILOTEDGE_MONTHLY_BUDGET`` otherwise; see
:mod:`copilotedge.ratelimit.budget`). Tokens are reserved up front (the prompt estimate
plus ``max_tokens``, or :data:`DEFAULT_COMPLETION_TOKENS`) and settled with the real
usage when the turn ends, so concurrent requests cannot overspend.

The async API the faces use. HTTP faces get the request check from
:class:`~copilotedge.middleware.RateLimitMiddleware`; the WebSocket consumer calls it
once per chat message::

    decision = await ratelimit.acheck_request(principal)   # counts one request; never raises
    if not decision.allowed:
        raise decision.error             # RateLimited (429) or ServiceUnavailable (503)
    decision.headers()                   # the six x-ratelimit-* headers

    reservation = await ratelimit.reserve(principal, chat_request)  # budget, then tokens
    ratelimit.settle(reservation, used_tokens, cost)   # scheduled off the hot path

The turn (:mod:`copilotedge.chat.turn`) reserves when it is admitted and settles when it
ends, so no face calls those itself. A view the middleware
must not count (health checks, metrics) is decorated with :func:`exempt`.

Reset headers (:mod:`copilotedge.ratelimit.decision`) are durations as OpenAI writes them
(``"250ms"``, ``"1s"``, ``"6m0s"``): the time until the bucket is full again. When the
store is unreachable, ``COPILOTEDGE_RATE_LIMIT_FAIL_OPEN`` decides: allow and log an
ERROR (the headers then report the full limit), or refuse with a 503
``rate_limiter_unavailable``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from copilotedge import exceptions, lifecycle
from copilotedge.ratelimit.budget import (
    BUDGET_CACHE_SECONDS,
    SpendLookup,
    add_spend,
    budget_for,
    forget_spend,
    month_spend,
    month_start,
    next_month,
)
from copilotedge.ratelimit.decision import (
    LIMIT_REQUESTS,
    LIMIT_TOKENS,
    REMAINING_REQUESTS,
    REMAINING_TOKENS,
    RESET_REQUESTS,
    RESET_TOKENS,
    Decision,
)
from copilotedge.ratelimit.limiter import KEY_NAMESPACE, Limiter, is_limited, rates_for
from copilotedge.usage import metrics

if TYPE_CHECKING:
    from copilotedge.auth import Principal
    from copilotedge.chat.types import ChatRequest

# The limiter's pieces live in ratelimit_budget, ratelimit_decision and ratelimit_limiter;
# every name this module has always offered stays importable from here.
__all__ = [
    "BUDGET_CACHE_SECONDS",
    "DEFAULT_COMPLETION_TOKENS",
    "KEY_NAMESPACE",
    "LIMIT_REQUESTS",
    "LIMIT_TOKENS",
    "REMAINING_REQUESTS",
    "REMAINING_TOKENS",
    "RESET_REQUESTS",
    "RESET_TOKENS",
    "Decision",
    "Limiter",
    "Reservation",
    "SpendLookup",
    "Tracked",
    "acheck_request",
    "budget_for",
    "check_request",
    "estimate_tokens",
    "exempt",
    "forget_spend",
    "get_limiter",
    "is_limited",
    "month_spend",
    "month_start",
    "next_month",
    "rates_for",
    "reserve",
    "settle",
    "tracking",
]

#: Completion tokens reserved for a request without ``max_tokens`` (Workers AI's default).
DEFAULT_COMPLETION_TOKENS = 256


# The module-level API: the configured store, the wall clock, the current request.


def get_limiter() -> Limiter:
    from copilotedge.ratelimit.stores import get_store

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


def estimate_tokens(request: ChatRequest, prompt_tokens: int | None = None) -> int:
    """Tokens to reserve for ``request``: the prompt estimate (``prompt_tokens`` when the
    caller has it already) plus its completion cap."""
    from copilotedge.chat.token_estimates import estimate_prompt_tokens

    completion = request.params.get("max_tokens") or DEFAULT_COMPLETION_TOKENS
    if prompt_tokens is None:
        prompt_tokens = estimate_prompt_tokens(request.messages, request.params)
    return prompt_tokens + int(completion)


@dataclass(frozen=True)
class Reservation:
    """Tokens a turn took up front, settled with its real usage by :func:`settle`."""

    principal: Principal
    tokens: int
    limiter: Limiter


async def reserve(
    principal: Principal, request: ChatRequest, prompt_tokens: int | None = None
) -> Reservation:
    """Admit a turn (budget, then tokens) or raise ``BudgetExceeded``/``RateLimited``/503.

    ``prompt_tokens``: the prompt's estimate, when the caller keeps one (a turn's later
    steps add to the first's); else it is made here."""
    limiter = get_limiter()
    decision = await limiter.reserve(principal, estimate_tokens(request, prompt_tokens))
    _count_rejection(decision, "tokens")
    tracked = _tracked.get()
    if tracked is not None and tracked.decision is not None and decision.tokens is not None:
        tracked.decision.tokens = decision.tokens
    if decision.error is not None:
        raise decision.error
    return Reservation(principal, decision.reserved, limiter)


def settle(reservation: Reservation, used: int, cost: Decimal = Decimal(0)) -> None:
    """Schedule charging the real usage; the turn does not wait for the store."""
    principal = reservation.principal
    if cost:
        add_spend(principal, cost)
    if used == reservation.tokens or not is_limited(principal):
        return
    lifecycle.spawn(reservation.limiter.asettle(principal, reservation.tokens, used))


V = TypeVar("V", bound=Callable[..., Any])


def exempt(view: V) -> V:
    """Mark a view the middleware does not count (health checks, metrics)."""
    view.copilotedge_ratelimit_exempt = True  # type: ignore[attr-defined]
    return view
