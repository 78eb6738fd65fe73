"""A Redis outage under a running site: WebSockets connect and chat, resume degrades, all recovers.

The channel layer is a test-owned ``redis-server`` that the test kills and restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from prometheus_client import REGISTRY

from copilotedge.conversations import live
from copilotedge.models import Conversation, Message
from copilotedge.websocket.layer import RETRY_MAX
from tests.asgi import application
from tests.helpers import ORIGIN, WS_PATH, WordStream
from tests.servers import RedisServer
from tests.websocket.test_consumers import chat, receive_until, slow_upstream, text_of

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("drain_chats"),
    pytest.mark.skipif(not RedisServer.available(), reason="needs redis-server"),
]


@pytest.fixture
def redis_layer() -> Iterator[RedisServer]:
    """A private redis-server as the channel layer (the test may kill and restart it)."""
    server = RedisServer().start()
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": server.url, "socket_timeout": None}]},
        }
    }
    try:
        with override_settings(CHANNEL_LAYERS=layers):
            yield server
    finally:
        server.stop()


def layer_errors(operation: str) -> float:
    value = REGISTRY.get_sample_value(
        "copilotedge_channel_layer_errors_total", {"operation": operation}
    )
    return value or 0.0


async def connected(cookie: bytes) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(application, WS_PATH, headers=[ORIGIN, (b"cookie", cookie)])
    ok, _ = await socket.connect()
    assert ok
    assert (await socket.receive_json_from())["type"] == "ready"
    return socket


async def streaming_answer(user: Any, text: str) -> Message:
    conversation = await Conversation.objects.acreate(user=user, title="t")
    return await Message.objects.acreate(
        conversation=conversation,
        sequence=1,
        role="assistant",
        content=text,
        status=Message.Status.STREAMING,
    )


async def resume(socket: WebsocketCommunicator, answer: Message, after: int) -> None:
    await socket.send_json_to(
        {
            "type": "resume",
            "id": "r",
            "conversation_id": str(answer.conversation_id),
            "after": after,
        }
    )
    assert (await socket.receive_json_from())["type"] == "start"


async def test_a_redis_outage_degrades_resume_and_recovers(
    redis_layer: RedisServer, session_cookie: bytes, upstream: Any, user: Any
) -> None:
    slow_upstream(upstream, WordStream(["Still ", "here."], delay=0))
    before = await connected(session_cookie)
    redis_layer.kill()
    receive_errors = layer_errors("receive")

    # A socket opened during the outage connects and streams its chats.
    during = await connected(session_cookie)
    for socket in (before, during):
        await socket.send_json_to(chat(1))
        assert text_of(await receive_until(socket, "done", 1, within=20), 1) == "Still here."
    # A resume still starts and replays the stored text; only live delivery is degraded.
    group_errors = layer_errors("group_add")
    answer = await streaming_answer(user, "abc")
    await resume(during, answer, after=1)
    assert await during.receive_json_from() == {"type": "delta", "id": "r", "content": "bc"}
    assert layer_errors("group_add") == group_errors + 1
    assert layer_errors("receive") > receive_errors

    # Redis comes back: live deltas reach a resume again, on the sockets that lived through it.
    redis_layer.start()
    other = await streaming_answer(user, "xyz")
    await resume(before, other, after=3)
    await asyncio.sleep(RETRY_MAX + 0.5)  # the socket's next read of its channel succeeds
    event = {"type": live.LIVE_DELTA, "message": other.id.hex, "offset": 3, "text": "!"}
    await live.publish(other.id, event)
    assert await before.receive_json_from(timeout=5) == {"type": "delta", "id": "r", "content": "!"}
    for socket in (before, during):
        await socket.disconnect()
