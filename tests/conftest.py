"""Shared fixtures: users and keys, a respx-mocked upstream, and the emulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import respx
from asgiref.sync import SyncToAsync
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone

from copilotedge import usage
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


@pytest.fixture
def user(db: None) -> Any:
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def other_user(db: None) -> Any:
    return get_user_model().objects.create_user("bob", password="pw")


@pytest.fixture
def api_key(user: Any) -> tuple[ApiKey, str]:
    return ApiKey.create_key(user, name="test")


@pytest.fixture
def auth(api_key: tuple[ApiKey, str]) -> dict[str, str]:
    """Headers for Django's (Async)Client carrying the test user's API key."""
    return {"Authorization": f"Bearer {api_key[1]}"}


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def drain_usage() -> AsyncIterator[None]:
    yield
    await usage.adrain()


# --- Usage ledger: assert the row a request left (issue 4) --------------------------------
#
#     async def test_something(usage_row, ...):
#         ...make one request...
#         row = await usage_row(protocol="websocket", outcome="ok", token_source="upstream",
#                               completion_tokens=lambda n: n > 0)
#
# Each keyword is a column: a value to compare, or a predicate on the column's value. The
# helper first waits for the ledger's background writes, then requires exactly one row and
# checks the invariants every row must hold, whatever the path.

UsageRowCheck = Callable[..., Awaitable[UsageRecord]]


@pytest.fixture(autouse=True)
def close_async_db_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a transactional test, close the connection asgiref's sync thread opened.

    Async views and the async ORM run queries in that one long-lived thread; its
    connection would outlive the test and keep PostgreSQL from dropping the test
    database at the end of the run.
    """
    yield
    marker = request.node.get_closest_marker("django_db")
    if marker is not None and marker.kwargs.get("transaction"):
        SyncToAsync.single_thread_executor.submit(connections.close_all).result()


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


@pytest.fixture
def usage_row() -> UsageRowCheck:
    """Wait for ledger writes, require exactly one usage row, check it (see above)."""

    async def check(**expected: Any) -> UsageRecord:
        await usage.adrain()
        rows = [row async for row in UsageRecord.objects.all()]
        assert len(rows) == 1, f"expected one usage row, found {len(rows)}: {rows}"
        check_usage_invariants(rows[0])
        assert_columns(rows[0], expected)
        return rows[0]

    return check


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


@pytest.fixture
def sample_ledger(user: Any, other_user: Any, api_key: tuple[ApiKey, str]) -> SampleLedger:
    """Alice (with her key) and Bob's usage over the last three days, saved."""
    ledger = SampleLedger(user, other_user, api_key[0], timezone.now())
    UsageRecord.objects.bulk_create(ledger.rows())
    return ledger
