"""Resume across server processes: stream from daphne A, drop, resume on daphne B via Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from websockets.asyncio.client import ClientConnection, connect

from copilotedge.models import ApiKey, Message
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.helpers import WS_PATH
from tests.servers import DaphneServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not getattr(settings, "REDIS_URL", ""),
        reason="needs REDIS_URL: two server processes share live deltas through Redis",
    ),
]

TOKENS = 60


async def open_socket(server: DaphneServer, token: str) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + WS_PATH
    socket = await connect(url, origin=server.url)  # type: ignore[arg-type]
    await socket.send(json.dumps({"type": "auth", "token": token}))
    assert json.loads(await socket.recv())["type"] == "ready"
    return socket


async def read_until(socket: ClientConnection, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """Messages until the ``count``-th of type ``kind`` (inclusive)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while count:
            message = json.loads(await socket.recv())
            seen.append(message)
            count -= message["type"] == kind
    return seen


def deltas(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["type"] == "delta"]


async def test_a_client_resumes_on_another_process_without_loss_or_duplication(user):
    _, token = await sync_to_async(ApiKey.create_key)(user, name="two-process")
    emulator = EmulatorServer(EmulatorApp(tokens=TOKENS, token_delay=0.04))
    overrides = {
        "COPILOTEDGE_API_BASE_URL": None,
        # Both processes must use one channel-layer prefix (the default is per process).
        "CHANNEL_LAYERS": settings.CHANNEL_LAYERS,
    }
    with emulator:
        overrides["COPILOTEDGE_API_BASE_URL"] = emulator.api_base_url
        with DaphneServer(overrides) as a, DaphneServer(overrides) as b:
            first = await open_socket(a, token)
            await first.send(
                json.dumps(
                    {"type": "chat", "id": "x", "messages": [{"role": "user", "content": "Go"}]}
                )
            )
            got = await read_until(first, "delta", 3)
            start = got[0]
            assert start["type"] == "start"
            before = "".join(deltas(got))
            await first.close()

            second = await open_socket(b, token)
            await second.send(
                json.dumps(
                    {
                        "type": "resume",
                        "id": "y",
                        "conversation_id": start["conversation_id"],
                        "after": len(before),
                    }
                )
            )
            resumed = await read_until(second, "done")
            await second.close()
            row = await Message.objects.aget(pk=start["message_id"])

    assert resumed[0]["type"] == "start" and resumed[0]["message_id"] == start["message_id"]
    assert resumed[-1]["type"] == "done" and resumed[-1]["finish_reason"] == "stop"
    # The stored text so far, then live deltas relayed from A through Redis.
    assert len(deltas(resumed)) > 2, "the answer was over before B could follow it live"
    assert before + "".join(deltas(resumed)) == row.content
    assert row.status == "complete" and len(row.content.split()) == TOKENS
    finished = [r for r in emulator.app.requests if r["path"].endswith("/chat/completions")]
    assert [r["outcome"] for r in finished] == ["completed"]
