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
from django.test import Client

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


# --- Conversations and the WebSocket consumer (issue 5) -----------------------------------

WS_PATH = "/ws/copilotedge/chat/"
ORIGIN = (b"origin", b"http://testserver")


class SlowStream(httpx.AsyncByteStream):
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


def stream_response(stream: SlowStream) -> httpx.Response:
    return httpx.Response(200, stream=stream, headers={"content-type": "text/event-stream"})


@pytest.fixture
def session_cookie(user: Any) -> bytes:
    """A ``cookie`` header value carrying a signed-in session of ``user``."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
async def drain_chats() -> AsyncIterator[None]:
    """Let detached chats and background saves finish before the test's database goes."""
    yield
    from copilotedge import consumers, transcript

    await consumers.adrain()
    await transcript.adrain()
    await usage.adrain()


@pytest.fixture(scope="session", autouse=True)
def _close_async_orm_connections(django_db_setup: None) -> Iterator[None]:
    """Close the connection the async ORM opened in asgiref's worker thread.

    Async tests reach the database from that thread; left open, its connection keeps
    PostgreSQL from dropping the test database at the end of the run.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()
