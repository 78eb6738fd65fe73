"""The token-usage ledger: what a turn cost, written off the stream's hot path."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.dispatch import Signal

from .conf import settings
from .models import UsageRecord

if TYPE_CHECKING:
    from .chat import Turn

logger = logging.getLogger(__name__)

#: Sent after a usage record is saved; ``record`` is the :class:`UsageRecord`.
usage_recorded = Signal()

_MILLION = Decimal(1_000_000)
_pending: set[asyncio.Task[None]] = set()
_WRITE_ATTEMPTS = 3


def estimate_tokens(text: str) -> int:
    """An offline estimate (about four characters a token), for upstreams that send no usage."""
    return math.ceil(len(text) / 4) if text else 0


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    # Each message costs a few tokens of framing besides its content.
    return sum(estimate_tokens(str(m.get("content") or "")) + 4 for m in messages)


def cost_of(
    model: str, prompt_tokens: int, completion_tokens: int, neurons: float | None
) -> Decimal:
    if neurons is not None:
        return (Decimal(str(neurons)) * settings.NEURON_PRICE / 1000).quantize(Decimal("1e-8"))
    price_in, price_out = settings.PRICES.get(model, (Decimal(0), Decimal(0)))
    cost = (prompt_tokens * price_in + completion_tokens * price_out) / _MILLION
    return cost.quantize(Decimal("1e-8"))


def build_record(turn: Turn) -> UsageRecord:
    answer = turn.answer
    upstream = answer.usage
    if upstream is not None and (upstream.prompt_tokens or upstream.completion_tokens):
        prompt, completion, source = upstream.prompt_tokens, upstream.completion_tokens, "upstream"
    else:
        prompt = estimate_prompt_tokens(turn.messages) if turn.attempts or turn.cache_hit else 0
        completion = estimate_tokens(answer.text)
        source = "estimated"
    error = turn.error
    now = time.monotonic()
    principal = turn.principal
    cost = cost_of(turn.model_served, prompt, completion, upstream.neurons if upstream else None)
    return UsageRecord(
        request_id=turn.id,
        user_id=principal.user_id,
        api_key_id=principal.api_key.pk if principal.api_key else None,
        conversation_id=turn.request.conversation_id,
        protocol=turn.protocol,
        model_requested=turn.request.model,
        model_served=turn.model_served,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        token_source=source,
        # A cache hit cost nothing upstream; what the call would have cost is saved.
        cost=Decimal(0) if turn.cache_hit else cost,
        cache_hit=turn.cache_hit,
        cost_saved=cost if turn.cache_hit else Decimal(0),
        outcome=turn.outcome,
        status_code=error.status_code if error else (499 if turn.outcome == "cancelled" else 200),
        error_code=(error.code or "") if error else "",
        latency_ms=round((now - turn.started) * 1000),
        ttft_ms=(
            round((turn.first_token_at - turn.started) * 1000) if turn.first_token_at else None
        ),
        attempts=turn.attempts,
    )


async def asave(record: UsageRecord) -> None:
    """Save with a few retries; a record that cannot be saved is logged whole, never raised."""
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        try:
            await record.asave(force_insert=True)
        except Exception:
            if attempt == _WRITE_ATTEMPTS:
                logger.exception("Could not save usage record %s", _describe(record))
                return
            await asyncio.sleep(0.05 * 2**attempt)
        else:
            await usage_recorded.asend(sender=UsageRecord, record=record)
            return


def _describe(record: UsageRecord) -> dict[str, Any]:
    return {f.attname: getattr(record, f.attname) for f in UsageRecord._meta.concrete_fields}


def record_turn(turn: Turn) -> None:
    """Schedule the turn's usage record; the caller does not wait for the database."""
    record = build_record(turn)
    task = asyncio.get_running_loop().create_task(asave(record))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def adrain() -> None:
    """Wait for every scheduled write (tests and shutdown)."""
    loop = asyncio.get_running_loop()
    while mine := [task for task in _pending if task.get_loop() is loop]:
        await asyncio.gather(*mine, return_exceptions=True)
