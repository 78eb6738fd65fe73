"""Shared fixtures: users and keys, a respx-mocked upstream, and the emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx
from asgiref.sync import SyncToAsync
from django.contrib.auth import get_user_model
from django.db import connections

from copilotedge import usage
from copilotedge.models import ApiKey
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.servers import DaphneServer

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


# ---- core-tests (issue 2): upstream bodies that stream slowly and record being closed ----


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


# ---- core-tests (issue 2): the emulator and the app under daphne, for end-to-end tests ----


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    """The Workers AI emulator on a loopback port (its request log is ``emulator.app.requests``)."""
    with EmulatorServer(EmulatorApp()) as server:
        yield server


@pytest.fixture(scope="module")
def e2e_server(emulator: EmulatorServer, django_db_setup: None) -> Iterator[DaphneServer]:
    """``tests.asgi`` under real daphne, pointed at :func:`emulator`, on the test database.

    Fails at teardown if the server wrote a traceback.
    """
    server = DaphneServer(
        {
            "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
            "COPILOTEDGE_ACCOUNT_ID": "e2e",
            "COPILOTEDGE_API_TOKEN": "e2e",
        }
    ).start()
    try:
        yield server
    finally:
        stderr = server.stop()
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's, plus: close the async ORM's connections before the test database
    is dropped.

    Async tests run their queries in asgiref's one sync thread; its connection stays
    open, and PostgreSQL refuses to drop a database "being accessed by other users",
    leaving a ``test_copilotedge_<pid>`` behind on the shared server after every run.
    """
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


# --- API keys and rate limits (issue 3) ---------------------------------------------
# Limiter buckets live in the cache and outlive a test (on Redis, even the process), and
# primary keys repeat between tests on SQLite: every test starts with empty buckets.


def reset_limits() -> None:
    from django.core.cache import caches

    from copilotedge import auth, ratelimit
    from copilotedge.conf import settings
    from copilotedge.ratelimit_stores import is_redis

    cache = caches[settings.CACHE_ALIAS]
    if is_redis(cache):
        # Only this run's keys: the cache's KEY_PREFIX is per test process.
        cache.delete_pattern(f"{ratelimit.KEY_NAMESPACE}*")  # type: ignore[attr-defined]
    else:
        cache.clear()
    ratelimit.forget_spend()
    auth.forget_touches()


@pytest.fixture(autouse=True)
async def _fresh_limits() -> AsyncIterator[None]:
    from copilotedge import auth, ratelimit
    from copilotedge.ratelimit_stores import RedisStore

    reset_limits()
    yield
    await auth.adrain()
    await ratelimit.adrain()
    await RedisStore.aclose()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A private redis-server for the whole run (needs the ``redis-server`` binary)."""
    import shutil

    from tests.servers import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        yield server


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


@pytest.fixture(autouse=True)
def closed_circuits() -> Iterator[None]:
    """Every test starts with closed circuits: failures of one test must not open another's."""
    reset_circuits()
    yield


# --- CopilotKit faces (issue 6) ------------------------------------------------------


@pytest.fixture
async def agui_drain() -> AsyncIterator[None]:
    """After a test that ran AG-UI runs in-process: stop this loop's stop listener
    (channels-redis refuses receives from two event loops at once)."""
    from copilotedge import agui_runs

    yield
    await agui_runs.aclose()
