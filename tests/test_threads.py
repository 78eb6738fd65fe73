"""RequestThreads: each HTTP request's sync code in one pooled thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished, request_started
from django.db import connection, connections
from django.http import HttpRequest, HttpResponse
from django.urls import path

from copilotedge.threads import RequestThreads

BARRIER_TIMEOUT = 5
barrier: threading.Barrier | None = None


def here() -> str:
    return threading.current_thread().name


def where(request: HttpRequest) -> HttpResponse:
    return HttpResponse(here())


def together(request: HttpRequest) -> HttpResponse:
    # Returns only once every request of the round is in a thread at once.
    assert barrier is not None
    barrier.wait(BARRIER_TIMEOUT)
    return HttpResponse(here())


held: list[Any] = []  # keeps each connection seen alive, so no id is reused


def connection_id(request: HttpRequest) -> HttpResponse:
    connection.ensure_connection()
    held.append(connection.connection)
    return HttpResponse(str(id(connection.connection)))


opened: list[Any] = []


def connect_together(request: HttpRequest) -> HttpResponse:
    connection.ensure_connection()
    opened.append(connections["default"])  # this thread's, not the proxy
    assert barrier is not None
    barrier.wait(BARRIER_TIMEOUT)
    return HttpResponse(here())


def close_connection(request: HttpRequest) -> HttpResponse:
    connection.close()
    return HttpResponse(here())


urlpatterns = [
    path("where", where),
    path("together", together),
    path("connection", connection_id),
    path("connect-together", connect_together),
    path("close", close_connection),
]

pytestmark = pytest.mark.urls(__name__)


async def get(app: Any, url: str) -> str:
    """GET ``url`` through ``app``; the whole body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url,
        "raw_path": url.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    body: list[bytes] = []
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not body and not disconnected.is_set():
            disconnected.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never hangs up
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        elif message.get("body"):
            body.append(message["body"])

    await app(scope, receive, send)
    return b"".join(body).decode()


@pytest.fixture
def app() -> RequestThreads:
    return RequestThreads(ASGIHandler(), idle=2)


async def test_requests_one_after_another_reuse_one_pooled_thread(app: RequestThreads) -> None:
    first = await get(app, "/where")
    assert first.startswith("copilotedge-request")
    assert await get(app, "/where") == first
    assert app.pool.size == (0, 1)


async def test_a_request_runs_all_its_sync_code_in_its_one_thread(app: RequestThreads) -> None:
    seen: list[str] = []

    def note(**kwargs: Any) -> None:
        seen.append(here())

    request_started.connect(note)
    request_finished.connect(note)
    try:
        view = await get(app, "/where")
    finally:
        request_started.disconnect(note)
        request_finished.disconnect(note)
    assert seen == [view, view]


async def test_requests_at_once_each_have_a_thread_and_at_most_idle_stay(
    app: RequestThreads,
) -> None:
    global barrier
    barrier = threading.Barrier(3)  # with one thread for all, this would time out
    names = await asyncio.gather(*(get(app, "/together") for _ in range(3)))
    assert len(set(names)) == 3
    assert app.pool.size == (0, 2)
    assert await get(app, "/where") in names


@pytest.mark.django_db(transaction=True)
async def test_a_pooled_thread_keeps_its_connection_as_conn_max_age_says(
    app: RequestThreads,
) -> None:
    connection.settings_dict["CONN_MAX_AGE"] = 60
    try:
        first = await get(app, "/connection")
        assert await get(app, "/connection") == first  # one connection, as under WSGI
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = 0
        await get(app, "/close")
    first = await get(app, "/connection")
    assert await get(app, "/connection") != first  # closed at each request's end


@pytest.mark.django_db(transaction=True)
async def test_a_thread_the_pool_does_not_keep_closes_its_connection() -> None:
    global barrier
    app = RequestThreads(ASGIHandler(), idle=1)
    barrier = threading.Barrier(2)
    opened.clear()
    connection.settings_dict["CONN_MAX_AGE"] = 60
    try:
        await asyncio.gather(*(get(app, "/connect-together") for _ in range(2)))
        for _ in range(100):
            if any(wrapper.connection is None for wrapper in opened):
                break
            await asyncio.sleep(0.01)
        assert sorted(wrapper.connection is None for wrapper in opened) == [False, True]
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = 0
        await get(app, "/close")


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    app = RequestThreads(inner)
    await app({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]
    assert app.pool.size == (0, 0)
