"""The token-usage ledger: what a turn cost, written off the stream's hot path.

Every turn, however it ends (answered, failed, cancelled, served from the cache), becomes
one :class:`~copilotedge.models.UsageRecord`. :func:`record_turn` builds it synchronously
(cheap, no I/O), updates the Prometheus metrics from it, and queues it for a background
writer that inserts each event loop's records in batches, so the response never waits
for the database; :func:`adrain` waits for the queue to empty.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
import weakref
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, close_old_connections
from django.dispatch import Signal

from . import db, metrics
from .conf import settings
from .exceptions import UpstreamError
from .models import UsageRecord
from .tokens import estimate_completion_tokens, estimate_prompt_tokens, estimate_tokens

__all__ = [  # the estimates live in copilotedge.tokens; these names stay importable here
    "TokenCount",
    "adrain",
    "build_record",
    "cost_of",
    "count_tokens",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "has_price",
    "price_of",
    "record_turn",
    "usage_recorded",
]

if TYPE_CHECKING:
    from .chat import Turn

logger = logging.getLogger(__name__)

#: Sent once per turn, after its record is written (``saved=True``) or after every attempt
#: to write it failed (``saved=False``: the record has no primary key, but billing still
#: learns what was spent). Arguments: ``record`` (the :class:`UsageRecord`) and ``saved``.
#: Receivers may be sync or async; one that raises is logged and does not stop the others.
usage_recorded = Signal()

_MILLION = Decimal(1_000_000)
_COST_PLACES = Decimal("1e-8")
_WRITE_ATTEMPTS = 3
_RETRY_DELAY = 0.05  # seconds, doubled after each failed attempt
_BATCH_SIZE = 500
_CANCELLED_STATUS = 499  # the client closed the connection (nginx's convention)
_unpriced_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A turn's token counts and where they came from (``upstream`` or ``estimated``)."""

    prompt: int
    completion: int
    source: str
    neurons: float | None = None

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.total,
        }


def count_tokens(turn: Turn) -> TokenCount:
    """Upstream's counts when it sent them, else an offline estimate.

    The estimate charges the prompt whenever upstream may have processed it: always,
    unless the turn failed without a byte of answer (upstream refused or was unreachable,
    and refused requests are not billed). A partial answer is counted as far as it got.
    """
    answer = turn.answer
    upstream = answer.usage
    if upstream is not None and (upstream.prompt_tokens or upstream.completion_tokens):
        return TokenCount(
            upstream.prompt_tokens, upstream.completion_tokens, "upstream", upstream.neurons
        )
    calls = [(call.name, call.arguments) for call in answer.tool_calls.values()]
    completion = estimate_completion_tokens(answer.text, calls)
    # A cache hit is charged like the call it stands for, so its saving is what that cost.
    reached = turn.attempts > 0 or turn.cache_hit
    charged = reached and (turn.outcome != UsageRecord.Outcome.ERROR or completion)
    prompt = estimate_prompt_tokens(turn.messages, turn.request.params) if charged else 0
    return TokenCount(prompt, completion, "estimated", upstream.neurons if upstream else None)


def _listed_price(
    model: str, table: dict[str, tuple[Decimal, Decimal]]
) -> tuple[Decimal, Decimal] | None:
    if model in table:
        return table[model]
    for pattern, price in table.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern):
            return price
    return None


def has_price(model: str) -> bool:
    """Whether ``COPILOTEDGE_PRICES`` prices ``model`` (exactly or by a glob pattern)."""
    return _listed_price(model, settings.PRICES) is not None


def price_of(model: str) -> tuple[Decimal, Decimal]:
    """(input, output) USD per million tokens: the exact entry in ``COPILOTEDGE_PRICES``,
    else its first glob pattern that matches, else ``COPILOTEDGE_DEFAULT_PRICE``, else the
    table's highest prices (an unknown model is never free)."""
    table = settings.PRICES
    listed = _listed_price(model, table)
    if listed is not None:
        return listed
    fallback = settings.DEFAULT_PRICE
    if fallback is None:
        fallback = (
            max((p[0] for p in table.values()), default=Decimal(0)),
            max((p[1] for p in table.values()), default=Decimal(0)),
        )
    if model not in _unpriced_warned:
        _unpriced_warned.add(model)
        logger.warning(
            "No price for model %s in COPILOTEDGE_PRICES; charging %s/%s USD per million "
            "input/output tokens.",
            model,
            *fallback,
        )
    return fallback


def cost_of(
    model: str, prompt_tokens: int, completion_tokens: int, neurons: float | None
) -> Decimal:
    """USD, from neurons when upstream reported them (Workers AI bills neurons), else tokens."""
    if neurons is not None:
        return (Decimal(str(neurons)) * settings.NEURON_PRICE / 1000).quantize(_COST_PLACES)
    price_in, price_out = price_of(model)
    cost = (prompt_tokens * price_in + completion_tokens * price_out) / _MILLION
    return cost.quantize(_COST_PLACES)


def _status_code(turn: Turn) -> int:
    if turn.error is not None:
        return turn.error.status_code
    return _CANCELLED_STATUS if turn.outcome == UsageRecord.Outcome.CANCELLED else 200


def build_record(turn: Turn) -> UsageRecord:
    """The turn's record, built in memory (no I/O)."""
    tokens = count_tokens(turn)
    cost = cost_of(turn.model_served, tokens.prompt, tokens.completion, tokens.neurons)
    cache_hit = turn.cache_hit
    started, first = turn.started, turn.first_token_at
    principal = turn.principal
    return UsageRecord(
        request_id=turn.id,
        user_id=principal.user_id,
        api_key_id=principal.api_key.pk if principal.api_key else None,
        conversation_id=turn.request.conversation_id,
        protocol=turn.protocol,
        model_requested=turn.request.model,
        model_served=turn.model_served,
        prompt_tokens=tokens.prompt,
        completion_tokens=tokens.completion,
        total_tokens=tokens.total,
        token_source=tokens.source,
        # A cache hit cost nothing upstream; what it would have cost is what it saved.
        cost=Decimal(0) if cache_hit else cost,
        cost_saved=cost if cache_hit else Decimal(0),
        cache_hit=cache_hit,
        outcome=turn.outcome,
        status_code=_status_code(turn),
        error_code=(turn.error.code or "") if turn.error else "",
        latency_ms=round((time.monotonic() - started) * 1000),
        ttft_ms=round((first - started) * 1000) if first is not None else None,
        attempts=turn.attempts,
    )


def describe(record: UsageRecord) -> dict[str, Any]:
    """Every column of ``record``, for a log line that lets an operator re-insert it."""
    return {f.attname: getattr(record, f.attname) for f in UsageRecord._meta.concrete_fields}


async def asave_batch(records: list[UsageRecord]) -> None:
    """Insert records in one statement; never raises.

    If the batch fails, each record is saved on its own, so one bad record (say, of a
    conversation deleted meanwhile) cannot lose the others' spend. Either way each
    record is then announced on ``usage_recorded``.
    """
    try:
        await UsageRecord.objects.abulk_create(records)
    except asyncio.CancelledError:
        raise
    except Exception:
        await sync_to_async(close_old_connections)()
        for record in records:
            await _announce(record, saved=await _asave_one(record))
    else:
        for record in records:
            await _announce(record, saved=True)


async def _asave_one(record: UsageRecord) -> bool:
    """Save with retries and backoff; ``False`` (the record logged whole) if it never lands."""
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        try:
            record.pk = None
            await record.asave(force_insert=True)
            return True
        except asyncio.CancelledError:
            raise
        except IntegrityError:
            # Its request id is there: an earlier write committed even though it failed
            # (the connection broke on the reply).
            if await UsageRecord.objects.filter(request_id=record.request_id).aexists():
                return True
            # Something it points to is gone: keep the spend, drop the dangling links.
            if not await _adrop_missing_links(record):
                logger.exception("Could not save usage record: %r", describe(record))
                return False
        except Exception:
            # A broken connection must not poison the retry.
            await sync_to_async(close_old_connections)()
            if attempt == _WRITE_ATTEMPTS:
                logger.exception(
                    "Could not save usage record after %d attempts: %r", attempt, describe(record)
                )
                return False
            logger.warning(
                "Saving usage record %s failed (attempt %d); retrying.", record.request_id, attempt
            )
            await asyncio.sleep(_RETRY_DELAY * 2 ** (attempt - 1))
    return False


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


async def _announce(record: UsageRecord, *, saved: bool) -> None:
    responses = await usage_recorded.asend_robust(sender=UsageRecord, record=record, saved=saved)
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error("usage_recorded receiver %r raised", receiver, exc_info=response)


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
            self.task = asyncio.get_running_loop().create_task(self._run(), context=db.detached())

    async def _run(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[:_BATCH_SIZE], self.queue[_BATCH_SIZE:]
            await asave_batch(batch)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writer] = (
    weakref.WeakKeyDictionary()
)


def record_turn(turn: Turn) -> UsageRecord:
    """Build the turn's record, count it in the metrics, and queue its write (returned).

    The caller does not wait for the database; :func:`adrain` does.
    """
    record = build_record(turn)
    upstream_error = turn.error.code if isinstance(turn.error, UpstreamError) else None
    metrics.observe_record(
        record, cache_status=turn.cache_status.lower(), upstream_error=upstream_error
    )
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = _Writer()
    writer.add(record)
    return record


async def adrain() -> None:
    """Wait until every queued record of this event loop is written (tests, shutdown)."""
    # A record may wait for its conversation's rows (chat.Turn.finish): those first.
    await db.adrain()
    await asyncio.sleep(0)
    writer = _writers.get(asyncio.get_running_loop())
    while writer is not None and writer.task is not None and not writer.task.done():
        await asyncio.shield(writer.task)
