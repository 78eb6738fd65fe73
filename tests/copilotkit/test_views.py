"""CopilotKit's AG-UI endpoints through Django's AsyncClient, upstream mocked with respx."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from django.test import AsyncClient, override_settings

from copilotedge import lifecycle
from copilotedge.copilotkit.agui import runs as agui_runs
from copilotedge.models import ApiKey, Conversation, Message, UsageRecord
from tests.helpers import OPENAI_URL, openai_chunk, sse_body

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("agui_drain")]

BASE = "/copilotedge/copilotkit"


def run_input(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "threadId": extra.pop("threadId", "thread-1"),
        "runId": extra.pop("runId", "run-1"),
        "state": {},
        "messages": list(messages) or [{"id": "u1", "role": "user", "content": "Hello"}],
        "tools": [],
        "context": [],
        "forwardedProps": {},
        **extra,
    }


async def events_of(response: Any) -> list[dict[str, Any]]:
    body = b"".join([chunk async for chunk in response.streaming_content])
    return [
        json.loads(line[len("data: ") :])
        for line in body.decode().splitlines()
        if line.startswith("data: ")
    ]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def upstream_json(upstream: Any, call: int = -1) -> dict[str, Any]:
    return json.loads(upstream.calls[call].request.content)


async def post(path: str, body: Any, headers: dict[str, str]) -> Any:
    return await AsyncClient().post(
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


def text_stream(*texts: str, usage_counts: tuple[int, int] = (7, 3)) -> httpx.Response:
    frames = [openai_chunk(text) for text in texts]
    frames.append(openai_chunk(finish_reason="stop"))
    prompt, completion = usage_counts
    frames.append(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )
    return httpx.Response(200, content=sse_body(*frames))


async def test_info_lists_the_configured_agents(auth):
    agents = {
        "default": {"name": "default", "description": "General help."},
        "coder": {"name": "Coder", "description": "Writes code.", "model": "@cf/qwen/qwq-32b"},
    }
    with override_settings(COPILOTEDGE_AGENTS=agents):
        response = await AsyncClient().get(f"{BASE}/info", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["version"]
    assert body["agents"] == {
        "default": {
            "name": "default",
            "description": "General help.",
            "className": "CopilotEdgeAgent",
        },
        "coder": {"name": "Coder", "description": "Writes code.", "className": "CopilotEdgeAgent"},
    }


async def test_info_requires_authentication(db):
    response = await AsyncClient().get(f"{BASE}/info")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_run_streams_a_text_answer_and_records_agui_usage(auth, upstream, api_key):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("Hel", "lo!"))
    response = await post(f"{BASE}/agent/default/run", run_input(), auth)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = await events_of(response)
    assert types(events) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert events[0]["threadId"] == "thread-1" and events[0]["runId"] == "run-1"
    message_id = events[1]["messageId"]
    assert events[1]["role"] == "assistant"
    assert [e["delta"] for e in events[2:4]] == ["Hel", "lo!"]
    assert {e["messageId"] for e in events[1:5]} == {message_id}
    finished = events[-1]
    assert finished["result"]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
    }
    assert finished["usage"][0]["inputTokens"] == 7 and finished["usage"][0]["outputTokens"] == 3
    await lifecycle.drain()
    record = await UsageRecord.objects.aget()
    assert record.protocol == "agui"
    assert record.api_key_id == api_key[0].pk
    assert (record.prompt_tokens, record.completion_tokens, record.outcome) == (7, 3, "ok")
    sent = upstream_json(upstream)
    assert sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "Hello"}]


async def test_agent_prompt_context_and_system_messages_reach_the_model(auth, upstream):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("ok"))
    agents = {
        "default": {
            "name": "default",
            "description": "d",
            "system_prompt": "You are terse.",
            "params": {"temperature": 0.2},
        }
    }
    body = run_input(
        {"id": "s1", "role": "system", "content": "Answer in French."},
        {"id": "d1", "role": "developer", "content": "No emoji."},
        {
            "id": "u1",
            "role": "user",
            "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
        },
        context=[{"description": "The user's name", "value": "Ada"}],
    )
    with override_settings(COPILOTEDGE_AGENTS=agents):
        response = await post(f"{BASE}/agent/default/run", body, auth)
        await events_of(response)
    sent = upstream_json(upstream)
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "system", "system", "system", "user"]
    assert sent["messages"][0]["content"] == "You are terse."
    assert (
        "The user's name" in sent["messages"][1]["content"]
        and "Ada" in sent["messages"][1]["content"]
    )
    assert sent["messages"][2]["content"] == "Answer in French."
    assert sent["messages"][3]["content"] == "No emoji."
    assert sent["messages"][4]["content"] == "Hi there"
    assert sent["temperature"] == 0.2


async def test_a_model_tool_call_becomes_tool_call_events(auth, upstream):
    def call_chunk(**call: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}

    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(
            200,
            content=sse_body(
                call_chunk(
                    index=0,
                    id="call_1",
                    type="function",
                    function={"name": "get_weather", "arguments": ""},
                ),
                call_chunk(index=0, function={"arguments": '{"city":'}),
                call_chunk(index=0, function={"arguments": '"Paris"}'}),
                openai_chunk(finish_reason="tool_calls"),
            ),
        )
    )
    tool = {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    response = await post(f"{BASE}/agent/default/run", run_input(tools=[tool]), auth)
    events = await events_of(response)
    assert types(events) == [
        "RUN_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "RUN_FINISHED",
    ]
    start = events[1]
    assert start["toolCallId"] == "call_1" and start["toolCallName"] == "get_weather"
    assert "".join(e["delta"] for e in events[2:4]) == '{"city":"Paris"}'
    assert events[4]["toolCallId"] == "call_1"
    sent = upstream_json(upstream)
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city.",
                "parameters": tool["parameters"],
            },
        }
    ]


async def test_tool_results_go_back_upstream_with_the_assistant_call(auth, upstream):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("It is sunny."))
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    body = run_input(
        {"id": "u1", "role": "user", "content": "Weather in Paris?"},
        {"id": "a1", "role": "assistant", "toolCalls": [call]},
        {"id": "t1", "role": "tool", "toolCallId": "call_1", "content": "Sunny, 21C"},
    )
    response = await post(f"{BASE}/agent/default/run", body, auth)
    assert types(await events_of(response))[-1] == "RUN_FINISHED"
    sent = upstream_json(upstream)["messages"]
    assert sent[1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert sent[2] == {"role": "tool", "content": "Sunny, 21C", "tool_call_id": "call_1"}


async def test_an_upstream_refusal_is_a_run_error_event(auth, upstream):
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(
            500, json={"success": False, "errors": [{"code": 3043, "message": "boom"}]}
        )
    )
    response = await post(f"{BASE}/agent/default/run", run_input(), auth)
    assert response.status_code == 200
    events = await events_of(response)
    assert types(events) == ["RUN_STARTED", "RUN_ERROR"]
    assert events[1]["code"] == "upstream_error"
    await lifecycle.drain()
    record = await UsageRecord.objects.aget()
    assert (record.protocol, record.outcome) == ("agui", "error")


async def test_a_stream_cut_midway_is_a_run_error_not_a_finish(auth, upstream):
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(200, content=sse_body(openai_chunk("partial"), done=False))
    )
    response = await post(f"{BASE}/agent/default/run", run_input(), auth)
    events = await events_of(response)
    assert types(events) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "RUN_ERROR",
    ]
    assert events[-1]["code"] == "upstream_incomplete"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"runId": "r", "messages": []}, "threadId"),
        ({"threadId": "t", "runId": "r", "messages": "hello"}, "messages"),
        (
            {
                "threadId": "t",
                "runId": "r",
                "messages": [{"id": "1", "role": "wizard", "content": "x"}],
            },
            "messages[0]",
        ),
        (
            {"threadId": "t", "runId": "r", "messages": [{"role": "user", "content": "x"}]},
            "messages[0].user.id",
        ),
        (
            {"threadId": "t", "runId": "r", "messages": [], "tools": [{"name": "x"}]},
            "tools[0].description",
        ),
        ([1, 2], None),
    ],
)
async def test_malformed_run_input_is_a_400_naming_the_field(auth, body, param):
    response = await post(f"{BASE}/agent/default/run", body, auth)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


async def test_non_text_content_parts_and_empty_conversations_are_refused(auth):
    image = {"type": "image", "source": {"type": "url", "value": "https://example.com/a.png"}}
    response = await post(
        f"{BASE}/agent/default/run",
        run_input({"id": "u", "role": "user", "content": [image]}),
        auth,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0]"
    response = await post(f"{BASE}/agent/default/run", {**run_input(), "messages": []}, auth)
    assert response.status_code == 400


async def test_unknown_agent_is_a_404(auth):
    response = await post(f"{BASE}/agent/nobody/run", run_input(), auth)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "agent_not_found"


async def test_bad_json_and_wrong_method_are_4xx(auth):
    response = await AsyncClient().post(
        f"{BASE}/agent/default/run", data="{nope", content_type="application/json", headers=auth
    )
    assert response.status_code == 400
    response = await AsyncClient().get(f"{BASE}/agent/default/run", headers=auth)
    assert response.status_code == 405


async def test_single_route_envelope_info_and_run(auth, upstream):
    response = await post(BASE, {"method": "info"}, auth)
    assert response.status_code == 200
    assert "default" in response.json()["agents"]
    upstream.post(OPENAI_URL).mock(return_value=text_stream("Hi"))
    envelope = {"method": "agent/run", "params": {"agentId": "default"}, "body": run_input()}
    response = await post(BASE, envelope, auth)
    assert types(await events_of(response))[0] == "RUN_STARTED"
    assert upstream.calls.call_count == 1


@pytest.mark.parametrize(
    ("envelope", "param"),
    [
        ({"method": "agent/dance"}, "method"),
        ({"method": "agent/run", "params": "x"}, "params"),
        ({"method": "agent/run", "params": {}}, "params.agentId"),
        ({"method": "agent/stop", "params": {"agentId": "default"}}, "params.threadId"),
        ({"hello": 1}, "method"),
    ],
)
async def test_single_route_bad_envelopes_are_400(auth, envelope, param):
    response = await post(BASE, envelope, auth)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_connect_replays_the_callers_stored_thread(auth, user, other_user):
    conversation = await Conversation.objects.acreate(user=user, title="t")
    await Message.objects.acreate(conversation=conversation, sequence=0, role="user", content="Hi")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    await Message.objects.acreate(
        conversation=conversation, sequence=1, role="assistant", content="", tool_calls=[call]
    )
    await Message.objects.acreate(
        conversation=conversation, sequence=2, role="tool", content="done", tool_call_id="c1"
    )
    await Message.objects.acreate(
        conversation=conversation, sequence=3, role="assistant", content="Hello!"
    )
    body = run_input(threadId=str(conversation.id))
    response = await post(f"{BASE}/agent/default/connect", body, auth)
    events = await events_of(response)
    assert types(events) == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "RUN_FINISHED"]
    snapshot = events[1]["messages"]
    assert [(m["role"], m.get("content")) for m in snapshot] == [
        ("user", "Hi"),
        ("assistant", None),
        ("tool", "done"),
        ("assistant", "Hello!"),
    ]
    assert snapshot[1]["toolCalls"] == [call]
    assert snapshot[2]["toolCallId"] == "c1"

    others = await Conversation.objects.acreate(user=other_user)
    await Message.objects.acreate(conversation=others, sequence=0, role="user", content="secret")
    envelope = {
        "method": "agent/connect",
        "params": {"agentId": "default"},
        "body": run_input(threadId=str(others.id)),
    }
    response = await post(BASE, envelope, auth)
    assert response.status_code == 200
    assert await events_of(response) == []


async def test_stop_cancels_a_running_run(auth, upstream):
    release = asyncio.Event()

    async def slow_stream():
        yield sse_body(openai_chunk("first"), done=False)
        await release.wait()
        yield sse_body(openai_chunk("never"))

    upstream.post(OPENAI_URL).mock(return_value=httpx.Response(200, content=slow_stream()))
    response = await post(f"{BASE}/agent/default/run", run_input(threadId="t-stop"), auth)
    chunks = aiter(response.streaming_content)
    seen = b""
    while b"TEXT_MESSAGE_CONTENT" not in seen:
        seen += await anext(chunks)
    stopped = await post(f"{BASE}/agent/default/stop/t-stop", {"runId": "run-1"}, auth)
    assert stopped.status_code == 200
    assert stopped.json() == {"threadId": "t-stop", "stopped": True}
    rest = b"".join([chunk async for chunk in chunks])
    release.set()
    tail = [
        json.loads(line[6:]) for line in rest.decode().splitlines() if line.startswith("data: ")
    ]
    assert types(tail) == ["TEXT_MESSAGE_END", "RUN_FINISHED"]
    assert tail[-1]["result"]["stopped"] is True
    assert b"never" not in rest
    await lifecycle.drain()
    record = await UsageRecord.objects.aget()
    assert (record.protocol, record.outcome) == ("agui", "cancelled")


@pytest.fixture
def other_token(other_user) -> str:
    return ApiKey.create_key(other_user)[1]


async def test_stop_of_another_callers_run_does_nothing(auth, other_token):
    async with agui_runs.running("t-x", "r-x", "key:999999") as run:
        response = await post(
            BASE,
            {"method": "agent/stop", "params": {"agentId": "default", "threadId": "t-x"}},
            {"Authorization": f"Bearer {other_token}"},
        )
        assert response.json() == {"threadId": "t-x", "stopped": False}
        assert not run.stopped.is_set()


async def test_usage_row_links_an_owned_uuid_thread(auth, upstream, user):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("ok"))
    conversation = await Conversation.objects.acreate(user=user)
    response = await post(
        f"{BASE}/agent/default/run", run_input(threadId=str(conversation.id)), auth
    )
    await events_of(response)
    fresh = str(uuid.uuid4())
    response = await post(f"{BASE}/agent/default/run", run_input(threadId=fresh), auth)
    await events_of(response)
    await lifecycle.drain()
    linked = [r.conversation_id async for r in UsageRecord.objects.order_by("created_at")]
    assert linked[0] == conversation.id
    # A new thread starts the caller's conversation of that id.
    assert linked[1] == uuid.UUID(fresh)
    assert await Conversation.objects.filter(pk=linked[1], user=user).aexists()


async def test_a_thread_run_once_is_replayed_by_connect(auth, upstream, user):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("Hello there"))
    body = run_input(threadId="my-thread")  # not a UUID: mapped to one per caller
    await events_of(await post(f"{BASE}/agent/default/run", body, auth))
    await lifecycle.drain()
    events = await events_of(await post(f"{BASE}/agent/default/connect", body, auth))
    assert types(events) == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "RUN_FINISHED"]
    replayed = [(m["role"], m.get("content")) for m in events[1]["messages"]]
    assert replayed[-1] == ("assistant", "Hello there")
    assert ("user", body["messages"][-1]["content"]) in replayed


async def test_another_callers_thread_is_not_theirs_to_run(auth, upstream, other_user):
    upstream.post(OPENAI_URL).mock(return_value=text_stream("ok"))
    theirs = await Conversation.objects.acreate(user=other_user)
    response = await post(f"{BASE}/agent/default/run", run_input(threadId=str(theirs.id)), auth)
    assert response.status_code == 404 or "RUN_ERROR" in types(await events_of(response))
    assert not upstream.calls


async def test_limits_before_the_stream_are_http_errors_with_retry_after(auth, monkeypatch):
    from copilotedge.chat.turn import Turn
    from copilotedge.exceptions import RateLimited

    async def limited(self):
        raise RateLimited(retry_after=3)

    monkeypatch.setattr(Turn, "open", limited)
    response = await post(f"{BASE}/agent/default/run", run_input(), auth)
    assert response.status_code == 429
    assert response["Retry-After"] == "3"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


async def test_an_unexpected_failure_mid_run_is_still_a_run_error(auth, upstream, monkeypatch):
    from copilotedge.copilotkit.agui import run as agui_module

    upstream.post(OPENAI_URL).mock(return_value=text_stream("a", "b"))
    original = agui_module._Events.text

    def broken(self, text):
        if text == "b":
            raise RuntimeError("a bug")
        return original(self, text)

    monkeypatch.setattr(agui_module._Events, "text", broken)
    response = await post(f"{BASE}/agent/default/run", run_input(), auth)
    events = await events_of(response)
    assert types(events)[-1] == "RUN_ERROR"
    assert events[-1]["code"] == "internal_error"


async def test_stop_takes_thread_ids_with_slashes(auth):
    async with agui_runs.running("a/b", "r", "key:0"):
        response = await post(f"{BASE}/agent/default/stop/a%2Fb", {}, auth)
    assert response.status_code == 200
    assert response.json() == {"threadId": "a/b", "stopped": False}
    # CopilotKit posts no body at all when it knows no run id.
    response = await AsyncClient().post(
        f"{BASE}/agent/default/stop/a%2Fb", data="", content_type="application/json", headers=auth
    )
    assert response.status_code == 200


async def test_the_callers_token_limit_applies_to_agui_runs(auth, api_key, upstream):
    key = api_key[0]
    key.tokens_per_minute = 5
    await key.asave()
    response = await post(f"{BASE}/agent/default/run", run_input(), auth)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response["Retry-After"]) >= 1
    assert response["x-ratelimit-limit-tokens"] == "5"
    assert upstream.calls.call_count == 0
