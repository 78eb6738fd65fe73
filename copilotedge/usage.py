"""The token-usage ledger: what a turn cost, written off the stream's hot path."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, close_old_connections
from django.dispatch import Signal

from .conf import settings
from .models import UsageRecord

if TYPE_CHECKING:
    from .chat import Turn

logger = logging.getLogger(__name__)

#: Sent after a usage record is saved; ``record`` is the :class:`UsageRecord`.
usage_recorded = Signal()

_MILLION = Decimal(1_000_000)
_WRITE_ATTEMPTS = 3
_BATCH_SIZE = 500


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


async def asave_batch(records: list[UsageRecord]) -> None:
    """Insert records in one statement; never raises.

    If the batch fails, each record is saved on its own, so one bad record (say, of a
    conversation deleted meanwhile) cannot lose the others' spend.
    """
    try:
        await UsageRecord.objects.abulk_create(records)
    except Exception:
        await sync_to_async(close_old_connections)()
        for record in records:
            await _asave_one(record)
    else:
        for record in records:
            await usage_recorded.asend(sender=UsageRecord, record=record)


async def _asave_one(record: UsageRecord) -> None:
    """Save with a few retries; a record that cannot be saved is logged whole."""
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        try:
            await record.asave(force_insert=True)
        except IntegrityError:
            # Something it points to is gone: keep the spend, drop the dangling links.
            if not await _adrop_missing_links(record):
                logger.exception("Could not save usage record %s", _describe(record))
                return
        except Exception:
            # A broken connection must not poison the retry.
            await sync_to_async(close_old_connections)()
            if attempt == _WRITE_ATTEMPTS:
                logger.exception("Could not save usage record %s", _describe(record))
                return
            await asyncio.sleep(0.05 * 2**attempt)
        else:
            await usage_recorded.asend(sender=UsageRecord, record=record)
            return


async def _adrop_missing_links(record: UsageRecord) -> bool:
    """Null the foreign keys whose rows no longer exist; whether any was dropped."""
    dropped = False
    for field in ("user", "api_key", "conversation"):
        attname = f"{field}_id"
        pk = getattr(record, attname)
        model = UsageRecord._meta.get_field(field).related_model
        if pk is not None and not await model._default_manager.filter(pk=pk).aexists():  # type: ignore[union-attr]
            setattr(record, attname, None)
            dropped = True
    return dropped


def _describe(record: UsageRecord) -> dict[str, Any]:
    return {f.attname: getattr(record, f.attname) for f in UsageRecord._meta.concrete_fields}


class _Writer:
    """Collects one event loop's records and inserts them in batches from one task.

    Group commit: a record is written at once when the writer is idle, and records that
    arrive while a write is under way go together in the next one. Under load this turns
    a write per request into a write per batch, with no delay added when idle.
    """

    def __init__(self) -> None:
        self.queue: list[UsageRecord] = []
        self.task: asyncio.Task[None] | None = None

    def add(self, record: UsageRecord) -> None:
        self.queue.append(record)
        if self.task is None or self.task.done():
            # A fresh context: the writer outlives the request that started it, so it
            # must not run its queries in that request's thread.
            self.task = asyncio.get_running_loop().create_task(
                self._run(), context=contextvars.Context()
            )

    async def _run(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[:_BATCH_SIZE], self.queue[_BATCH_SIZE:]
            await asave_batch(batch)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writer] = (
    weakref.WeakKeyDictionary()
)


def record_turn(turn: Turn) -> UsageRecord:
    """Queue the turn's usage record (returned); the caller does not wait for the database."""
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = _Writer()
    record = build_record(turn)
    writer.add(record)
    return record


async def adrain() -> None:
    """Wait until every queued record of this event loop is written (tests, shutdown)."""
    writer = _writers.get(asyncio.get_running_loop())
    while writer is not None and writer.task is not None and not writer.task.done():
        await asyncio.shield(writer.task)
