"""The Workers AI emulator, driven over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from copilotedge.testing import EmulatorApp, EmulatorServer, Fault

TOKEN = "secret-token"
LLAMA = "@cf/meta/llama-3.1-8b-instruct"
QWQ = "@cf/qwen/qwq-32b"
GPT_OSS = "@cf/openai/gpt-oss-120b"
OPENAI_PATH = "/accounts/acc/ai/v1/chat/completions"
RUN_QWQ = f"/accounts/acc/ai/run/{QWQ}"
GREETING = "Hello from the Workers AI emulator. You said:"
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    app = EmulatorApp(api_token=TOKEN, models={LLAMA, QWQ, GPT_OSS})
    with EmulatorServer(app) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(server: EmulatorServer) -> None:
    server.app.clear_requests()
    server.app.clear_faults()


@pytest.fixture
async def client(server: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.api_base_url, headers=headers, timeout=10) as http:
        yield http


def user(content: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def chat(content: str = "hi there", **extra: Any) -> dict[str, Any]:
    return {"model": LLAMA, "messages": user(content), **extra}


def data_lines(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


def frames(text: str) -> list[dict[str, Any]]:
    """The JSON frames of an event stream, which must end with ``[DONE]``."""
    lines = data_lines(text)
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    """Wait until ``condition()`` holds: the emulator runs in another thread."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not true within {within} s"
        await asyncio.sleep(0.01)


async def outcome_of(app: EmulatorApp, within: float = 1.0) -> dict[str, Any]:
    """The last request's log entry once it has ended."""
    await eventually(lambda: bool(app.requests) and app.requests[-1]["ended"] is not None, within)
    return app.requests[-1]


# The OpenAI-compatible route


async def test_openai_completion(client: httpx.AsyncClient) -> None:
    response = await client.post(OPENAI_PATH, json=chat())

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == LLAMA
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content.startswith(f"{GREETING} hi there lorem ipsum")
    assert len(content.split()) == 20
    assert not content.endswith(" ")
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 20, "total_tokens": 22}


async def test_openai_stream_with_usage(client: httpx.AsyncClient) -> None:
    payload = chat(stream=True, stream_options={"include_usage": True})
    whole = (await client.post(OPENAI_PATH, json=chat())).json()
    response = await client.post(OPENAI_PATH, json=payload)

    assert response.headers["content-type"] == "text/event-stream"
    chunks = frames(response.text)
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[:-2]]
    assert len(tokens) == 20
    assert all(token.endswith(" ") for token in tokens[:-1])
    assert "".join(tokens) == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 20, "total_tokens": 22}


async def test_openai_stream_sends_usage_only_when_asked(client: httpx.AsyncClient) -> None:
    response = await client.post(OPENAI_PATH, json=chat(stream=True))

    chunks = frames(response.text)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in chunk for chunk in chunks)


async def test_max_tokens_truncates_with_length(client: httpx.AsyncClient) -> None:
    response = await client.post(OPENAI_PATH, json=chat(max_tokens=3))

    [choice] = response.json()["choices"]
    assert choice["message"]["content"] == "Hello from the"
    assert choice["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == 3


async def test_tokens_header_sets_the_answer_length(client: httpx.AsyncClient) -> None:
    response = await client.post(OPENAI_PATH, json=chat(), headers={"X-Emulator-Tokens": "40"})

    content = response.json()["choices"][0]["message"]["content"]
    assert len(content.split()) == 40


async def test_answer_is_deterministic(client: httpx.AsyncClient) -> None:
    first = await client.post(OPENAI_PATH, json=chat("same question"))
    second = await client.post(OPENAI_PATH, json=chat("same question"))

    message = first.json()["choices"][0]["message"]
    assert message == second.json()["choices"][0]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
async def test_plain_openai_server(server: EmulatorServer, path: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.post(path, json=chat(), headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith(GREETING)


# The native /ai/run route


async def test_run_envelope(client: httpx.AsyncClient) -> None:
    response = await client.post(RUN_QWQ, json={"messages": user("hi there")})

    body = response.json()
    assert body["success"] is True
    assert body["errors"] == []
    assert body["messages"] == []
    assert body["result"]["response"].startswith(f"{GREETING} hi there")
    assert body["result"]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 20,
        "total_tokens": 22,
    }


async def test_run_accepts_a_prompt(client: httpx.AsyncClient) -> None:
    response = await client.post(RUN_QWQ, json={"prompt": "one two three"})

    assert response.json()["result"]["response"].startswith(f"{GREETING} one two three")
    assert response.json()["result"]["usage"]["prompt_tokens"] == 3


async def test_run_stream(client: httpx.AsyncClient) -> None:
    response = await client.post(RUN_QWQ, json={"messages": user("hi"), "stream": True})

    events = frames(response.text)
    assert len(events) == 21
    assert all(set(event) == {"response"} for event in events[:-1])
    assert "".join(event["response"] for event in events).startswith(f"{GREETING} hi")
    assert events[-1] == {
        "response": "",
        "usage": {"prompt_tokens": 1, "completion_tokens": 20, "total_tokens": 21},
    }


async def test_run_streams_openai_frames_for_openai_style_models(
    client: httpx.AsyncClient,
) -> None:
    path = f"/accounts/acc/ai/run/{GPT_OSS}"
    streamed = await client.post(path, json={"messages": user("hi"), "stream": True})
    whole = await client.post(path, json={"messages": user("hi")})

    chunks = frames(streamed.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    result = whole.json()["result"]
    assert whole.json()["success"] is True
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"].startswith(GREETING)


# Tool calls


async def test_openai_stream_tool_call(client: httpx.AsyncClient) -> None:
    payload = chat(
        'What is get_weather for {"city": "Paris", "unit": "c"}?',
        tools=[WEATHER_TOOL],
        stream=True,
    )
    response = await client.post(OPENAI_PATH, json=payload)

    chunks = frames(response.text)
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant"
    [call] = first["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[1:-1]
    ]
    assert len(fragments) >= 2
    assert json.loads("".join(fragments)) == {"city": "Paris", "unit": "c"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_openai_tool_call_without_json_has_empty_arguments(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        OPENAI_PATH, json=chat("call get_weather please", tools=[WEATHER_TOOL])
    )

    [choice] = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}


async def test_run_tool_call_has_object_arguments(client: httpx.AsyncClient) -> None:
    payload = {
        "messages": user('get_weather {"city": "Oslo"}'),
        "tools": [{"name": "get_weather", "parameters": {}}],
    }
    whole = await client.post(RUN_QWQ, json=payload)
    streamed = await client.post(RUN_QWQ, json={**payload, "stream": True})

    expected = [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert whole.json()["result"]["tool_calls"] == expected
    assert frames(streamed.text)[0]["tool_calls"] == expected


async def test_tool_named_in_an_earlier_message_is_not_called(client: httpx.AsyncClient) -> None:
    messages = [
        *user("get_weather"),
        {"role": "assistant", "content": "ok"},
        *user("thanks"),
    ]
    payload = {"model": LLAMA, "messages": messages, "tools": [WEATHER_TOOL]}
    response = await client.post(OPENAI_PATH, json=payload)

    assert response.json()["choices"][0]["finish_reason"] == "stop"


async def test_tool_result_is_answered_with_text(client: httpx.AsyncClient) -> None:
    messages = [
        *user("get_weather"),
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"},
    ]
    payload = {"model": LLAMA, "messages": messages, "tools": [WEATHER_TOOL]}
    response = await client.post(OPENAI_PATH, json=payload)

    content = response.json()["choices"][0]["message"]["content"]
    assert content.startswith("Tool result: 22 degrees lorem")
    assert len(content.split()) == 20


async def test_call_directive_streams_several_calls_in_openai_shape(
    client: httpx.AsyncClient,
) -> None:
    payload = chat('CALL:whoami{} CALL:lookup{"q": "tea", "n": 2}', stream=True)
    response = await client.post(OPENAI_PATH, json=payload)

    calls: dict[int, dict[str, str]] = {}
    for chunk in frames(response.text)[:-1]:
        for piece in chunk["choices"][0]["delta"].get("tool_calls", []):
            call = calls.setdefault(piece["index"], {"name": "", "arguments": "", "id": ""})
            call["id"] += piece.get("id", "")
            call["name"] += piece.get("function", {}).get("name", "")
            call["arguments"] += piece["function"]["arguments"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("whoami", {}),
        ("lookup", {"q": "tea", "n": 2}),
    ]
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert frames(response.text)[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_call_directive_whole_in_both_shapes(client: httpx.AsyncClient) -> None:
    openai = await client.post(OPENAI_PATH, json=chat('CALL:lookup{"q": "tea"}'))
    [call] = openai.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": '{"q": "tea"}'}
    run = await client.post(RUN_QWQ, json={"messages": user("CALL:whoami")})
    assert run.json()["result"]["tool_calls"] == [{"name": "whoami", "arguments": {}}]
    streamed = await client.post(RUN_QWQ, json={"messages": user("CALL:whoami"), "stream": True})
    assert frames(streamed.text)[0]["tool_calls"] == [{"name": "whoami", "arguments": {}}]


def answered_step(messages: list[dict[str, Any]], result: str) -> list[dict[str, Any]]:
    call = {"id": "c", "type": "function", "function": {"name": "t", "arguments": "{}"}}
    return [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": result},
    ]


async def test_each_directive_line_is_one_step_then_the_results_are_quoted(
    client: httpx.AsyncClient,
) -> None:
    messages = user("Please\nCALL:first{}\nand then CALL:second{}")
    step1 = (await client.post(OPENAI_PATH, json={"model": LLAMA, "messages": messages})).json()
    assert step1["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "first"
    messages = answered_step(messages, "one")
    step2 = (await client.post(OPENAI_PATH, json={"model": LLAMA, "messages": messages})).json()
    assert step2["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "second"
    messages = answered_step(messages, "two")
    final = await client.post(RUN_QWQ, json={"messages": messages, "stream": True})
    text = "".join(f["response"] for f in frames(final.text) if "usage" not in f)
    assert text.startswith("Tool result: two lorem")


# Auth, models and validation


def assert_cf_error(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status
    body = response.json()
    assert body["success"] is False
    assert body["result"] is None
    assert body["errors"][0]["code"] == code
    assert body["errors"][0]["message"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic secret-token", "Bearer"])
async def test_auth_failure(server: EmulatorServer, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=server.api_base_url) as http:
        response = await http.post(OPENAI_PATH, json=chat(), headers=headers)

    assert_cf_error(response, 401, 10000)
    assert response.json()["errors"][0]["message"] == "Authentication error"
    [entry] = server.app.requests
    assert entry["authorization_ok"] is False
    assert entry["outcome"] == "error"


async def test_any_token_is_accepted_without_api_token() -> None:
    with EmulatorServer() as open_server:
        async with httpx.AsyncClient(base_url=open_server.api_base_url) as http:
            accepted = await http.post(
                RUN_QWQ, json={"prompt": "hi"}, headers={"Authorization": "Bearer anything"}
            )
            refused = await http.post(RUN_QWQ, json={"prompt": "hi"})

    assert accepted.status_code == 200
    assert_cf_error(refused, 401, 10000)


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        (OPENAI_PATH, chat() | {"model": "@cf/nobody/nothing"}),
        ("/accounts/acc/ai/run/@cf/nobody/nothing", {"prompt": "hi"}),
    ],
)
async def test_unknown_model(client: httpx.AsyncClient, path: str, payload: Any) -> None:
    response = await client.post(path, json=payload)

    assert_cf_error(response, 404, 5007)
    assert "@cf/nobody/nothing" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"model": "m"}', b'{"messages": []}'],
)
async def test_bad_input(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(OPENAI_PATH, content=content)

    assert_cf_error(response, 400, 5006)


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_cf_error(await client.post("/accounts/acc/ai/nothing", json={}), 404, 7000)
    assert_cf_error(await client.get(RUN_QWQ), 405, 7001)


# Faults


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("error:429:3040", Fault("error", status=429, code=3040)),
        ("error:500:0:2.5", Fault("error", status=500, code=0, retry_after=2.5)),
        ("hang:1.5", Fault("hang", seconds=1.5)),
        ("stall:3:0.5", Fault("stall", after=3, seconds=0.5)),
        ("drop:2", Fault("drop", after=2)),
        ("malformed:0", Fault("malformed", after=0)),
        ("nousage", Fault("nousage")),
        ("slow:0.01", Fault("slow", seconds=0.01)),
    ],
)
def test_fault_parse(spec: str, expected: Fault) -> None:
    assert Fault.parse(spec) == expected
    assert Fault.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "spec", ["", "boom", "error", "error:200:1", "hang", "hang:-1", "drop:x", "nousage:1"]
)
def test_fault_parse_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="fault spec"):
        Fault.parse(spec)


async def test_queued_error_fault(server: EmulatorServer, client: httpx.AsyncClient) -> None:
    server.app.add_fault("error:429:3040", count=2, retry_after=7)

    first = await client.post(OPENAI_PATH, json=chat())
    second = await client.post(RUN_QWQ, json={"prompt": "hi"})
    third = await client.post(OPENAI_PATH, json=chat())

    assert_cf_error(first, 429, 3040)
    assert first.headers["retry-after"] == "7"
    assert_cf_error(second, 429, 3040)
    assert third.status_code == 200
    assert [entry["faults"] for entry in server.app.requests] == [
        ["error:429:3040:7"],
        ["error:429:3040:7"],
        [],
    ]


async def test_queued_faults_run_in_order_and_match_paths(
    server: EmulatorServer, client: httpx.AsyncClient
) -> None:
    server.app.add_fault("error:429:3036", path_contains="/ai/run/")
    server.app.add_fault("error:500:0")

    first = await client.post(OPENAI_PATH, json=chat())
    second = await client.post(RUN_QWQ, json={"prompt": "hi"})
    third = await client.post(RUN_QWQ, json={"prompt": "hi"})

    assert_cf_error(first, 500, 0)
    assert_cf_error(second, 429, 3036)
    assert "retry-after" not in second.headers
    assert third.status_code == 200


async def test_fault_marker_in_the_last_user_message(client: httpx.AsyncClient) -> None:
    response = await client.post(OPENAI_PATH, json=chat("hi [[fault:error:503:3040]]"))

    assert_cf_error(response, 503, 3040)


async def test_bad_fault_marker_is_bad_input(client: httpx.AsyncClient) -> None:
    response = await client.post(OPENAI_PATH, json=chat("hi [[fault:explode]]"))

    assert_cf_error(response, 400, 5006)


async def test_marker_is_not_echoed(client: httpx.AsyncClient) -> None:
    response = await client.post(OPENAI_PATH, json=chat("hi [[fault:nousage]] there"))

    body = response.json()
    assert body["choices"][0]["message"]["content"].startswith(f"{GREETING} hi there lorem")
    assert "usage" not in body


async def test_hang_delays_the_headers(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await client.post(OPENAI_PATH, json=chat("[[fault:hang:0.3]]"))

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_stall_pauses_mid_stream(server: EmulatorServer, client: httpx.AsyncClient) -> None:
    arrivals: list[tuple[float, str]] = []
    payload = chat("[[fault:stall:5:0.3]]", stream=True)
    async with client.stream("POST", OPENAI_PATH, json=payload) as response:
        async for chunk in response.aiter_text():
            arrivals.append((time.monotonic(), chunk))

    text = "".join(chunk for _, chunk in arrivals)
    assert len(frames(text)) == 21
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(arrivals)]
    stall_at = gaps.index(max(gaps)) + 1
    assert len(data_lines("".join(chunk for _, chunk in arrivals[:stall_at]))) == 5
    assert max(gaps) >= 0.25  # 0.3 s, less the clock's jitter
    assert server.app.requests[-1]["outcome"] == "completed"


@pytest.mark.parametrize("path", [OPENAI_PATH, RUN_QWQ])
async def test_drop_ends_the_stream_without_done(
    server: EmulatorServer, client: httpx.AsyncClient, path: str
) -> None:
    response = await client.post(path, json=chat("[[fault:drop:3]]", stream=True))

    lines = data_lines(response.text)
    assert len(lines) == 3
    assert "[DONE]" not in lines
    entry = server.app.requests[-1]
    assert entry["outcome"] == "dropped"
    assert entry["tokens_sent"] == 3


async def test_drop_truncates_a_whole_answer(
    server: EmulatorServer, client: httpx.AsyncClient
) -> None:
    server.app.add_fault("drop:0")
    response = await client.post(OPENAI_PATH, json=chat())

    with pytest.raises(ValueError):
        response.json()
    assert server.app.requests[-1]["outcome"] == "dropped"


async def test_malformed_frame(client: httpx.AsyncClient) -> None:
    response = await client.post(RUN_QWQ, json=chat("[[fault:malformed:2]]", stream=True))

    lines = data_lines(response.text)
    assert lines[2] == "{not json"
    assert lines[-1] == "[DONE]"
    json.loads(lines[1])
    json.loads(lines[3])


@pytest.mark.parametrize("path", [OPENAI_PATH, RUN_QWQ])
async def test_nousage(server: EmulatorServer, client: httpx.AsyncClient, path: str) -> None:
    server.app.add_fault("nousage", count=2)
    whole = await client.post(path, json=chat())
    payload = chat(stream=True, stream_options={"include_usage": True})
    streamed = await client.post(path, json=payload)

    assert "usage" not in whole.text
    assert "usage" not in streamed.text
    assert data_lines(streamed.text)[-1] == "[DONE]"


async def test_slow_sets_the_token_delay(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await client.post(
        OPENAI_PATH, json=chat("[[fault:slow:0.02]]"), headers={"X-Emulator-Tokens": "10"}
    )

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


async def test_token_delay_header_paces_frames(client: httpx.AsyncClient) -> None:
    arrivals = []
    headers = {"X-Emulator-Token-Delay": "0.05", "X-Emulator-Tokens": "4"}
    async with client.stream("POST", RUN_QWQ, json=chat(stream=True), headers=headers) as r:
        async for _chunk in r.aiter_text():
            arrivals.append(time.monotonic())

    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] >= 0.12  # three pauses of 0.05 s, less jitter


# The request log and client disconnects


async def test_request_log(server: EmulatorServer, client: httpx.AsyncClient) -> None:
    before = time.time()
    await client.post(OPENAI_PATH, json=chat("log me", stream=True, temperature=0.5))

    [entry] = server.app.requests
    assert entry["path"] == f"/client/v4{OPENAI_PATH}"
    assert entry["model"] == LLAMA
    assert entry["stream"] is True
    assert entry["messages"] == user("log me")
    assert entry["params"] == {"temperature": 0.5}
    assert entry["authorization_ok"] is True
    assert entry["status"] == 200
    assert entry["tokens_sent"] == 20
    assert entry["outcome"] == "completed"
    assert before <= entry["started"] <= entry["ended"] <= time.time()
    assert server.app.open_streams == 0


async def test_client_disconnect_mid_stream(
    server: EmulatorServer, client: httpx.AsyncClient
) -> None:
    headers = {"X-Emulator-Token-Delay": "0.2"}
    async with client.stream("POST", OPENAI_PATH, json=chat(stream=True), headers=headers) as r:
        async for _chunk in r.aiter_bytes():
            break
        assert server.app.open_streams == 1
    hung_up = time.time()

    entry = await outcome_of(server.app, within=1.0)
    assert entry["outcome"] == "client_disconnected"
    assert entry["ended"] - hung_up < 1.0
    assert 1 <= entry["tokens_sent"] < 20
    assert server.app.open_streams == 0


async def test_client_disconnect_during_hang(
    server: EmulatorServer, client: httpx.AsyncClient
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.post(OPENAI_PATH, json=chat("[[fault:hang:30]]"), timeout=0.2)
    hung_up = time.time()

    entry = await outcome_of(server.app, within=1.0)
    assert entry["outcome"] == "client_disconnected"
    assert entry["status"] is None
    assert entry["ended"] - hung_up < 1.0


# The control API


async def test_control_api(server: EmulatorServer) -> None:
    async with httpx.AsyncClient(base_url=f"{server.base_url}/__emulator") as control:
        queued = await control.post(
            "/faults", json={"fault": "error:429:3040", "count": 2, "retry_after": 1}
        )
        assert queued.status_code == 200
        assert (await control.get("/faults")).json() == [
            {"fault": "error:429:3040:1", "count": 2, "path_contains": None}
        ]
        upstream = await control.post(
            f"{server.api_base_url}{OPENAI_PATH}",
            json=chat(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert_cf_error(upstream, 429, 3040)
        assert (await control.get("/faults")).json()[0]["count"] == 1

        log = (await control.get("/requests")).json()
        assert [entry["status"] for entry in log] == [429]
        health = (await control.get("/health")).json()
        assert health == {"status": "ok", "open_streams": 0, "requests": 1}

        assert (await control.delete("/faults")).status_code == 200
        assert (await control.delete("/requests")).status_code == 200
        assert (await control.get("/faults")).json() == []
        assert (await control.get("/requests")).json() == []


@pytest.mark.parametrize(
    "payload",
    [
        {"fault": "nonsense"},
        {"fault": "drop:1", "count": 0},
        [{"fault": "drop:1"}, {"count": 1}],
        "drop:1",
    ],
)
async def test_control_api_rejects_bad_faults(server: EmulatorServer, payload: Any) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as control:
        response = await control.post("/__emulator/faults", json=payload)

    assert response.status_code == 400
    assert server.app.faults.pending() == []


async def test_control_api_queues_a_list(server: EmulatorServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as control:
        response = await control.post(
            "/__emulator/faults",
            json=[{"fault": "hang:0.1,nousage"}, {"fault": "drop:1", "path_contains": "/run/"}],
        )

    assert [q["fault"] for q in response.json()["queued"]] == ["hang:0.1,nousage", "drop:1"]
    assert len(server.app.faults.pending()) == 2


# The server and the management command


def test_server_starts_fast_and_stops_cleanly() -> None:
    started = time.monotonic()
    emulator = EmulatorServer().start()
    try:
        assert time.monotonic() - started < 1.0
        assert emulator.port > 0
        assert emulator.base_url == f"http://127.0.0.1:{emulator.port}"
        assert httpx.get(f"{emulator.base_url}/__emulator/health").json()["status"] == "ok"
    finally:
        stopping = time.monotonic()
        emulator.stop()
    assert time.monotonic() - stopping < 1.0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emulator.base_url}/__emulator/health")


async def test_stop_ends_pending_responses_at_once() -> None:
    emulator = EmulatorServer().start()
    headers = {"Authorization": "Bearer any", "X-Emulator-Token-Delay": "30"}
    async with httpx.AsyncClient(base_url=emulator.api_base_url, headers=headers) as http:
        hanging = asyncio.create_task(http.post(RUN_QWQ, json={"prompt": "[[fault:hang:30]]"}))
        async with http.stream("POST", RUN_QWQ, json={"prompt": "hi", "stream": True}) as stream:
            await eventually(lambda: len(emulator.app.requests) == 2)
            stopping = time.monotonic()
            await asyncio.to_thread(emulator.stop)
            assert time.monotonic() - stopping < 1.0
            streamed = await stream.aread()
        response = await hanging

    assert_cf_error(response, 503, 0)
    assert streamed == b""
    assert [entry["outcome"] for entry in emulator.app.requests] == ["cancelled", "cancelled"]


def test_command_serves_the_configured_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from copilotedge.management.commands import copilotedge_emulator

    served: list[tuple[EmulatorApp, str, int]] = []

    def serve(app: EmulatorApp, host: str, port: int, on_ready: Any, access_log: Any) -> bool:
        served.append((app, host, port))
        on_ready(("127.0.0.1", 43210))
        return True

    monkeypatch.setattr(copilotedge_emulator, "serve", serve)
    out = StringIO()
    call_command("copilotedge_emulator", port=0, tokens=5, token_delay=0.01, stdout=out)

    [(app, host, port)] = served
    assert (app.tokens, app.token_delay, host, port) == (5, 0.01, "127.0.0.1", 0)
    [line] = out.getvalue().splitlines()
    assert "development tool" in line
    assert "COPILOTEDGE_API_BASE_URL=http://127.0.0.1:43210/client/v4" in line


def test_command_says_when_it_cannot_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    from copilotedge.management.commands import copilotedge_emulator

    monkeypatch.setattr(copilotedge_emulator, "serve", lambda *args: False)
    with pytest.raises(CommandError, match=r"Cannot listen on 127\.0\.0\.1:8788"):
        call_command("copilotedge_emulator", stdout=StringIO())


def test_the_command_and_the_package_import_without_uvicorn() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "import copilotedge.testing\n"
        "from copilotedge.management.commands import copilotedge_emulator\n"
        "try:\n"
        "    copilotedge.testing.EmulatorServer().start()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert 'pip install "copilotedge[testing]"' in done.stdout


def test_command_runs_in_the_foreground() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    command = [sys.executable, "-m", "django", "copilotedge_emulator", "--port", "0"]
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split("listening on ")[1].split(";")[0]
        assert httpx.get(f"{url}/__emulator/health", timeout=5).json()["status"] == "ok"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
