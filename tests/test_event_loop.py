"""No request holds the event loop: its lag stays short while the worst inputs arrive.

A background task wakes every few milliseconds and records how late it woke, while the
test sends what used to stall a process for seconds: a megabyte of aliased GraphQL, a
query at every limit, a megabyte prompt on each face, deeply nested JSON.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, override_settings

from tests.asgi import application
from tests.helpers import ORIGIN, WS_PATH

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_chats")]

MAX_LAG = 0.1
# A stall repeats with its input; the other engineers' processes on a shared machine do
# not: the best of a few attempts is the request's own lag.
ATTEMPTS = 3
TICK = 0.005
BODY_LIMIT = 1024 * 1024
MEGABYTE_TEXT = "word " * (BODY_LIMIT // 5 - 200)


async def worst_lag(action: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """How late a ticking task woke at worst while ``action`` ran, and its result."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        while not done.is_set():
            started = loop.time()
            await asyncio.sleep(TICK)
            worst = max(worst, loop.time() - started - TICK)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(TICK * 2)
    try:
        result = await action()
    finally:
        done.set()
        await ticker
    return worst, result


def post(path: str, body: Any, auth: dict[str, str]) -> Callable[[], Awaitable[Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def send() -> Any:
        return await AsyncClient().post(
            path, data=data, content_type="application/json", headers=auth
        )

    return send


def worst_inputs() -> dict[str, tuple[str, Any]]:
    aliases = "query{" + " ".join(f"a{i}:hello" for i in range(90_000)) + "}"
    at_limits = "query{" + " ".join(f"a{i}:hello" for i in range(20)) + " hello" * 180 + "}"
    deep = b'{"messages":' + b"[" * 400_000 + b"]" * 400_000 + b"}"
    message = {"role": "user", "content": MEGABYTE_TEXT}
    agui = {"threadId": "t", "runId": "r", "messages": [{"id": "m", **message}]}
    gql_message = {
        "id": "m",
        "createdAt": "2025-01-01T00:00:00Z",
        "textMessage": {"role": "user", "content": "x"},
    }
    gql_variables = {
        "data": {
            "messages": [gql_message] * 9_000,
            "frontend": {"actions": []},
            "metadata": {"requestType": "Chat"},
        }
    }
    mutation = (
        "mutation($data: GenerateCopilotResponseInput!) {"
        " generateCopilotResponse(data: $data) { threadId } }"
    )
    return {
        "graphql aliases": ("/copilotedge/copilotkit", {"query": aliases[: BODY_LIMIT - 100]}),
        "graphql at the limits": ("/copilotedge/copilotkit", {"query": at_limits}),
        "graphql variables": (
            "/copilotedge/copilotkit",
            {"query": mutation, "variables": gql_variables},
        ),
        "huge prompt (openai)": (
            "/copilotedge/v1/chat/completions",
            {"model": None, "messages": [message]},
        ),
        "huge prompt (ai/run)": (
            "/copilotedge/ai/run/@cf/meta/llama-3.1-8b-instruct",
            {"messages": [message]},
        ),
        "huge prompt (ag-ui)": ("/copilotedge/copilotkit/agent/default/run", agui),
        "deep json": ("/copilotedge/v1/chat/completions", deep),
    }


@override_settings(COPILOTEDGE_RATE_LIMIT="100000/m")
@pytest.mark.parametrize("name", list(worst_inputs()))
async def test_the_worst_inputs_do_not_stall_the_loop(
    auth: dict[str, str], upstream: Any, name: str
) -> None:
    path, body = worst_inputs()[name]
    if isinstance(body, dict) and body.get("model", "") is None:
        body = {key: value for key, value in body.items() if key != "model"}
    # The first request of a process imports and builds what later ones reuse.
    await AsyncClient().get("/copilotedge/v1/models", headers=auth)
    lags = []
    for _ in range(ATTEMPTS):
        lag, response = await worst_lag(post(path, body, auth))
        assert response.status_code < 500
        lags.append(lag)
    assert min(lags) < MAX_LAG, f"{name}: the loop stalled {min(lags) * 1000:.0f} ms"


async def test_a_huge_websocket_chat_does_not_stall_the_loop(session_cookie: bytes) -> None:
    socket = WebsocketCommunicator(
        application, WS_PATH, headers=[ORIGIN, (b"cookie", session_cookie)]
    )
    assert (await socket.connect())[0]
    await socket.receive_json_from()
    frame = {"type": "chat", "id": 1, "messages": [{"role": "user", "content": MEGABYTE_TEXT}]}

    async def chat() -> Any:
        await socket.send_json_to(frame)
        return await socket.receive_json_from(timeout=10)

    lags = []
    for _ in range(ATTEMPTS):
        lag, reply = await worst_lag(chat)
        assert reply["type"] == "error" and reply["error"]["code"] == "rate_limit_exceeded"
        lags.append(lag)
    assert min(lags) < MAX_LAG, f"the loop stalled {min(lags) * 1000:.0f} ms"
    await socket.disconnect()
