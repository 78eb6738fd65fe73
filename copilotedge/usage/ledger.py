"""The token-usage ledger: what a turn cost, written off the stream's hot path.

Every turn, however it ends (answered, failed, cancelled, served from the cache), becomes
one :class:`~copilotedge.models.UsageRecord`. :func:`record` builds it from the turn's
:class:`~copilotedge.chat.types.TurnRecord` synchronously (cheap, no I/O: token counts,
prices, cost), updates the Prometheus metrics from it, and queues it for the background
writer in :mod:`copilotedge.usage.writer`, so the response never waits for the database.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from decimal import Decimal

from copilotedge.chat.token_estimates import (
    estimate_completion_tokens,
    estimate_prompt_tokens,
    estimate_tokens,
)
from copilotedge.chat.types import TurnRecord
from copilotedge.conf import settings
from copilotedge.exceptions import UpstreamError
from copilotedge.models import UsageRecord
from copilotedge.usage import metrics
from copilotedge.usage import writer as usage_writer

# The estimates live in copilotedge.chat.token_estimates; these names stay importable here.
__all__ = [
    "TokenCount",
    "build_record",
    "cost_of",
    "count_tokens",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "has_price",
    "price_of",
    "record",
]

logger = logging.getLogger(__name__)

_MILLION = Decimal(1_000_000)
_COST_PLACES = Decimal("1e-8")
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


def count_tokens(turn: TurnRecord) -> TokenCount:
    """Upstream's counts when it sent them, else an offline estimate.

    The estimate charges the prompt whenever upstream may have processed it: always,
    unless the turn failed without a byte of answer (upstream refused or was unreachable,
    and refused requests are not billed). A partial answer is counted as far as it got.
    """
    upstream = turn.usage
    if upstream is not None and (upstream.prompt_tokens or upstream.completion_tokens):
        return TokenCount(
            upstream.prompt_tokens, upstream.completion_tokens, "upstream", upstream.neurons
        )
    calls = [(call.name, call.arguments) for call in turn.tool_calls]
    completion = estimate_completion_tokens(turn.text, calls)
    # A cache hit is charged like the call it stands for, so its saving is what that cost.
    reached = turn.attempts > 0 or turn.cache_hit
    charged = reached and (turn.outcome != UsageRecord.Outcome.ERROR or completion)
    prompt = 0
    if charged:
        # Every step's prompt, as the turn estimated them; else the last one's, made now.
        estimated = turn.prompt_tokens_estimate
        prompt = (
            estimated
            if estimated is not None
            else estimate_prompt_tokens(turn.messages, turn.params)
        )
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


def _status_code(turn: TurnRecord) -> int:
    if turn.error is not None:
        return turn.error.status_code
    return _CANCELLED_STATUS if turn.outcome == UsageRecord.Outcome.CANCELLED else 200


def build_record(turn: TurnRecord) -> UsageRecord:
    """The turn's ledger row, built in memory (no I/O)."""
    tokens = count_tokens(turn)
    cost = cost_of(turn.model_served, tokens.prompt, tokens.completion, tokens.neurons)
    cache_hit = turn.cache_hit
    started, first = turn.started, turn.first_token_at
    principal = turn.principal
    return UsageRecord(
        request_id=turn.id,
        user_id=principal.user_id,
        api_key_id=principal.api_key.pk if principal.api_key else None,
        conversation_id=turn.conversation_id,
        protocol=turn.protocol,
        model_requested=turn.model_requested,
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
        latency_ms=round((turn.ended - started) * 1000),
        ttft_ms=round((first - started) * 1000) if first is not None else None,
        attempts=turn.attempts,
        steps=turn.steps,
        tool_calls=turn.tool_calls_run,
    )


def record(turn: TurnRecord) -> UsageRecord:
    """Build the turn's ledger row, count it in the metrics, and queue its write (returned).

    The caller does not wait for the database; :func:`copilotedge.lifecycle.drain` does.
    """
    row = build_record(turn)
    upstream_error = turn.error.code if isinstance(turn.error, UpstreamError) else None
    metrics.observe_record(
        row, cache_status=turn.cache_status.lower(), upstream_error=upstream_error
    )
    usage_writer.enqueue(row)
    return row
