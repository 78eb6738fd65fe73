"""Shared fixtures: users and keys, a respx-mocked upstream, and the emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx
from django.contrib.auth import get_user_model

from copilotedge import usage
from copilotedge.models import ApiKey

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


# -- Reliability (issue 7): upstream behaviours for retries, breakers and the cache. --


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
    from copilotedge.breaker import CircuitBreaker, known_upstreams

    for name in {*known_upstreams(), "workers-ai"}:
        CircuitBreaker(name).reset()


@pytest.fixture(scope="session", autouse=True)
def close_async_orm_connections(django_db_setup: None) -> Iterator[None]:
    """Close the connection the async ORM opened in asgiref's sync thread, at the end.

    Left open, it keeps PostgreSQL from dropping the test database after the run.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture(autouse=True)
def closed_circuits() -> Iterator[None]:
    """Every test starts with closed circuits: failures of one test must not open another's."""
    reset_circuits()
    yield
