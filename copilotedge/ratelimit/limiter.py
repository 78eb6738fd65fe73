"""The pure core of the rate limiter: :class:`Limiter` and who it limits at which rates.

A :class:`Limiter` is given a store and a clock and knows nothing of HTTP or of the
request being served; :mod:`copilotedge.ratelimit` builds one on the configured store
and wraps it in the API the faces call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from copilotedge import exceptions
from copilotedge.conf import settings
from copilotedge.ratelimit.budget import (
    SpendLookup,
    budget_for,
    month_spend,
    month_start,
    next_month,
)
from copilotedge.ratelimit.decision import Decision
from copilotedge.ratelimit.gcra import (
    Bucket,
    Op,
    Rate,
    Store,
    StoreUnavailable,
    format_duration,
    parse_rate,
)

if TYPE_CHECKING:
    from copilotedge.auth import Principal

# Named as before the split, so logging configured for the limiter still applies.
logger = logging.getLogger("copilotedge.ratelimit")

#: Every limiter key starts with this (after the cache's own prefix).
KEY_NAMESPACE = "copilotedge:rl:"


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


def is_limited(principal: Principal) -> bool:
    # A Principal with nothing in it is the site's own code (the Python API).
    return bool(principal.api_key or principal.user or principal.ip)


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
        self.spend = spend or month_spend

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

    async def reserve(self, principal: Principal, tokens: int) -> Decision:
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
