"""The HTTP faces through Django's AsyncClient, with the upstream mocked by respx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx
from asgiref.sync import async_to_sync
from django.db import OperationalError
from django.test import AsyncClient, Client, override_settings
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from copilotedge import lifecycle
from copilotedge.chat import sse
from copilotedge.conf import settings as conf
from copilotedge.conversations import history
from copilotedge.models import ApiKey, Message, UsageRecord
from tests.helpers import (
    OPENAI_URL,
    USAGE,
    UpstreamBody,
    openai_chunk,
    respond_with,
    run_frame,
    run_url,
    sse_body,
    sse_chunks,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_usage")]

CHAT = "/copilotedge/v1/chat/completions"
MODELS = "/copilotedge/v1/models"
MODEL = "@cf/meta/llama-3.1-8b-instruct"
RUN_MODEL = "@cf/qwen/qwq-32b"
HI = [{"role": "user", "content": "Hi"}]
CSRF_SECRET = "a" * 32


async def post(
    url: str, body: Any, headers: dict[str, str] | None = None, client: AsyncClient | None = None
) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return await (client or AsyncClient()).post(
        url, data, content_type="application/json", headers=headers or {}
    )


async def read(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


def events(raw: bytes) -> list[Any]:
    """The data of each event, JSON-decoded (``[DONE]`` kept as the string)."""
    parser = sse.SSEParser()
    found = [*parser.feed(raw), *parser.close()]
    return [e.data if e.data == sse.DONE else json.loads(e.data) for e in found]


def error_of(response: Any) -> dict[str, Any]:
    return json.loads(response.content)["error"]  # type: ignore[no-any-return]


def answer_stream(*texts: str, usage: dict[str, int] | None = USAGE) -> bytes:
    frames: list[Any] = [openai_chunk(t) for t in texts]
    frames.append(openai_chunk(None, "stop"))
    if usage is not None:
        frames.append({"id": "u", "choices": [], "usage": usage})
    return sse_body(*frames)


def answer_json(text: str = "Hello", usage: dict[str, int] | None = USAGE) -> dict[str, Any]:
    body: dict[str, Any] = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


# -- chat completions: JSON -------------------------------------------------------------


async def test_a_database_without_a_free_connection_is_a_503_to_retry(
    auth: dict[str, str], upstream: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_connection(*args: Any) -> None:
        raise OperationalError("couldn't get a connection after 30.00 sec")

    monkeypatch.setattr(history, "plan_turn", no_connection)
    response = await post(CHAT, {"model": MODEL, "messages": HI}, auth)
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert error_of(response)["code"] == "database_unavailable"
    assert not upstream.calls


async def test_non_streamed_completion(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json("Hello"))
    response = await post(CHAT, {"model": MODEL, "messages": HI}, auth)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == USAGE


async def test_non_streamed_without_upstream_usage_is_estimated(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json("Hello there", usage=None))
    body = json.loads((await post(CHAT, {"messages": HI}, auth)).content)
    usage = body["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_non_streamed_tool_calls(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
    }
    upstream.post(OPENAI_URL).respond(
        200,
        json={
            "choices": [
                {"message": {"content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}
            ]
        },
    )
    body = json.loads((await post(CHAT, {"messages": HI}, auth)).content)
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [call],
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"


async def test_upstream_error_is_an_openai_error(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(
        429, json={"errors": [{"code": 3040, "message": "x"}]}, headers={"Retry-After": "7"}
    )
    for stream in (False, True):
        response = await post(CHAT, {"messages": HI, "stream": stream}, auth)
        assert response.status_code == 429
        assert response["Retry-After"] == "7"
        assert response["Content-Type"] == "application/json"
        assert error_of(response) == {
            "message": "The model provider is out of capacity; try again shortly.",
            "type": "rate_limit_error",
            "param": None,
            "code": "upstream_capacity",
        }


async def test_upstream_credentials_refused_is_502(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(401, json={"errors": [{"code": 10000}]})
    response = await post(CHAT, {"messages": HI}, auth)
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_configuration"
    assert "test-token" not in response.content.decode()


async def test_get_is_not_allowed(auth: dict[str, str]) -> None:
    response = await AsyncClient().get(CHAT, headers=auth)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert error_of(response)["code"] == "method_not_allowed"


# -- chat completions: streaming --------------------------------------------------------


async def test_streamed_completion(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, content=answer_stream("Hel", "lo"))
    response = await post(CHAT, {"model": MODEL, "messages": HI, "stream": True}, auth)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    frames = events(await read(response))
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert len({c["created"] for c in chunks}) == 1
    assert {(c["object"], c["model"]) for c in chunks} == {("chat.completion.chunk", MODEL)}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Hel", "lo"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in c for c in chunks)


async def test_streamed_include_usage(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, content=answer_stream("Hi"))
    body = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    frames = events(await read(await post(CHAT, body, auth)))
    assert frames[-1] == "[DONE]"
    usage_chunk = frames[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == USAGE
    assert usage_chunk["id"] == frames[0]["id"]
    assert frames[-3]["choices"][0]["finish_reason"] == "stop"


async def test_include_usage_without_upstream_usage_is_estimated(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(200, content=answer_stream("Hi there", usage=None))
    body = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    usage = events(await read(await post(CHAT, body, auth)))[-2]["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_streamed_tool_calls(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    upstream.post(OPENAI_URL).respond(
        200,
        content=sse_body(
            {"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]},
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
                    }
                ]
            },
            openai_chunk(None, "tool_calls"),
        ),
    )
    chunks = events(await read(await post(CHAT, {"messages": HI, "stream": True}, auth)))[:-1]
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:3]]
    assert calls == [
        [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": ""},
            }
        ],
        [{"index": 0, "function": {"arguments": "{}"}}],
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (sse_body(openai_chunk("Hel"), done=False), "upstream_incomplete"),
        (sse_body(openai_chunk("Hel"), "{broken", done=False), "upstream_malformed"),
        (sse_body(openai_chunk("Hel"), {"choices": ["?"]}), "upstream_malformed"),
    ],
)
async def test_mid_stream_failure_is_an_error_frame_then_done(
    auth: dict[str, str], upstream: respx.MockRouter, body: bytes, code: str
) -> None:
    upstream.post(OPENAI_URL).respond(200, content=body)
    request = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    response = await post(CHAT, request, auth)
    assert response.status_code == 200
    frames = events(await read(response))
    assert frames[-1] == "[DONE]"
    assert frames[-2]["error"]["code"] == code
    assert set(frames[-2]["error"]) == {"message", "type", "param", "code"}
    chunks = frames[:-2]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hel"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert not any("usage" in c for c in chunks)


async def test_connection_reset_mid_stream(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    body = UpstreamBody(*sse_chunks(openai_chunk("a"), done=False), error=httpx.ReadError("x"))
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    frames = events(await read(await post(CHAT, {"messages": HI, "stream": True}, auth)))
    assert frames[-2:] == [frames[-2], "[DONE]"]
    assert frames[-2]["error"]["code"] == "upstream_incomplete"
    assert body.closed


async def test_lone_surrogate_from_upstream_does_not_break_the_stream(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    raw = b'data: {"choices":[{"delta":{"content":"a\\ud83d"}}]}\n\n' + answer_stream("b")
    upstream.post(OPENAI_URL).respond(200, content=raw)
    frames = events(await read(await post(CHAT, {"messages": HI, "stream": True}, auth)))
    assert frames[1]["choices"][0]["delta"]["content"] == "a\ud83d"
    assert frames[-1] == "[DONE]"


async def test_lone_surrogate_in_a_message_is_accepted(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    route = upstream.post(OPENAI_URL).respond(200, json=answer_json())
    response = await post(CHAT, '{"messages": [{"role": "user", "content": "a\\ud83d"}]}', auth)
    assert response.status_code == 200
    assert json.loads(route.calls.last.request.content)["messages"][0]["content"] == "a\ud83d"


@override_settings(COPILOTEDGE_KEEPALIVE_SECONDS=0.05)
async def test_keepalive_comment_during_upstream_silence(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    body = UpstreamBody(*sse_chunks(openai_chunk("slow"), openai_chunk(None, "stop")), delay=0.3)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    raw = await read(await post(CHAT, {"messages": HI, "stream": True}, auth))
    assert raw.count(b": keep-alive\n\n") >= 4
    frames = events(raw)
    assert [f["choices"][0]["delta"].get("content") for f in frames[:2]] == ["", "slow"]
    assert frames[-1] == "[DONE]"


async def test_no_keepalive_while_frames_flow(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    body = UpstreamBody(*sse_chunks(openai_chunk("a"), openai_chunk("b")), delay=0.05)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    raw = await read(await post(CHAT, {"messages": HI, "stream": True}, auth))
    assert b": keep-alive" not in raw


async def test_each_frame_goes_out_before_upstream_data_already_there_is_read(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    body = UpstreamBody(*sse_chunks(*(openai_chunk(word) for word in "abcdefgh")))
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    response = await post(CHAT, {"messages": HI, "stream": True}, auth)
    first = await anext(aiter(response.streaming_content))
    assert b'"content":"a"' in first
    # Not held back while the rest, ready at once, was read and encoded first.
    assert body.sent <= 2
    await read(response)


@override_settings(COPILOTEDGE_STREAM=True)
async def test_stream_setting_is_the_default(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).mock(
        side_effect=lambda request: httpx.Response(
            200,
            content=answer_stream("x")
            if json.loads(request.content)["stream"]
            else json.dumps(answer_json("x")).encode(),
        )
    )
    streamed = await post(CHAT, {"messages": HI}, auth)
    assert streamed["Content-Type"] == "text/event-stream"
    assert events(await read(streamed))[-1] == "[DONE]"
    plain = await post(CHAT, {"messages": HI, "stream": False}, auth)
    assert plain["Content-Type"] == "application/json"


async def test_stream_is_off_by_default(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json("x"))
    response = await post(CHAT, {"messages": HI}, auth)
    assert response["Content-Type"] == "application/json"


# -- COPILOTEDGE_ON_CHUNK ---------------------------------------------------------------

CHUNKS: list[str] = []


def record_chunk(text: str) -> None:
    CHUNKS.append(text)


async def arecord_chunk(text: str) -> None:
    await asyncio.sleep(0)
    CHUNKS.append(text)


def failing_chunk(text: str) -> None:
    CHUNKS.append(text)
    raise RuntimeError("callback bug")


ON_CHUNK = [
    record_chunk,
    arecord_chunk,
    "tests.test_views.record_chunk",
    "tests.test_views.arecord_chunk",
]


@pytest.mark.parametrize("callback", ON_CHUNK, ids=["sync", "async", "path", "async-path"])
async def test_on_chunk_is_called_per_streamed_chunk(
    auth: dict[str, str], upstream: respx.MockRouter, callback: Any
) -> None:
    CHUNKS.clear()
    upstream.post(OPENAI_URL).respond(200, content=answer_stream("Hel", "lo"))
    with override_settings(COPILOTEDGE_ON_CHUNK=callback):
        await read(await post(CHAT, {"messages": HI, "stream": True}, auth))
    assert CHUNKS == ["Hel", "lo"]


@pytest.mark.parametrize("callback", ON_CHUNK, ids=["sync", "async", "path", "async-path"])
async def test_on_chunk_gets_the_whole_text_when_not_streamed(
    auth: dict[str, str], upstream: respx.MockRouter, callback: Any
) -> None:
    CHUNKS.clear()
    upstream.post(OPENAI_URL).respond(200, json=answer_json("Hello"))
    with override_settings(COPILOTEDGE_ON_CHUNK=callback):
        await post(CHAT, {"messages": HI}, auth)
    assert CHUNKS == ["Hello"]


@override_settings(COPILOTEDGE_ON_CHUNK=failing_chunk)
async def test_a_failing_on_chunk_does_not_break_the_stream(
    auth: dict[str, str], upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    CHUNKS.clear()
    upstream.post(OPENAI_URL).respond(200, content=answer_stream("a", "b"))
    frames = events(await read(await post(CHAT, {"messages": HI, "stream": True}, auth)))
    assert [f["choices"][0]["delta"].get("content") for f in frames[1:3]] == ["a", "b"]
    assert frames[-1] == "[DONE]"
    assert CHUNKS == ["a", "b"]
    assert "COPILOTEDGE_ON_CHUNK raised" in caplog.text


# -- models -----------------------------------------------------------------------------


async def test_models_list(auth: dict[str, str]) -> None:
    response = await AsyncClient().get(MODELS, headers=auth)
    assert response.status_code == 200
    body = json.loads(response.content)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == conf.MODELS
    assert all(set(m) == {"id", "object", "created", "owned_by"} for m in body["data"])
    assert {m["object"] for m in body["data"]} == {"model"}


@override_settings(COPILOTEDGE_MODELS=["@cf/qwen/qwq-32b"], COPILOTEDGE_MODEL="@cf/meta/x")
async def test_models_list_follows_settings(auth: dict[str, str]) -> None:
    body = json.loads((await AsyncClient().get(MODELS, headers=auth)).content)
    assert [m["id"] for m in body["data"]] == ["@cf/meta/x", "@cf/qwen/qwq-32b"]


async def test_models_needs_auth(db: None) -> None:
    response = await AsyncClient().get(MODELS)
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"


async def test_models_is_get_only(auth: dict[str, str]) -> None:
    assert (await post(MODELS, {}, auth)).status_code == 405


# -- /ai/run ----------------------------------------------------------------------------

RUN = f"/copilotedge/ai/run/{RUN_MODEL}"


async def test_run_envelope(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    route = upstream.post(run_url(RUN_MODEL)).respond(
        200, json={"result": {"response": "Hello", "usage": USAGE}, "success": True}
    )
    response = await post(RUN, {"messages": HI, "max_tokens": 20}, auth)
    assert response.status_code == 200
    assert json.loads(response.content) == {
        "result": {"response": "Hello", "usage": USAGE},
        "success": True,
        "errors": [],
        "messages": [],
    }
    assert json.loads(route.calls.last.request.content)["max_tokens"] == 20


async def test_run_accepts_a_prompt(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    route = upstream.post(run_url(RUN_MODEL)).respond(
        200, json={"result": {"response": "x"}, "success": True}
    )
    assert (await post(RUN, {"prompt": "Hi"}, auth)).status_code == 200
    assert json.loads(route.calls.last.request.content)["messages"] == HI


async def test_run_on_an_openai_routed_model(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json("Hey"))
    response = await post(f"/copilotedge/ai/run/{MODEL}", {"messages": HI}, auth)
    assert json.loads(response.content)["result"]["response"] == "Hey"


async def test_run_stream(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(run_url(RUN_MODEL)).respond(
        200, content=sse_body(run_frame("Hel"), run_frame("lo"), run_frame(usage=USAGE))
    )
    response = await post(RUN, {"messages": HI, "stream": True}, auth)
    assert response["Content-Type"] == "text/event-stream"
    assert response["X-Accel-Buffering"] == "no"
    assert events(await read(response)) == [
        {"response": "Hel"},
        {"response": "lo"},
        {"response": "", "usage": USAGE},
        "[DONE]",
    ]


async def test_run_stream_tool_calls(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    call = {"name": "weather", "arguments": {"city": "Paris"}}
    upstream.post(run_url(RUN_MODEL)).respond(
        200, content=sse_body(run_frame("", tool_calls=[call]))
    )
    frames = events(await read(await post(RUN, {"messages": HI, "stream": True}, auth)))
    assert frames[0] == {
        "response": "",
        "tool_calls": [{"name": "weather", "arguments": '{"city": "Paris"}'}],
    }


async def test_run_mid_stream_failure(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(run_url(RUN_MODEL)).respond(200, content=sse_body(run_frame("a"), done=False))
    frames = events(await read(await post(RUN, {"messages": HI, "stream": True}, auth)))
    assert frames[0] == {"response": "a"}
    assert frames[1]["success"] is False
    assert frames[1]["error"]["code"] == "upstream_incomplete"
    assert frames[2:] == ["[DONE]"]


async def test_run_upstream_error_shape(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(run_url(RUN_MODEL)).respond(
        429, json={"errors": [{"code": 3040, "message": "x"}]}, headers={"Retry-After": "3"}
    )
    response = await post(RUN, {"messages": HI}, auth)
    assert response.status_code == 429
    assert response["Retry-After"] == "3"
    body = json.loads(response.content)
    assert body["success"] is False and body["result"] is None
    assert body["errors"][0]["code"] == 3040
    assert body["error"]["code"] == "upstream_capacity"


async def test_run_unknown_model(auth: dict[str, str]) -> None:
    response = await post("/copilotedge/ai/run/@cf/nope/nothing", {"messages": HI}, auth)
    assert response.status_code == 404
    body = json.loads(response.content)
    assert (body["error"]["code"], body["error"]["param"]) == ("model_not_found", "model")
    assert body["success"] is False


async def test_run_bad_input_and_auth(auth: dict[str, str]) -> None:
    response = await post(RUN, {"messages": "x"}, auth)
    assert (response.status_code, error_of(response)["param"]) == (400, "messages")
    assert json.loads(response.content)["success"] is False
    assert (await post(RUN, {"messages": HI})).status_code == 401


# -- auth -------------------------------------------------------------------------------


async def test_no_credentials(db: None) -> None:
    response = await post(CHAT, {"messages": HI})
    assert response.status_code == 401
    assert error_of(response) == {
        "message": "A valid API key or a signed-in session is required.",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }


@pytest.mark.parametrize("header", ["Bearer ce_wrong", "Bearer sk-openai", "Bearer ", "Basic x"])
async def test_bad_key(api_key: tuple[ApiKey, str], header: str) -> None:
    response = await post(CHAT, {"messages": HI}, {"Authorization": header})
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"


async def test_revoked_key(api_key: tuple[ApiKey, str]) -> None:
    key, raw = api_key
    key.revoked_at = key.created_at
    await key.asave()
    response = await post(CHAT, {"messages": HI}, {"Authorization": f"Bearer {raw}"})
    assert response.status_code == 401


async def test_bearer_is_case_insensitive(
    api_key: tuple[ApiKey, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json())
    response = await post(CHAT, {"messages": HI}, {"Authorization": f"bearer {api_key[1]}"})
    assert response.status_code == 200


async def test_session_user(user: Any, upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json())
    client = AsyncClient()
    await client.aforce_login(user)
    assert (await post(CHAT, {"messages": HI}, client=client)).status_code == 200
    assert (await client.get(MODELS)).status_code == 200


async def test_session_post_needs_the_csrf_token(user: Any, upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json())
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(user)
    refused = await post(CHAT, {"messages": HI}, client=client)
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "csrf_failed"
    assert not upstream.calls
    client.cookies["csrftoken"] = CSRF_SECRET
    accepted = await post(CHAT, {"messages": HI}, {"X-CSRFToken": CSRF_SECRET}, client=client)
    assert accepted.status_code == 200
    # Reading needs no token.
    assert (await client.get(MODELS)).status_code == 200


async def test_bearer_post_needs_no_csrf_token(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json())
    client = AsyncClient(enforce_csrf_checks=True)
    assert (await post(CHAT, {"messages": HI}, auth, client=client)).status_code == 200


@override_settings(COPILOTEDGE_ALLOW_ANONYMOUS=True)
async def test_anonymous_when_allowed(db: None, upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json())
    assert (await post(CHAT, {"messages": HI})).status_code == 200


async def test_auth_comes_before_validation(db: None) -> None:
    assert (await post(CHAT, b"{not json")).status_code == 401


# -- bad input --------------------------------------------------------------------------


def with_message(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Hi", **fields}]}


BAD_INPUT: list[tuple[Any, int, str | None, str]] = [
    (b"{not json", 400, None, "invalid_json"),
    (b"", 400, None, "invalid_json"),
    (b"\xff\xfe{", 400, None, "invalid_json"),
    (b'{"messages": NaN}', 400, None, "invalid_json"),
    (
        b'{"messages": [{"role": "user", "content": "x"}], "tools": [Infinity]}',
        400,
        None,
        "invalid_json",
    ),
    (b"[" * 100_000, 400, None, "invalid_json"),
    (b"[]", 400, None, "invalid_json"),
    (b'"text"', 400, None, "invalid_json"),
    (b"42", 400, None, "invalid_json"),
    (b"null", 400, None, "invalid_json"),
    ({}, 400, "messages", "invalid_request"),
    ({"messages": "Hi"}, 400, "messages", "invalid_request"),
    ({"messages": {"role": "user"}}, 400, "messages", "invalid_request"),
    ({"messages": []}, 400, "messages", "invalid_request"),
    ({"messages": ["Hi"]}, 400, "messages[0]", "invalid_request"),
    ({"messages": [{"content": "Hi"}]}, 400, "messages[0].role", "invalid_request"),
    (with_message(role="wizard"), 400, "messages[0].role", "invalid_request"),
    (with_message(role=["user"]), 400, "messages[0].role", "invalid_request"),
    (with_message(role={"a": 1}), 400, "messages[0].role", "invalid_request"),
    (with_message(role=7), 400, "messages[0].role", "invalid_request"),
    (with_message(content=None), 400, "messages[0].content", "invalid_request"),
    (with_message(content=42), 400, "messages[0].content", "invalid_request"),
    (with_message(content={"text": "x"}), 400, "messages[0].content", "invalid_request"),
    (
        with_message(content=[{"type": "image_url"}]),
        400,
        "messages[0].content[0]",
        "invalid_request",
    ),
    (
        with_message(content=[{"type": "text", "text": 1}]),
        400,
        "messages[0].content[0].text",
        "invalid_request",
    ),
    (with_message(tool_calls=[]), 400, "messages[0].tool_calls", "invalid_request"),
    (
        {"messages": [*HI, {"role": "tool", "content": "x"}]},
        400,
        "messages[1].tool_call_id",
        "invalid_request",
    ),
    (
        {"messages": [*HI, {"role": "assistant", "tool_calls": "x"}]},
        400,
        "messages[1].tool_calls",
        "invalid_request",
    ),
    ({"messages": HI, "model": 42}, 400, "model", "invalid_request"),
    ({"messages": HI, "model": ""}, 400, "model", "invalid_request"),
    (
        {"messages": HI, "model": ["@cf/meta/llama-3.1-8b-instruct"]},
        400,
        "model",
        "invalid_request",
    ),
    ({"messages": HI, "model": "@cf/nope/nothing"}, 404, "model", "model_not_found"),
    ({"messages": HI, "model": "gpt-4o"}, 404, "model", "model_not_found"),
    ({"messages": HI, "temperature": "hot"}, 400, "temperature", "invalid_request"),
    ({"messages": HI, "temperature": True}, 400, "temperature", "invalid_request"),
    ({"messages": HI, "temperature": 9}, 400, "temperature", "invalid_request"),
    ({"messages": HI, "temperature": -0.1}, 400, "temperature", "invalid_request"),
    ({"messages": HI, "top_p": 1.5}, 400, "top_p", "invalid_request"),
    ({"messages": HI, "top_p": [1]}, 400, "top_p", "invalid_request"),
    ({"messages": HI, "frequency_penalty": -3}, 400, "frequency_penalty", "invalid_request"),
    ({"messages": HI, "presence_penalty": "x"}, 400, "presence_penalty", "invalid_request"),
    ({"messages": HI, "max_tokens": 0}, 400, "max_tokens", "invalid_request"),
    ({"messages": HI, "max_tokens": 1.5}, 400, "max_tokens", "invalid_request"),
    ({"messages": HI, "max_tokens": "10"}, 400, "max_tokens", "invalid_request"),
    ({"messages": HI, "max_tokens": True}, 400, "max_tokens", "invalid_request"),
    (
        {"messages": HI, "max_completion_tokens": -1},
        400,
        "max_completion_tokens",
        "invalid_request",
    ),
    ({"messages": HI, "seed": "1"}, 400, "seed", "invalid_request"),
    ({"messages": HI, "seed": 1.0}, 400, "seed", "invalid_request"),
    ({"messages": HI, "stop": 5}, 400, "stop", "invalid_request"),
    ({"messages": HI, "stop": [1]}, 400, "stop", "invalid_request"),
    ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_request"),
    ({"messages": HI, "tools": "x"}, 400, "tools", "invalid_request"),
    ({"messages": HI, "tools": [{"type": "function"}]}, 400, "tools", "invalid_request"),
    ({"messages": HI, "tool_choice": 5}, 400, "tool_choice", "invalid_request"),
    ({"messages": HI, "response_format": "json"}, 400, "response_format", "invalid_request"),
    ({"messages": HI, "stream": "yes"}, 400, "stream", "invalid_request"),
    ({"messages": HI, "stream": 1}, 400, "stream", "invalid_request"),
    (
        {"messages": HI, "stream": True, "stream_options": "x"},
        400,
        "stream_options",
        "invalid_request",
    ),
    (
        {"messages": HI, "stream": True, "stream_options": {"include_usage": "yes"}},
        400,
        "stream_options",
        "invalid_request",
    ),
    ({"messages": HI, "conversation_id": "nope"}, 400, "conversation_id", "invalid_request"),
    ({"messages": HI, "conversation_id": 7}, 400, "conversation_id", "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "param", "code"), BAD_INPUT)
async def test_bad_input(
    auth: dict[str, str],
    upstream: respx.MockRouter,
    body: Any,
    status: int,
    param: str | None,
    code: str,
) -> None:
    response = await post(CHAT, body, auth)
    assert response.status_code == status
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    assert not upstream.calls


@override_settings(COPILOTEDGE_MAX_MESSAGES=3)
async def test_too_many_messages(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json())
    assert (await post(CHAT, {"messages": HI * 3}, auth)).status_code == 200
    response = await post(CHAT, {"messages": HI * 4}, auth)
    assert (response.status_code, error_of(response)["param"]) == (400, "messages")


async def test_default_message_limit_is_500(auth: dict[str, str]) -> None:
    response = await post(CHAT, {"messages": HI * 501}, auth)
    assert (response.status_code, error_of(response)["param"]) == (400, "messages")


@override_settings(COPILOTEDGE_MAX_BODY_BYTES=200)
async def test_body_over_the_limit_is_413(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, json=answer_json())
    small = {"messages": [{"role": "user", "content": "x" * 100}]}
    assert (await post(CHAT, small, auth)).status_code == 200
    big = {"messages": [{"role": "user", "content": "x" * 300}]}
    response = await post(CHAT, big, auth)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    assert error_of(response)["type"] == "invalid_request_error"
    response = await post(RUN, big, auth)
    assert response.status_code == 413


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
async def test_body_over_djangos_own_limit_is_413(auth: dict[str, str]) -> None:
    response = await post(CHAT, {"messages": [{"role": "user", "content": "x" * 300}]}, auth)
    assert response.status_code == 413


async def test_default_body_limit_is_one_mebibyte(auth: dict[str, str]) -> None:
    body = {"messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}
    assert (await post(CHAT, body, auth)).status_code == 413


async def test_nested_body_within_limits_is_a_400_not_a_crash(auth: dict[str, str]) -> None:
    body = {"messages": HI, "tools": [{"function": json.loads("[" * 500 + "]" * 500)}]}
    response = await post(CHAT, body, auth)
    assert response.status_code < 500


# -- no input gives a 5xx -----------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_KNOWN = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
    "stream_options",
    "frequency_penalty",
    "presence_penalty",
    "conversation_id",
    "prompt",
]
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool", "developer"]) | _json,
        "content": st.text(max_size=20) | _json,
        "tool_calls": _json,
        "tool_call_id": st.text(max_size=5) | _json,
    },
)
_valid_params = {
    "model": st.sampled_from([MODEL, RUN_MODEL, "@cf/meta/llama-3.2-1b-instruct"]),
    "temperature": st.floats(0, 5),
    "top_p": st.floats(0, 1),
    "max_tokens": st.integers(1, 10**9),
    "seed": st.integers(-(10**20), 10**20),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=4),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "tool_choice": st.sampled_from(["auto", "none"]),
    "response_format": st.just({"type": "json_object"}),
}
_valid_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "developer"]), "content": st.text(max_size=20)}
)
_bodies = st.one_of(
    st.builds(
        lambda messages, params: {"messages": messages, **params},
        st.lists(_valid_message, min_size=1, max_size=3),
        st.fixed_dictionaries({}, optional=_valid_params),
    ),
    _json,
    st.dictionaries(
        st.sampled_from(_KNOWN),
        _json
        | st.lists(_message, max_size=3)
        | st.sampled_from([MODEL, RUN_MODEL, True, False, 0.5, 1, {"include_usage": True}]),
        max_size=8,
    ),
)


def _upstream_answer(request: httpx.Request) -> httpx.Response:
    if json.loads(request.content).get("stream"):
        return httpx.Response(200, content=answer_stream("ok"))
    return httpx.Response(200, json=answer_json("ok"))


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_bodies, url=st.sampled_from([CHAT, RUN]))
async def test_no_json_body_gives_a_5xx(auth: dict[str, str], body: Any, url: str) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="upstream.test").mock(side_effect=_upstream_answer)
        response = await post(url, json.dumps(body), auth)
        event(f"{response.status_code} {response['Content-Type']}")
        assert response.status_code < 500, response.content
        if response.status_code >= 400:
            assert set(error_of(response)) == {"message", "type", "param", "code"}
        elif response["Content-Type"] == "text/event-stream":
            frames = events(await read(response))
            assert frames[-1] == "[DONE]"
            assert not any(isinstance(f, dict) and "error" in f for f in frames)


# -- under WSGI (runserver without daphne): whole answers only ---------------------------

RUN_MODEL_URL = f"/copilotedge/ai/run/{MODEL}"
AGUI_RUN = "/copilotedge/copilotkit/agent/default/run"
AGUI_INPUT = {
    "threadId": "thread-1",
    "runId": "run-1",
    "messages": [{"id": "m1", "role": "user", "content": "Hi"}],
    "tools": [],
    "context": [],
    "state": {},
    "forwardedProps": {},
}


def wsgi_post(url: str, body: Any, auth: dict[str, str]) -> Any:
    """``body`` posted through Django's WSGI handler (what ``runserver`` without daphne runs)."""
    response = Client().post(url, json.dumps(body), content_type="application/json", headers=auth)
    async_to_sync(lifecycle.drain)()
    return response


@pytest.mark.parametrize(
    ("url", "body"),
    [(CHAT, {"messages": HI, "stream": True}), (RUN_MODEL_URL, {"prompt": "Hi", "stream": True})],
    ids=["openai", "run"],
)
def test_wsgi_refuses_a_streamed_request_with_asgi_required(
    url: str, body: dict[str, Any], auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    route = upstream.post(OPENAI_URL).respond(200, content=answer_stream("Hello", " world"))
    response = wsgi_post(url, body, auth)
    assert response.status_code == 501
    assert not response.streaming
    error = error_of(response)
    assert error["code"] == "asgi_required"
    assert "ASGI server" in error["message"] and '"daphne"' in error["message"]
    assert not route.called
    assert not UsageRecord.objects.exists()
    assert not Message.objects.filter(role="assistant").exists()


def test_wsgi_refuses_a_stream_by_default_and_an_agui_run(
    auth: dict[str, str], upstream: respx.MockRouter
) -> None:
    route = upstream.post(OPENAI_URL).respond(200, content=answer_stream("Hello"))
    with override_settings(COPILOTEDGE_STREAM=True):
        assert error_of(wsgi_post(CHAT, {"messages": HI}, auth))["code"] == "asgi_required"
    agui = wsgi_post(AGUI_RUN, AGUI_INPUT, auth)
    assert (agui.status_code, error_of(agui)["code"]) == (501, "asgi_required")
    assert not route.called
    assert not UsageRecord.objects.filter(outcome="ok").exists()


def test_wsgi_serves_whole_answers(auth: dict[str, str], upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(json=answer_json("Hello there"))
    chat = wsgi_post(CHAT, {"messages": HI}, auth)
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "Hello there"
    run = wsgi_post(RUN_MODEL_URL, {"prompt": "Hi"}, auth)
    assert run.status_code == 200
    assert run.json()["result"]["response"] == "Hello there"
    assert run["X-CopilotEdge-Conversation"]
    assert list(UsageRecord.objects.values_list("outcome", flat=True)) == ["ok", "ok"]
