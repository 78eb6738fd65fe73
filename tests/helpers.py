"""Helpers the tests share: upstream bodies, mocked responses, sample data, checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from copilotedge.models import ApiKey, UsageRecord

UPSTREAM = "https://upstream.test/client/v4/accounts/test-account/ai"


OPENAI_URL = f"{UPSTREAM}/v1/chat/completions"


def run_url(model: str) -> str:
    return f"{UPSTREAM}/run/{model}"


def sse_body(*frames: Any, done: bool = True) -> bytes:
    """An upstream event stream: each frame JSON-encoded (or sent as is if a str)."""
    parts = [f"data: {f if isinstance(f, str) else json.dumps(f)}\n\n" for f in frames]
    if done:
        parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


async def read_stream(response: Any) -> list[dict[str, Any] | str]:
    """The SSE frames a client received: parsed JSON, or the raw text of ``[DONE]``."""
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    frames: list[dict[str, Any] | str] = []
    for event in raw.split("\n\n"):
        if event.startswith("data: "):
            data = event[len("data: ") :]
            frames.append(data if data == "[DONE]" else json.loads(data))
    return frames


def openai_chunk(
    content: str | None = None, finish_reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }


class UpstreamBody(httpx.AsyncByteStream):
    """An upstream response body sent chunk by chunk, ``delay`` s before each chunk.

    ``error`` is raised after the last chunk (a connection breaking mid-answer).
    ``sent`` counts chunks handed out; ``closed`` tells whether the client hung up
    (httpx closes the body when the response is closed).
    """

    def __init__(
        self, *chunks: bytes, delay: float = 0.0, error: BaseException | None = None
    ) -> None:
        self.chunks = chunks
        self.delay = delay
        self.error = error
        self.sent = 0
        self.closed = False
        self.hung_up = asyncio.Event()  # set with ``closed``, to wait for a close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.sent += 1
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True
        self.hung_up.set()


def sse_chunks(*frames: Any, done: bool = True) -> list[bytes]:
    """Like :func:`sse_body`, one chunk per frame."""
    chunks = [sse_body(frame, done=False) for frame in frames]
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return chunks


def respond_with(body: UpstreamBody, status: int = 200) -> Any:
    """A respx side effect answering every call with ``body`` (an event stream)."""

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=body, headers={"Content-Type": "text/event-stream"})

    return respond


def run_frame(text: str = "", **extra: Any) -> dict[str, Any]:
    """A Workers AI ``/ai/run`` stream frame."""
    return {"response": text, **extra}


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def reset_limits() -> None:
    from django.core.cache import caches

    from copilotedge import auth, ratelimit
    from copilotedge.conf import settings
    from copilotedge.conversations import preferences
    from copilotedge.ratelimit.stores import is_redis

    cache = caches[settings.CACHE_ALIAS]
    if is_redis(cache):
        # Only this run's keys: the cache's KEY_PREFIX is per test process.
        cache.delete_pattern(f"{ratelimit.KEY_NAMESPACE}*")  # type: ignore[attr-defined]
    else:
        cache.clear()
    ratelimit.forget_spend()
    auth.forget_touches()
    preferences.forget_all()  # user ids repeat between tests too


def redis_cache_settings(url: str, prefix: str) -> dict[str, Any]:
    """A CACHES setting on django-redis at ``url``, failing fast when it is down."""
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": prefix,
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        }
    }


WS_PATH = "/ws/copilotedge/chat/"


ORIGIN = (b"origin", b"http://testserver")


class WordStream(httpx.AsyncByteStream):
    """An upstream event stream that sends ``pieces`` ``delay`` s apart and notes its closing.

    ``closed`` is set when the client hangs up (or the stream ends), ``sent`` counts pieces.
    """

    def __init__(self, pieces: list[str], delay: float = 0.05, *, done: bool = True) -> None:
        self.pieces = pieces
        self.delay = delay
        self.done = done
        self.sent = 0
        self.closed = asyncio.Event()
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            await asyncio.sleep(self.delay)
            self.sent += 1
            yield sse_body(openai_chunk(piece), done=False)
        self.finished = True  # the reader stops at [DONE], so note the end before it
        yield sse_body(openai_chunk(None, "stop"), done=self.done)

    async def aclose(self) -> None:
        self.closed.set()


def stream_response(stream: WordStream) -> httpx.Response:
    return httpx.Response(200, stream=stream, headers={"content-type": "text/event-stream"})


class SlowStream(httpx.AsyncByteStream):
    """An upstream body sent in parts; a float part is a pause of that many seconds.

    ``closed`` tells whether the app hung up (httpx closes the stream on ``aclose``).
    """

    def __init__(self, *parts: bytes | float) -> None:
        self.parts = parts
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, bytes):
                yield part
            else:
                await asyncio.sleep(part)

    async def aclose(self) -> None:
        self.closed = True


def capacity_error(code: int, retry_after: str | None = None) -> httpx.Response:
    """Workers AI's 429: 3040 is out of capacity (retryable), 3036 the daily quota."""
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"success": False, "errors": [{"code": code, "message": "limited"}], "result": None}
    return httpx.Response(429, json=body, headers=headers)


def reset_circuits() -> None:
    """Close every configured upstream's circuit (state may live in a shared Redis)."""
    from copilotedge.upstream.breakers import CircuitBreaker, known_upstreams

    for name in {*known_upstreams(), "workers-ai"}:
        CircuitBreaker(name).reset()


UsageRowCheck = Callable[..., Awaitable[UsageRecord]]


def check_usage_invariants(row: UsageRecord) -> None:
    """What holds for every ledger row, whichever face and outcome produced it."""
    assert row.protocol in UsageRecord.Protocol.values, row.protocol
    assert row.outcome in UsageRecord.Outcome.values, row.outcome
    assert row.token_source in UsageRecord.TokenSource.values, row.token_source
    assert row.total_tokens == row.prompt_tokens + row.completion_tokens
    assert row.model_requested and row.model_served
    if row.cache_hit:
        assert row.cost == 0, "a cache hit costs nothing upstream"
    else:
        assert row.cost_saved == 0, "only a cache hit saves anything"
    if row.ttft_ms is not None:
        assert 0 <= row.ttft_ms <= row.latency_ms
    if row.outcome == UsageRecord.Outcome.OK:
        assert row.status_code == 200 and row.error_code == ""
    if row.outcome in (UsageRecord.Outcome.ERROR, UsageRecord.Outcome.INCOMPLETE):
        assert row.status_code >= 400 and row.error_code, (row.status_code, row.error_code)
    if row.outcome == UsageRecord.Outcome.INCOMPLETE:
        assert row.completion_tokens > 0, "incomplete means part of an answer was sent"


def assert_columns(row: UsageRecord, expected: dict[str, Any]) -> None:
    wrong = {}
    for column, want in expected.items():
        have = getattr(row, column)
        ok = want(have) if callable(want) else have == want
        if not ok:
            wrong[column] = {"have": have, "want": getattr(want, "__name__", want)}
    assert not wrong, f"usage row {row.request_id}: {wrong}"


class SampleLedger:
    """Five usage rows over three days with numbers worked out by hand (see ``sample_ledger``)."""

    MODEL_A = "@cf/meta/llama-3.1-8b-instruct"
    MODEL_B = "@cf/qwen/qwq-32b"
    requests = 5
    prompt_tokens = 3 * 100 + 40
    completion_tokens = 3 * 50 + 20
    cost = Decimal("0.00300000")  # three answered rows at 0.001
    cost_saved = Decimal("0.00200000")  # the cache hit
    errors = 1
    cache_hits = 1
    # Latencies 10, 100, 200, 300, 400 ms: percentile_cont gives p50 200, p95 380.
    latency_p50_ms, latency_p95_ms = 200.0, 380.0
    # Times to first token 5, 50, 60, 70 ms (the error has none): p50 55, p95 68.5.
    ttft_p50_ms, ttft_p95_ms = 55.0, 68.5

    def __init__(self, alice: Any, bob: Any, key: ApiKey, now: datetime) -> None:
        self.alice, self.bob, self.key, self.now = alice, bob, key, now
        self.today = now - timedelta(minutes=1)
        self.yesterday = now - timedelta(days=1)
        self.two_days_ago = now - timedelta(days=2)

    def rows(self) -> list[UsageRecord]:
        ok = {
            "protocol": "openai",
            "model_requested": self.MODEL_A,
            "model_served": self.MODEL_A,
            "user": self.alice,
            "api_key": self.key,
            "prompt_tokens": 100,
            "completion_tokens": 50,
            "total_tokens": 150,
            "cost": Decimal("0.001"),
            "outcome": "ok",
        }
        return [
            UsageRecord(**ok, created_at=self.today, latency_ms=100, ttft_ms=50),
            UsageRecord(**ok, created_at=self.today, latency_ms=200, ttft_ms=60),
            UsageRecord(**ok, created_at=self.today, latency_ms=300, ttft_ms=70),
            UsageRecord(
                protocol="run",
                model_requested=self.MODEL_B,
                model_served=self.MODEL_B,
                user=self.bob,
                created_at=self.yesterday,
                outcome="error",
                status_code=502,
                error_code="upstream_error",
                latency_ms=400,
                ttft_ms=None,
            ),
            UsageRecord(
                protocol="websocket",
                model_requested=self.MODEL_A,
                model_served=self.MODEL_A,
                user=self.alice,
                api_key=self.key,
                created_at=self.two_days_ago,
                prompt_tokens=40,
                completion_tokens=20,
                total_tokens=60,
                cache_hit=True,
                cost=Decimal(0),
                cost_saved=Decimal("0.002"),
                outcome="ok",
                latency_ms=10,
                ttft_ms=5,
                attempts=0,
            ),
        ]
