"""The WebSocket consumer, driven through the real ASGI router (origin check, auth stack)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import AsyncClient, override_settings
from django.utils import timezone

from copilotedge import lifecycle
from copilotedge.conversations import live as transcript_live
from copilotedge.conversations import transcript
from copilotedge.models import ApiKey, Conversation, Message, UsageRecord
from tests.asgi import application
from tests.helpers import OPENAI_URL, ORIGIN, WS_PATH, WordStream, stream_response

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_chats")]

WORDS = [f"word{i} " for i in range(30)]
ON_REDIS = "channels_redis" in settings.CHANNEL_LAYERS["default"]["BACKEND"]
FULL = "".join(WORDS)


def communicator(*headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, WS_PATH, headers=[ORIGIN, *headers])


@pytest.fixture
async def ws(session_cookie: bytes) -> AsyncIterator[WebsocketCommunicator]:
    """A connected, session-authenticated socket (``ready`` already read)."""
    socket = communicator((b"cookie", session_cookie))
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from())["type"] == "ready"
    yield socket
    await socket.disconnect()


def slow_upstream(upstream: Any, *streams: WordStream) -> Any:
    """Answer each upstream request with the next stream (the last one repeats)."""
    queue = list(streams)

    def respond(request: Any) -> Any:
        return stream_response(queue.pop(0) if len(queue) > 1 else queue[0])

    return upstream.post(OPENAI_URL).mock(side_effect=respond)


def chat(chat_id: str | int, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"type": "chat", "id": chat_id, "messages": [{"role": "user", "content": text}], **extra}


async def receive_until(
    socket: WebsocketCommunicator, kind: str, chat_id: Any = None, within: float = 5
) -> list[dict[str, Any]]:
    """Messages up to and including the first of type ``kind`` (for ``chat_id``, if given)."""
    seen = []
    async with asyncio.timeout(within):
        while True:
            message = await socket.receive_json_from(timeout=within)
            seen.append(message)
            if message["type"] == kind and (chat_id is None or message.get("id") == chat_id):
                return seen


def text_of(messages: list[dict[str, Any]], chat_id: Any) -> str:
    return "".join(m["content"] for m in messages if m["type"] == "delta" and m["id"] == chat_id)


async def settle() -> None:
    await lifecycle.drain()


# Authentication and the handshake ---------------------------------------------------------


async def test_a_session_user_is_ready_at_connect(session_cookie, user):
    socket = communicator((b"cookie", session_cookie))
    connected, _ = await socket.connect()
    assert connected
    assert await socket.receive_json_from() == {"type": "ready", "user": user.username}
    await socket.disconnect()


async def test_a_session_user_chats_and_the_answer_streams(ws, upstream, user):
    slow_upstream(upstream, WordStream(WORDS[:5], delay=0))
    await ws.send_json_to(chat("a", "Count to five"))
    messages = await receive_until(ws, "done", "a")
    start = messages[0]
    assert start["type"] == "start" and start["id"] == "a"
    conversation = await Conversation.objects.aget(pk=start["conversation_id"])
    assert conversation.user_id == user.pk and conversation.title == "Count to five"
    assert text_of(messages, "a") == "".join(WORDS[:5])
    done = messages[-1]
    assert done["finish_reason"] == "stop"
    assert set(done["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    # Saved before "done" was sent: a client fetching the conversation now sees it final.
    row = await Message.objects.aget(pk=start["message_id"])
    assert (row.status, row.content) == ("complete", "".join(WORDS[:5]))
    await settle()
    record = await UsageRecord.objects.aget()
    assert (record.protocol, record.outcome, record.conversation_id) == (
        "websocket", "ok", conversation.id,
    )  # fmt: skip


@pytest.mark.skipif(not ON_REDIS, reason="only a Redis channel layer reads with a timeout")
async def test_an_idle_socket_outlives_redis_py_8s_read_timeout(ws, upstream):
    # The consumer blocks reading the channel layer; redis-py 8 gives up any read after
    # 5 s unless the host says otherwise (copilotedge.W031), which used to end the socket.
    slow_upstream(upstream, WordStream(WORDS[:3], delay=0))
    await asyncio.sleep(6)
    await ws.send_json_to(chat("a"))
    messages = await receive_until(ws, "done", "a")
    assert text_of(messages, "a") == "".join(WORDS[:3])


async def test_an_api_key_client_is_ready_after_the_auth_message(api_key, upstream, user):
    key, raw = api_key
    slow_upstream(upstream, WordStream(["Hi!"], delay=0))
    socket = communicator()
    connected, _ = await socket.connect()
    assert connected
    await socket.send_json_to(chat("early"))
    refused = await socket.receive_json_from()
    assert refused["type"] == "error" and refused["error"]["code"] == "authentication_required"
    await socket.send_json_to({"type": "auth", "token": raw})
    assert await socket.receive_json_from() == {"type": "ready", "user": user.username}
    await socket.send_json_to(chat(1))
    messages = await receive_until(socket, "done", 1)
    assert text_of(messages, 1) == "Hi!"
    await socket.disconnect()
    await settle()
    record = await UsageRecord.objects.aget()
    assert (record.protocol, record.api_key_id, record.user_id) == ("websocket", key.pk, user.pk)
    conversation = await Conversation.objects.aget()
    assert conversation.api_key_id == key.pk


async def test_a_wrong_api_key_closes_the_socket_with_4401(db):
    socket = communicator()
    await socket.connect()
    await socket.send_json_to({"type": "auth", "token": "ce_not-a-key"})
    error = await socket.receive_json_from()
    assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4401}


@override_settings(COPILOTEDGE_WS_AUTH_TIMEOUT=0.2)
async def test_no_auth_in_time_closes_the_socket_with_4401(db):
    socket = communicator()
    connected, _ = await socket.connect()
    assert connected
    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from() == {"type": "pong"}  # allowed before auth
    assert await socket.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}


@pytest.mark.parametrize("origin", [b"http://evil.example", None])
async def test_a_foreign_or_missing_origin_is_refused(session_cookie, origin):
    headers = [(b"cookie", session_cookie)]
    if origin is not None:
        headers.append((b"origin", origin))
    socket = WebsocketCommunicator(application, WS_PATH, headers=headers)
    connected, _ = await socket.connect()
    assert not connected


# Chats ------------------------------------------------------------------------------------


async def test_several_chats_run_at_once_on_one_socket(ws, upstream):
    slow_upstream(
        upstream, WordStream(["a1 ", "a2 ", "a3 "], 0.05), WordStream(["b1 ", "b2 "], 0.05)
    )
    await ws.send_json_to(chat("A", "first"))
    await ws.send_json_to(chat("B", "second"))
    messages = await receive_until(ws, "done", "A")
    if not any(m["type"] == "done" and m["id"] == "B" for m in messages):
        messages += await receive_until(ws, "done", "B")
    assert text_of(messages, "A") == "a1 a2 a3 "
    assert text_of(messages, "B") == "b1 b2 "
    order = [m["id"] for m in messages if m["type"] == "delta"]
    assert order.index("B") < len(order) - 1 - order[::-1].index("A")  # interleaved
    starts = [m for m in messages if m["type"] == "start"]
    assert len({m["conversation_id"] for m in starts}) == 2


@override_settings(COPILOTEDGE_WS_MAX_CHATS=1)
async def test_a_socket_runs_at_most_max_chats_at_once(ws, upstream):
    slow_upstream(upstream, WordStream(WORDS[:4], 0.05))
    await ws.send_json_to(chat("one"))
    await ws.send_json_to(chat("two"))
    messages = await receive_until(ws, "error", "two")
    assert messages[-1]["error"]["code"] == "too_many_chats"
    await ws.send_json_to(chat("one"))  # the same id while it runs
    messages = await receive_until(ws, "error", "one")
    assert messages[-1]["error"]["code"] == "duplicate_id"
    await receive_until(ws, "done", "one")


async def test_a_chat_continues_its_conversation(ws, upstream):
    route = slow_upstream(upstream, WordStream(["Paris."], 0), WordStream(["Lyon."], 0))
    await ws.send_json_to(chat(1, "Capital?"))
    conversation_id = (await receive_until(ws, "done", 1))[0]["conversation_id"]
    await ws.send_json_to(chat(2, "Second city?", conversation_id=conversation_id))
    messages = await receive_until(ws, "done", 2)
    assert messages[0]["conversation_id"] == conversation_id
    sent = json.loads(route.calls[-1].request.content)["messages"]
    assert [m["content"] for m in sent] == ["Capital?", "Paris.", "Second city?"]


async def test_a_chat_in_another_users_conversation_is_an_error(ws, upstream, other_user):
    route = slow_upstream(upstream, WordStream(["x"], 0))
    theirs = await Conversation.objects.acreate(user=other_user)
    await ws.send_json_to(chat(7, conversation_id=str(theirs.id)))
    error = (await receive_until(ws, "error", 7))[-1]
    assert error["error"]["code"] == "conversation_not_found"
    assert not route.called


async def test_an_upstream_failure_is_an_error_for_that_chat(ws, upstream):
    upstream.post(OPENAI_URL).respond(429, json={"errors": [{"code": 3040}]})
    await ws.send_json_to(chat("x"))
    messages = await receive_until(ws, "error", "x")
    assert messages[-1]["error"]["code"] == "upstream_capacity"
    await settle()
    row = await Message.objects.aget(pk=messages[0]["message_id"])
    assert row.status == "error"


# Cancel and disconnect --------------------------------------------------------------------


async def test_cancel_stops_the_chat_and_its_upstream_request(ws, upstream):
    stream = WordStream(WORDS, delay=0.05)
    slow_upstream(upstream, stream)
    await ws.send_json_to(chat("c"))
    messages = await receive_until(ws, "delta", "c")
    await ws.send_json_to({"type": "cancel", "id": "c"})
    messages += await receive_until(ws, "cancelled", "c")
    row = await Message.objects.aget(pk=messages[0]["message_id"])
    assert row.status == "cancelled"  # saved before "cancelled" was sent
    await asyncio.wait_for(stream.closed.wait(), 2)
    assert not stream.finished and stream.sent < len(WORDS)
    await settle()
    assert row.content and FULL.startswith(row.content) and row.content != FULL
    assert text_of(messages, "c") == row.content[: len(text_of(messages, "c"))]
    assert (await UsageRecord.objects.aget()).outcome == "cancelled"
    await ws.send_json_to({"type": "cancel", "id": "c"})
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["error"]["code"] == "not_found"


async def test_a_dropped_socket_does_not_stop_its_chat(session_cookie, upstream):
    stream = WordStream(WORDS[:10], delay=0.03)
    slow_upstream(upstream, stream)
    socket = communicator((b"cookie", session_cookie))
    await socket.connect()
    await socket.receive_json_from()
    await socket.send_json_to(chat("d"))
    start = (await receive_until(socket, "delta", "d"))[0]
    await socket.disconnect()
    await settle()
    row = await Message.objects.aget(pk=start["message_id"])
    assert (row.status, row.content) == ("complete", "".join(WORDS[:10]))
    assert stream.finished


async def test_a_send_failing_on_a_closed_socket_leaves_the_chat_running(session_cookie, upstream):
    # The server may notice the close before the consumer gets its disconnect (daphne
    # then raises on send): the chat must go on detached, not fail.
    closed = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def send_or_fail(message: dict[str, Any]) -> None:
            if closed.is_set() and message["type"] == "websocket.send":
                raise RuntimeError("Attempt to send on a closed protocol")
            await send(message)

        await application(scope, receive, send_or_fail)

    stream = WordStream(WORDS[:10], delay=0.03)
    slow_upstream(upstream, stream)
    socket = WebsocketCommunicator(app, WS_PATH, headers=[ORIGIN, (b"cookie", session_cookie)])
    await socket.connect()
    await socket.receive_json_from()
    await socket.send_json_to(chat("gone"))
    start = (await receive_until(socket, "delta", "gone"))[0]
    closed.set()
    await asyncio.sleep(0.1)
    await socket.disconnect()
    await settle()
    row = await Message.objects.aget(pk=start["message_id"])
    assert (row.status, row.content) == ("complete", "".join(WORDS[:10]))


@override_settings(COPILOTEDGE_WS_CANCEL_ON_DISCONNECT=True)
async def test_disconnect_can_cancel_instead(session_cookie, upstream):
    stream = WordStream(WORDS, delay=0.05)
    slow_upstream(upstream, stream)
    socket = communicator((b"cookie", session_cookie))
    await socket.connect()
    await socket.receive_json_from()
    await socket.send_json_to(chat("d"))
    start = (await receive_until(socket, "delta", "d"))[0]
    await socket.disconnect()
    await settle()
    row = await Message.objects.aget(pk=start["message_id"])
    assert row.status == "cancelled" and not stream.finished
    assert stream.closed.is_set()


@override_settings(COPILOTEDGE_WS_DETACHED_TIMEOUT=0.2)
async def test_a_detached_chat_runs_at_most_the_detached_timeout(session_cookie, upstream):
    stream = WordStream(WORDS, delay=0.05)
    slow_upstream(upstream, stream)
    socket = communicator((b"cookie", session_cookie))
    await socket.connect()
    await socket.receive_json_from()
    await socket.send_json_to(chat("d"))
    start = (await receive_until(socket, "delta", "d"))[0]
    await socket.disconnect()
    await settle()
    row = await Message.objects.aget(pk=start["message_id"])
    assert row.status == "cancelled" and 0 < len(row.content) < len(FULL)


@override_settings(COPILOTEDGE_SHUTDOWN_GRACE=0.2)
async def test_a_stop_past_its_grace_ends_a_chat_with_an_error_and_records_it(ws, upstream):
    stream = WordStream(WORDS, delay=0.1)
    slow_upstream(upstream, stream)
    await ws.send_json_to(chat("s"))
    start = (await receive_until(ws, "delta", "s"))[0]
    await lifecycle.shut_down()
    end = (await receive_until(ws, "error", "s"))[-1]
    assert end["error"] == {
        "message": "The server is shutting down; try again shortly.",
        "code": "shutting_down",
    }
    row = await Message.objects.aget(pk=start["message_id"])
    assert row.status == "incomplete" and 0 < len(row.content) < len(FULL)
    record = await UsageRecord.objects.aget()
    assert (record.outcome, record.error_code) == ("incomplete", "shutting_down")
    assert stream.closed.is_set()
    await ws.send_json_to(chat("late"))  # a new chat during the stop is refused
    refused = (await receive_until(ws, "error", "late"))[-1]
    assert refused["error"]["code"] == "shutting_down"


@override_settings(COPILOTEDGE_SHUTDOWN_GRACE=0.2)
async def test_a_stop_records_a_detached_chat_too(session_cookie, upstream):
    slow_upstream(upstream, WordStream(WORDS, delay=0.1))
    socket = communicator((b"cookie", session_cookie))
    await socket.connect()
    await socket.receive_json_from()
    await socket.send_json_to(chat("d"))
    start = (await receive_until(socket, "delta", "d"))[0]
    await socket.disconnect()
    await lifecycle.shut_down()
    row = await Message.objects.aget(pk=start["message_id"])
    assert row.status == "incomplete" and 0 < len(row.content) < len(FULL)
    record = await UsageRecord.objects.aget()
    assert (record.outcome, record.error_code) == ("incomplete", "shutting_down")


@override_settings(COPILOTEDGE_FLUSH_INTERVAL=0.05)
async def test_deleting_the_conversation_stops_its_answer(ws, upstream, user):
    stream = WordStream(WORDS, delay=0.05)
    slow_upstream(upstream, stream)
    await ws.send_json_to(chat("del"))
    start = (await receive_until(ws, "delta", "del"))[0]
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.delete(f"/copilotedge/conversations/{start['conversation_id']}/")
    assert response.status_code == 204
    await receive_until(ws, "cancelled", "del")
    await asyncio.wait_for(stream.closed.wait(), 2)
    await settle()
    assert not stream.finished
    assert not await Message.objects.filter(conversation_id=start["conversation_id"]).aexists()
    record = await UsageRecord.objects.aget()
    assert (record.outcome, record.conversation_id) == ("cancelled", None)


# Resume -----------------------------------------------------------------------------------


async def test_resume_mid_stream_gets_the_rest_exactly_once(session_cookie, upstream):
    slow_upstream(upstream, WordStream(WORDS, delay=0.03))
    first = communicator((b"cookie", session_cookie))
    await first.connect()
    await first.receive_json_from()
    await first.send_json_to(chat("r"))
    got = await receive_until(first, "delta", "r")
    got += await receive_until(first, "delta", "r")
    start = got[0]
    before = text_of(got, "r")
    await first.disconnect()
    await asyncio.sleep(0.2)  # the answer grows while no one listens

    second = communicator((b"cookie", session_cookie))
    await second.connect()
    await second.receive_json_from()
    resume = {"type": "resume", "id": "again", "conversation_id": start["conversation_id"]}
    await second.send_json_to({**resume, "after": len(before)})
    messages = await receive_until(second, "done", "again")
    assert messages[0] == {
        "type": "start",
        "id": "again",
        "conversation_id": start["conversation_id"],
        "message_id": start["message_id"],
    }
    deltas = [m for m in messages if m["type"] == "delta"]
    assert len(deltas) > 1, "no live delta after the stored text"
    assert before + text_of(messages, "again") == FULL
    assert messages[-1]["finish_reason"] == "stop"
    await second.disconnect()


async def test_an_answer_publishes_live_deltas_only_once_a_resumer_watches(
    ws, upstream, monkeypatch
):
    published: list[dict[str, Any]] = []
    real_publish = transcript.publish

    async def recording(message_id: Any, event: dict[str, Any]) -> None:
        published.append(event)
        await real_publish(message_id, event)

    monkeypatch.setattr(transcript, "publish", recording)
    slow_upstream(upstream, WordStream(WORDS, delay=0.03))
    await ws.send_json_to(chat("w"))
    start = (await receive_until(ws, "delta", "w"))[0]
    await asyncio.sleep(0.4)  # two live intervals: nobody resumes, nothing is published
    assert published == []

    await transcript.awatch(uuid.UUID(start["message_id"]))
    await receive_until(ws, "done", "w")
    await settle()
    kinds = [event["type"] for event in published]
    assert kinds[0] == transcript_live.LIVE_DELTA
    assert kinds.count(transcript_live.LIVE_DELTA) > 1  # every interval from the watch on
    assert kinds[-1] == transcript_live.LIVE_END


async def test_resume_of_a_finished_answer_replays_it_after_the_offset(ws, upstream):
    slow_upstream(upstream, WordStream(WORDS[:3], delay=0))
    await ws.send_json_to(chat(1))
    conversation_id = (await receive_until(ws, "done", 1))[0]["conversation_id"]
    await settle()
    await ws.send_json_to({"type": "resume", "id": 2, "conversation_id": conversation_id})
    messages = await receive_until(ws, "done", 2)
    assert text_of(messages, 2) == "".join(WORDS[:3])
    await ws.send_json_to(
        {"type": "resume", "id": 3, "conversation_id": conversation_id, "after": 6}
    )
    assert text_of(await receive_until(ws, "done", 3), 3) == "".join(WORDS[:3])[6:]


async def test_a_resume_without_an_id_is_answered_under_the_conversation_id(ws, upstream):
    slow_upstream(upstream, WordStream(WORDS[:2], delay=0))
    await ws.send_json_to(chat(1))
    conversation_id = (await receive_until(ws, "done", 1))[0]["conversation_id"]
    await settle()
    await ws.send_json_to({"type": "resume", "conversation_id": conversation_id, "after": 0})
    messages = await receive_until(ws, "done", conversation_id)
    assert text_of(messages, conversation_id) == "".join(WORDS[:2])


async def test_resume_of_another_users_conversation_is_not_found(ws, other_user):
    theirs = await Conversation.objects.acreate(user=other_user)
    await Message.objects.acreate(
        conversation=theirs, sequence=0, role="assistant", content="secret"
    )
    await ws.send_json_to({"type": "resume", "id": 1, "conversation_id": str(theirs.id)})
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["error"]["code"] == "conversation_not_found"


async def test_cancel_of_a_resumed_answer_stops_it_where_it_runs(session_cookie, upstream):
    stream = WordStream(WORDS, delay=0.05)
    slow_upstream(upstream, stream)
    first = communicator((b"cookie", session_cookie))
    await first.connect()
    await first.receive_json_from()
    await first.send_json_to(chat("gen"))
    start = (await receive_until(first, "delta", "gen"))[0]
    await first.disconnect()

    second = communicator((b"cookie", session_cookie))
    await second.connect()
    await second.receive_json_from()
    await second.send_json_to(
        {"type": "resume", "id": "res", "conversation_id": start["conversation_id"]}
    )
    await receive_until(second, "delta", "res")
    await second.send_json_to({"type": "cancel", "id": "res"})
    await receive_until(second, "cancelled", "res")
    await asyncio.wait_for(stream.closed.wait(), 2)
    await settle()
    row = await Message.objects.aget(pk=start["message_id"])
    assert row.status == "cancelled" and not stream.finished
    await second.disconnect()


# Malformed input and heartbeat ------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"type": "shout"}', "unknown_type"),
        ('{"no": "type"}', "unknown_type"),
        ('{"type": "chat", "messages": []}', "invalid_request"),
        ('{"type": "chat", "id": 1, "messages": "hi"}', "invalid_request"),
        ('{"type": "chat", "id": 1, "messages": [{"role": "user", "content": "x"}], '
         '"params": {"temperature": 99}}', "invalid_request"),
        ('{"type": "chat", "id": 1, "model": "@cf/none", '
         '"messages": [{"role": "user", "content": "x"}]}', "model_not_found"),
        ('{"type": "resume", "id": 1}', "invalid_request"),
        ('{"type": "resume", "id": 1, "conversation_id": "x"}', "invalid_request"),
        ('{"type": "cancel"}', "invalid_request"),
    ],
)  # fmt: skip
async def test_malformed_input_is_an_error_and_the_socket_stays_open(ws, frame, code):
    await ws.send_to(text_data=frame)
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["error"]["code"] == code
    assert error["error"]["message"]
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from() == {"type": "pong"}


async def test_a_binary_frame_is_an_error(ws):
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await ws.receive_json_from())["error"]["code"] == "invalid_json"


@override_settings(COPILOTEDGE_WS_MAX_MESSAGE_BYTES=100)
async def test_an_oversized_message_is_refused(ws):
    await ws.send_json_to(chat(1, "x" * 200))
    error = await ws.receive_json_from()
    assert error["error"]["code"] == "request_too_large"
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from() == {"type": "pong"}


async def test_an_error_echoes_the_clients_id_and_names_the_field(ws):
    await ws.send_json_to({"type": "chat", "id": "q", "messages": [{"role": "robot"}]})
    error = await ws.receive_json_from()
    assert error["id"] == "q"
    assert "messages[0].role" in error["error"]["message"]


async def test_a_socket_can_resume_and_stop_an_answer_streamed_over_http(ws, upstream, auth):
    stream = WordStream(WORDS, delay=0.05)
    slow_upstream(upstream, stream)
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions", body, content_type="application/json", headers=auth
    )
    conversation_id = response["X-CopilotEdge-Conversation"]
    frames: list[bytes] = []

    async def read_http() -> None:
        async for frame in response.streaming_content:
            frames.append(frame)

    reader = asyncio.create_task(read_http())
    await ws.send_json_to({"type": "resume", "id": "r", "conversation_id": conversation_id})
    messages = await receive_until(ws, "delta", "r")
    await ws.send_json_to({"type": "cancel", "id": "r"})
    messages += await receive_until(ws, "cancelled", "r")
    done, _ = await asyncio.wait({reader}, timeout=3)
    assert done, "the HTTP stream went on after its answer was stopped"
    # It says why it ended, as a mid-stream failure would, rather than just breaking off.
    body = b"".join(frames).decode()
    assert body.endswith("data: [DONE]\n\n")
    last = json.loads(body.split("data: ")[-2])
    assert last["error"]["code"] == "cancelled"
    await settle()
    row = await Message.objects.aget(conversation_id=conversation_id, role="assistant")
    assert row.status == "cancelled" and FULL.startswith(row.content)
    assert text_of(messages, "r") == row.content


# Rate limits --------------------------------------------------------------------------------


@override_settings(COPILOTEDGE_RATE_LIMIT="2/m")
async def test_chats_count_against_the_request_rate_limit(ws, upstream):
    slow_upstream(upstream, WordStream(["ok"], delay=0))
    for chat_id in (1, 2):
        await ws.send_json_to(chat(chat_id))
        await receive_until(ws, "done", chat_id)
    await ws.send_json_to(chat(3))
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["id"] == 3
    assert error["error"]["code"] == "rate_limit_exceeded"
    await settle()
    assert await Conversation.objects.acount() == 2


@override_settings(COPILOTEDGE_RATE_LIMIT="2/m")
@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ping"},
        {"type": "cancel", "id": 1},
        {"type": "resume", "conversation_id": str(uuid.uuid4())},
        {"type": "nonsense"},
    ],
    ids=lambda frame: frame["type"],
)
async def test_every_frame_counts_against_the_request_limit(ws, frame):
    for _ in range(2):
        await ws.send_json_to(frame)
        assert (await ws.receive_json_from()).get("error", {}).get("code") != "rate_limit_exceeded"
    for _ in range(50):
        await ws.send_json_to(frame)
        refused = await ws.receive_json_from()
        assert refused["type"] == "error"
        assert refused["error"]["code"] == "rate_limit_exceeded"
    await ws.send_to(text_data="not json")
    assert (await ws.receive_json_from())["error"]["code"] == "rate_limit_exceeded"


@override_settings(COPILOTEDGE_RATE_LIMIT="2/m")
async def test_auth_attempts_count_against_the_address(api_key):
    _, raw = api_key
    codes = []
    for token in ("ce_guess1", "ce_guess2", raw):
        socket = communicator()
        await socket.connect()
        await socket.send_json_to({"type": "auth", "token": token})
        codes.append((await socket.receive_json_from()).get("error", {}).get("code"))
        await socket.disconnect()
    assert codes == ["invalid_api_key", "invalid_api_key", "rate_limit_exceeded"]


@override_settings(COPILOTEDGE_TOKEN_RATE_LIMIT="10/m")
async def test_a_turn_over_the_token_limit_is_refused_and_stores_nothing(ws, upstream):
    route = slow_upstream(upstream, WordStream(["ok"], delay=0))
    await ws.send_json_to(chat("big", "word " * 200))
    error = (await receive_until(ws, "error", "big"))[-1]
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert not route.called
    assert await Message.objects.acount() == 0


# Credentials that end while the socket is open -------------------------------------------------


async def key_socket(raw: str) -> WebsocketCommunicator:
    socket = communicator()
    connected, _ = await socket.connect()
    assert connected
    await socket.send_json_to({"type": "auth", "token": raw})
    assert (await socket.receive_json_from())["type"] == "ready"
    return socket


async def assert_shut_out(socket: WebsocketCommunicator, frame: dict[str, Any]) -> None:
    await socket.send_json_to(frame)
    error = await socket.receive_json_from()
    assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4401}


@pytest.mark.parametrize("change", ["revoked", "expired", "deactivated", "deleted"])
@pytest.mark.parametrize(
    "frame",
    [chat(2), {"type": "resume", "conversation_id": str(uuid.uuid4())}],
    ids=["chat", "resume"],
)
async def test_a_key_that_ends_ends_its_socket(api_key, upstream, user, change, frame):
    key, raw = api_key
    route = slow_upstream(upstream, WordStream(["ok"], delay=0))
    socket = await key_socket(raw)
    await socket.send_json_to(chat(1))
    await receive_until(socket, "done", 1)
    now = timezone.now()
    if change == "revoked":
        key.revoked_at = now
        await key.asave()
    elif change == "expired":
        key.expires_at = now
        await key.asave()
    elif change == "deleted":
        await key.adelete()
    else:
        user.is_active = False
        await user.asave()
    await assert_shut_out(socket, frame)
    assert route.call_count == 1


@override_settings(COPILOTEDGE_API_KEY_CACHE_SECONDS=0)
async def test_a_change_made_by_another_process_is_seen_too(api_key, upstream):
    key, raw = api_key
    socket = await key_socket(raw)
    # A queryset update sends no signal: as if another process had revoked the key.
    await ApiKey.objects.filter(pk=key.pk).aupdate(revoked_at=timezone.now())
    await assert_shut_out(socket, chat(1))


async def test_a_logged_out_session_ends_its_socket(user, upstream):
    client = AsyncClient()
    await client.aforce_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    socket = communicator((b"cookie", cookie))
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from())["type"] == "ready"
    await client.alogout()
    await socket.send_json_to(chat(1))
    error = await socket.receive_json_from()
    assert error["type"] == "error" and error["id"] == 1
    assert error["error"]["code"] == "session_expired"
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4401}


async def test_a_deactivated_session_user_is_shut_out(ws, user, upstream):
    user.is_active = False
    await user.asave()
    await ws.send_json_to(chat(1))
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["error"]["code"] == "session_expired"
    assert await ws.receive_output() == {"type": "websocket.close", "code": 4401}


async def test_changed_models_and_limits_apply_from_the_next_chat(api_key, upstream):
    key, raw = api_key
    slow_upstream(upstream, WordStream(["ok"], delay=0))
    socket = await key_socket(raw)
    await socket.send_json_to(chat(1))
    await receive_until(socket, "done", 1)
    key.allowed_models = ["@cf/some/other-model"]
    await key.asave()
    await socket.send_json_to(chat(2))
    refused = (await receive_until(socket, "error", 2))[-1]
    assert refused["error"]["code"] == "model_not_allowed"
    key.allowed_models = []
    key.tokens_per_minute = 10
    await key.asave()
    await socket.send_json_to(chat(3))
    limited = (await receive_until(socket, "error", 3))[-1]
    assert limited["error"]["code"] == "rate_limit_exceeded"
    assert "limit of 10 per" in limited["error"]["message"]
    await socket.disconnect()
