"""Shared fixtures: users and keys, a respx-mocked upstream, and the emulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import respx
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connections

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


# --- CopilotKit faces (AG-UI, GraphQL) -------------------------------------------------


@pytest.fixture
async def close_connections() -> AsyncIterator[None]:
    """Close the connection the async ORM's worker thread opened during an async test.

    Django closes connections at the end of a request only in the thread that finishes
    it; the worker thread's stays open and keeps PostgreSQL from dropping the test
    database at the end of the run.
    """
    yield
    await usage.adrain()
    await sync_to_async(connections.close_all)()
