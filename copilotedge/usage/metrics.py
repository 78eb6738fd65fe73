"""Prometheus metrics, updated from one place: each turn's usage record (:func:`observe_record`).

Four things happen outside a turn and have their own small functions, to be called from
the code that knows about them: open streams (:func:`track_stream`, by the turn), rate-limit
rejections (:func:`observe_rejection`, by the limiter), tool calls (:func:`observe_tool_call`,
by the tool executor) and the circuit breaker's state
(:func:`set_circuit_state`, by the breaker).

Multi-process servers: when ``PROMETHEUS_MULTIPROC_DIR`` is set, ``prometheus_client``
itself (not this app) keeps the values in files there, and :func:`exposition` aggregates
every process's files. Gauges say how they aggregate (``livesum`` for open streams).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from copilotedge.models import UsageRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST

CACHE_HIT = "hit"
CACHE_MISS = "miss"
CACHE_BYPASS = "bypass"

CIRCUIT_CLOSED = "closed"
CIRCUIT_HALF_OPEN = "half_open"
CIRCUIT_OPEN = "open"
CIRCUIT_VALUES = {CIRCUIT_CLOSED: 0, CIRCUIT_HALF_OPEN: 1, CIRCUIT_OPEN: 2}

# Seconds; a streamed answer can run for minutes, a first token should take under one.
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)

REQUESTS = Counter(
    "copilotedge_requests",
    "Turns recorded in the usage ledger.",
    ["protocol", "model", "outcome"],
)
TOKENS = Counter(
    "copilotedge_tokens",
    "Tokens recorded in the usage ledger (kind: prompt or completion).",
    ["protocol", "model", "kind"],
)
COST = Counter(
    "copilotedge_cost_usd",
    "Upstream cost recorded in the usage ledger, in USD.",
    ["model"],
)
COST_SAVED = Counter(
    "copilotedge_cache_saved_usd",
    "Cost the response cache saved, in USD.",
    ["model"],
)
LATENCY = Histogram(
    "copilotedge_request_duration_seconds",
    "Time from the start of a turn to its end.",
    ["protocol"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "copilotedge_time_to_first_token_seconds",
    "Time from the start of a turn to the first answer byte from upstream.",
    ["protocol"],
    buckets=_TTFT_BUCKETS,
)
CACHE = Counter(
    "copilotedge_cache_lookups",
    "Response-cache lookups by result (hit, miss, bypass).",
    ["result"],
)
REJECTIONS = Counter(
    "copilotedge_rate_limit_rejections",
    "Requests refused by the rate limiter (limit: requests, tokens or budget).",
    ["limit"],
)
UPSTREAM_ERRORS = Counter(
    "copilotedge_upstream_errors",
    "Turns that ended with an upstream error, by error code.",
    ["code"],
)
OPEN_STREAMS = Gauge(
    "copilotedge_open_streams",
    "Answers being streamed right now.",
    ["protocol"],
    multiprocess_mode="livesum",
)
LOOP_LAG = Histogram(
    "copilotedge_event_loop_lag_seconds",
    "How late the event loop wakes a 100 ms timer: time nothing else could run.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CHANNEL_LAYER_ERRORS = Counter(
    "copilotedge_channel_layer_errors",
    "WebSocket channel-layer operations that failed (the layer unreachable), by operation.",
    ["operation"],
)
TOOL_CALLS = Counter(
    "copilotedge_tool_calls",
    "Server-side tool calls by tool and outcome (ok, error, timeout, invalid, forbidden, "
    "denied, cancelled).",
    ["tool", "outcome"],
)
TOOL_LATENCY = Histogram(
    "copilotedge_tool_duration_seconds",
    "Time from a tool call's start (validation, permission, approval) to its result.",
    ["tool"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CIRCUIT = Gauge(
    "copilotedge_circuit_state",
    "Upstream circuit breaker state: 0 closed, 1 half-open, 2 open.",
    ["upstream"],
    multiprocess_mode="mostrecent",
)


def observe_record(
    record: UsageRecord, *, cache_status: str | None = None, upstream_error: str | None = None
) -> None:
    """Count one turn from its usage record (the single place request metrics change)."""
    protocol, model = record.protocol, record.model_served or record.model_requested
    REQUESTS.labels(protocol, model, record.outcome).inc()
    if record.prompt_tokens:
        TOKENS.labels(protocol, model, "prompt").inc(record.prompt_tokens)
    if record.completion_tokens:
        TOKENS.labels(protocol, model, "completion").inc(record.completion_tokens)
    if record.cost:
        COST.labels(model).inc(float(record.cost))
    if record.cost_saved:
        COST_SAVED.labels(model).inc(float(record.cost_saved))
    LATENCY.labels(protocol).observe(record.latency_ms / 1000)
    if record.ttft_ms is not None:
        TTFT.labels(protocol).observe(record.ttft_ms / 1000)
    if cache_status is not None:
        CACHE.labels(cache_status).inc()
    if upstream_error is not None:
        UPSTREAM_ERRORS.labels(upstream_error).inc()


_LAG_INTERVAL = 0.1
_monitored: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_monitors: set[asyncio.Task[None]] = set()


async def _watch_loop_lag() -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(_LAG_INTERVAL)
        LOOP_LAG.observe(max(0.0, loop.time() - started - _LAG_INTERVAL))


def watch_loop_lag() -> None:
    """Measure this event loop's lag from now on (once per loop; started by the first stream)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a synchronous caller: no loop to watch
        return
    if loop in _monitored:
        return
    _monitored.add(loop)
    task = loop.create_task(_watch_loop_lag(), name="copilotedge-loop-lag")
    _monitors.add(task)
    task.add_done_callback(_monitors.discard)


@contextmanager
def track_stream(protocol: str) -> Iterator[None]:
    """Count an answer as open while the block runs."""
    watch_loop_lag()
    gauge = OPEN_STREAMS.labels(protocol)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def observe_rejection(limit: str) -> None:
    """Count one request the rate limiter refused; ``limit`` is what ran out."""
    REJECTIONS.labels(limit).inc()


def observe_tool_call(tool: str, outcome: str, seconds: float) -> None:
    """Count one server-side tool call and its duration."""
    TOOL_CALLS.labels(tool, outcome).inc()
    TOOL_LATENCY.labels(tool).observe(seconds)


def observe_channel_layer_error(operation: str) -> None:
    """Count one failed channel-layer operation of a WebSocket (``receive``, ``group_add``…)."""
    CHANNEL_LAYER_ERRORS.labels(operation).inc()


def set_circuit_state(upstream: str, state: str) -> None:
    """Publish an upstream's circuit state (``closed``, ``half_open`` or ``open``)."""
    CIRCUIT.labels(upstream).set(CIRCUIT_VALUES[state])


def exposition() -> bytes:
    """The metrics in Prometheus text format, every process's when multi-process mode is on."""
    try:
        registry = CollectorRegistry()
        # Raises ValueError unless prometheus_client found PROMETHEUS_MULTIPROC_DIR.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    except ValueError:
        registry = REGISTRY
    return generate_latest(registry)
