"""The upstream client: routing, payloads, both stream shapes and the error boundary."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from django.test import override_settings

from copilotedge import exceptions
from copilotedge.chat.deltas import Delta, ToolCallDelta, Usage
from copilotedge.testing import EmulatorServer
from copilotedge.upstream import client as cloudflare
from copilotedge.upstream import requests as upstream_requests
from copilotedge.upstream.requests import Upstream
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

META = "@cf/meta/llama-3.1-8b-instruct"
QWEN = "@cf/qwen/qwq-32b"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TOKEN = "tok-SECRET-5f1c"  # distinctive, so a leak is easy to spot


def sent(route: respx.Route) -> dict[str, Any]:
    return json.loads(route.calls.last.request.content)  # type: ignore[no-any-return]


async def stream_deltas(
    model: str = META, params: dict[str, Any] | None = None, upstream: Upstream | None = None
) -> list[Delta]:
    stream = await cloudflare.open_stream(model, MESSAGES, params or {}, upstream)
    return [delta async for delta in stream]


def texts(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


# -- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "route"),
    [
        ("@cf/meta/llama-3.1-8b-instruct", "openai"),
        ("@cf/meta/llama-4-scout-17b-16e-instruct", "openai"),
        ("@cf/mistral/mistral-7b-instruct-v0.1", "openai"),
        ("@cf/google/gemma-3-12b-it", "openai"),
        ("@cf/mistralai/mistral-small-3.1-24b-instruct", "run"),
        ("@cf/qwen/qwq-32b", "run"),
        ("@cf/deepseek-ai/deepseek-r1-distill-qwen-32b", "run"),
        ("@hf/nousresearch/hermes-2-pro-mistral-7b", "run"),
    ],
)
def test_default_routes(model: str, route: str) -> None:
    assert upstream_requests.route_for(model) == route


@override_settings(COPILOTEDGE_ROUTES={"@cf/qwen/*": "openai", "*": "run"})
def test_custom_routes_replace_the_default_table() -> None:
    assert upstream_requests.route_for(QWEN) == "openai"
    assert upstream_requests.route_for(META) == "run"


@override_settings(
    COPILOTEDGE_ROUTES={"@cf/meta/llama-3.1-8b-instruct": "run", "@cf/meta/*": "openai"}
)
def test_first_matching_glob_wins() -> None:
    assert upstream_requests.route_for(META) == "run"
    assert upstream_requests.route_for("@cf/meta/llama-3.2-1b-instruct") == "openai"


@override_settings(COPILOTEDGE_ROUTES={"@cf/meta/*": "openai"})
def test_a_model_no_glob_matches_goes_to_ai_run() -> None:
    assert upstream_requests.route_for(QWEN) == "run"


@override_settings(COPILOTEDGE_ROUTES={"@cf/qwen/*": "openai", "*": "run"})
async def test_custom_routes_decide_the_url(upstream: respx.MockRouter) -> None:
    openai = upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("q")))
    run = upstream.post(run_url(META)).respond(200, content=sse_body(run_frame("m")))
    assert texts(await stream_deltas(QWEN)) == "q"
    assert texts(await stream_deltas(META)) == "m"
    assert sent(openai)["model"] == QWEN
    assert run.call_count == 1


async def test_an_upstream_without_account_is_a_plain_openai_base(
    upstream: respx.MockRouter,
) -> None:
    route = upstream.post("https://gateway.test/v1/chat/completions").respond(
        200, content=sse_body(openai_chunk("x"))
    )
    plain = Upstream("https://gateway.test/v1", "other-token")
    assert texts(await stream_deltas(QWEN, upstream=plain)) == "x"
    assert sent(route)["model"] == QWEN
    assert route.calls.last.request.headers["Authorization"] == "Bearer other-token"


# -- payloads ---------------------------------------------------------------------------

ALL_PARAMS: dict[str, Any] = {
    "temperature": 0.2,
    "max_tokens": 64,
    "top_p": 0.9,
    "stop": ["END"],
    "seed": 7,
    "frequency_penalty": 0.1,
    "presence_penalty": 0.3,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
}


async def test_openai_route_streaming_payload(upstream: respx.MockRouter) -> None:
    route = upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("x")))
    extra = {"logit_bias": {"1": 2}, "user": "u", "n": 3, "top_k": None}
    await stream_deltas(META, {**ALL_PARAMS, **extra})
    assert sent(route) == {
        **ALL_PARAMS,
        "model": META,
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_openai_route_non_streaming_payload(upstream: respx.MockRouter) -> None:
    route = upstream.post(OPENAI_URL).respond(
        200, json={"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}
    )
    await cloudflare.complete(META, MESSAGES, {"temperature": 0.5, "max_tokens": None})
    assert sent(route) == {"temperature": 0.5, "model": META, "messages": MESSAGES, "stream": False}


async def test_run_route_sends_messages_and_its_own_params(upstream: respx.MockRouter) -> None:
    route = upstream.post(run_url(QWEN)).respond(200, content=sse_body(run_frame("x")))
    await stream_deltas(QWEN, ALL_PARAMS)
    payload = sent(route)
    assert payload["messages"] == MESSAGES
    assert "prompt" not in payload
    assert payload["stream"] is True
    # The model is in the URL; /ai/run knows neither stop nor tool_choice nor stream_options.
    assert not {"model", "stop", "tool_choice", "stream_options"} & payload.keys()
    assert payload["tools"] == ALL_PARAMS["tools"]
    assert payload["temperature"] == 0.2 and payload["seed"] == 7


async def test_bearer_token_and_json_content_type(upstream: respx.MockRouter) -> None:
    route = upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("x")))
    with override_settings(COPILOTEDGE_API_TOKEN=TOKEN):
        await stream_deltas()
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "half a pair: \ud83d"}],
        [
            {"role": "user", "content": "x"},
            {"role": "tool", "content": "\udfff", "tool_call_id": "a"},
        ],
    ],
)
async def test_text_that_utf8_cannot_hold_is_still_sent(
    upstream: respx.MockRouter, messages: list[dict[str, Any]]
) -> None:
    # JSON may carry a lone surrogate escape; it must reach upstream as an escape, not crash.
    route = upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("x")))
    stream = await cloudflare.open_stream(META, messages, {})
    assert texts([d async for d in stream]) == "x"
    assert sent(route)["messages"] == messages


# -- stream shapes ----------------------------------------------------------------------


async def test_run_frames_are_normalised(upstream: respx.MockRouter) -> None:
    upstream.post(run_url(QWEN)).respond(
        200,
        content=sse_body(
            run_frame("Hel"), run_frame("lo"), run_frame(usage={**USAGE, "neurons": 3.5})
        ),
    )
    deltas = await stream_deltas(QWEN)
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    assert [d.usage for d in deltas[:2]] == [None, None]
    assert deltas[-1].usage == Usage(11, 7, 18, neurons=3.5)


async def test_openai_frames_are_normalised(upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(
        200,
        content=sse_body(
            {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
            openai_chunk("Hel"),
            openai_chunk("lo"),
            openai_chunk(None, "length"),
            {"id": "x", "choices": [], "usage": USAGE},
        ),
    )
    deltas = await stream_deltas(META)
    assert texts(deltas) == "Hello"
    assert [d.finish_reason for d in deltas] == [None, None, None, "length", None]
    assert deltas[-1].usage == Usage(11, 7, 18)


async def test_openai_frames_on_ai_run_are_normalised(upstream: respx.MockRouter) -> None:
    # Newer models answer /ai/run with OpenAI chunks.
    model = "@cf/openai/gpt-oss-20b"
    upstream.post(run_url(model)).respond(
        200, content=sse_body(openai_chunk("a"), openai_chunk("b", "stop"))
    )
    with override_settings(COPILOTEDGE_MODELS=[model]):
        deltas = await stream_deltas(model)
    assert texts(deltas) == "ab"
    assert deltas[-1].finish_reason == "stop"


async def test_openai_tool_call_deltas(upstream: respx.MockRouter) -> None:
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    frames = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                    "finish_reason": None,
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        },
    ]
    upstream.post(OPENAI_URL).respond(200, content=sse_body(*frames))
    deltas = await stream_deltas(META)
    assert [d.tool_calls for d in deltas] == [
        [ToolCallDelta(index=0, id="call_1", name="weather", arguments="")],
        [ToolCallDelta(index=0, arguments='{"city":')],
        [ToolCallDelta(index=0, arguments='"Paris"}')],
    ]
    assert deltas[-1].finish_reason == "tool_calls"


async def test_run_tool_calls_with_object_arguments(upstream: respx.MockRouter) -> None:
    call = {"name": "weather", "arguments": {"city": "Paris"}}
    upstream.post(run_url(QWEN)).respond(
        200, content=sse_body(run_frame("", tool_calls=[call]), run_frame(usage=USAGE))
    )
    deltas = await stream_deltas(QWEN)
    [piece] = deltas[0].tool_calls
    assert (piece.index, piece.name, json.loads(piece.arguments)) == (
        0,
        "weather",
        {"city": "Paris"},
    )


async def test_run_json_mode_object_response_becomes_text(upstream: respx.MockRouter) -> None:
    upstream.post(run_url(QWEN)).respond(200, content=sse_body(run_frame({"a": 1})))  # type: ignore[arg-type]
    assert json.loads(texts(await stream_deltas(QWEN))) == {"a": 1}


async def test_usage_is_never_assumed(upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("a", "stop")))
    upstream.post(run_url(QWEN)).respond(200, content=sse_body(run_frame("a")))
    for model in (META, QWEN):
        assert all(d.usage is None for d in await stream_deltas(model))


async def test_frames_split_across_chunks_anywhere(upstream: respx.MockRouter) -> None:
    raw = sse_body(run_frame("h\u00e9llo "), run_frame("w\u00f6rld \U0001f600"))
    body = UpstreamBody(*(raw[i : i + 3] for i in range(0, len(raw), 3)))
    upstream.post(run_url(QWEN)).mock(side_effect=respond_with(body))
    assert texts(await stream_deltas(QWEN)) == "h\u00e9llo w\u00f6rld \U0001f600"


async def test_nothing_after_done_is_parsed(upstream: respx.MockRouter) -> None:
    body = UpstreamBody(*sse_chunks(run_frame("a")), sse_body(run_frame("never"), done=False))
    upstream.post(run_url(QWEN)).mock(side_effect=respond_with(body))
    assert texts(await stream_deltas(QWEN)) == "a"
    # The rest of the body is read (so the connection can be reused), then closed.
    await asyncio.wait_for(body.hung_up.wait(), 1.0)
    assert body.sent == 3


class LingeringBody(UpstreamBody):
    """An upstream that sends [DONE] but ends its body only seconds later."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield sse_body(openai_chunk("a"))
        self.sent = 1
        await asyncio.sleep(5)
        yield b": bye\n\n"


async def test_an_upstream_slow_to_end_its_body_does_not_delay_the_answer(
    upstream: respx.MockRouter,
) -> None:
    body = LingeringBody()
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    started = time.monotonic()
    assert texts(await stream_deltas()) == "a"
    assert time.monotonic() - started < 0.5
    # Given up on after a second: the connection is closed, not kept waiting.
    await asyncio.wait_for(body.hung_up.wait(), 2.0)


async def test_complete_openai_body(upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(
        200,
        json={
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi"},
                    "finish_reason": "length",
                }
            ],
            "usage": USAGE,
        },
    )
    delta = await cloudflare.complete(META, MESSAGES, {})
    assert (delta.text, delta.finish_reason, delta.usage) == ("Hi", "length", Usage(11, 7, 18))


async def test_complete_run_envelope(upstream: respx.MockRouter) -> None:
    upstream.post(run_url(QWEN)).respond(
        200, json={"result": {"response": "Hi", "usage": USAGE}, "success": True, "errors": []}
    )
    delta = await cloudflare.complete(QWEN, MESSAGES, {})
    assert (delta.text, delta.finish_reason, delta.usage) == ("Hi", "stop", Usage(11, 7, 18))


async def test_complete_run_tool_calls_finish_with_tool_calls(upstream: respx.MockRouter) -> None:
    upstream.post(run_url(QWEN)).respond(
        200,
        json={
            "result": {"response": None, "tool_calls": [{"name": "f", "arguments": {}}]},
            "success": True,
        },
    )
    delta = await cloudflare.complete(QWEN, MESSAGES, {})
    assert (delta.text, delta.finish_reason, delta.tool_calls[0].name) == ("", "tool_calls", "f")


async def test_complete_without_usage_has_none(upstream: respx.MockRouter) -> None:
    upstream.post(run_url(QWEN)).respond(200, json={"result": {"response": "x"}, "success": True})
    assert (await cloudflare.complete(QWEN, MESSAGES, {})).usage is None


# -- errors -----------------------------------------------------------------------------


async def fail_both_ways(
    upstream: respx.MockRouter, **respond: Any
) -> list[exceptions.UpstreamError]:
    """The error of a streamed and of a non-streamed request to an upstream answering so."""
    upstream.post(OPENAI_URL).respond(**respond)
    errors = []
    for call in (
        cloudflare.open_stream(META, MESSAGES, {}),
        cloudflare.complete(META, MESSAGES, {}),
    ):
        with pytest.raises(exceptions.UpstreamError) as caught:
            await call
        errors.append(caught.value)
    return errors


def cf_errors(code: int, message: str = "upstream detail") -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "result": None}


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_a_configuration_error(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    with override_settings(COPILOTEDGE_API_TOKEN=TOKEN):
        errors = await fail_both_ways(upstream, status_code=status, json=cf_errors(10000, TOKEN))
    for error in errors:
        assert isinstance(error, exceptions.UpstreamConfigurationError)
        assert (error.status_code, error.code, error.upstream_code) == (
            502,
            "upstream_configuration",
            10000,
        )
        assert TOKEN not in json.dumps(error.to_dict())
    hints = [r for r in caplog.records if r.name == "copilotedge.upstream.client"]
    assert hints and all(r.levelno == logging.ERROR for r in hints)
    assert "COPILOTEDGE_API_TOKEN" in hints[0].getMessage()
    assert str(status) in hints[0].getMessage()
    assert TOKEN not in caplog.text


async def test_unknown_model(upstream: respx.MockRouter) -> None:
    for error in await fail_both_ways(upstream, status_code=404, json=cf_errors(5007)):
        assert isinstance(error, exceptions.ModelNotFound)
        assert (error.status_code, error.code, error.upstream_code) == (
            404,
            "model_not_found",
            5007,
        )


async def test_429_capacity_keeps_code_and_retry_after(upstream: respx.MockRouter) -> None:
    errors = await fail_both_ways(
        upstream, status_code=429, json=cf_errors(3040), headers={"Retry-After": "7"}
    )
    for error in errors:
        assert isinstance(error, exceptions.UpstreamRateLimited)
        assert (error.status_code, error.code, error.upstream_code) == (
            429,
            "upstream_capacity",
            3040,
        )
        assert error.retry_after == 7.0
        assert error.retryable


async def test_429_daily_quota(upstream: respx.MockRouter) -> None:
    errors = await fail_both_ways(
        upstream, status_code=429, json=cf_errors(3036), headers={"Retry-After": "3600"}
    )
    for error in errors:
        assert isinstance(error, exceptions.UpstreamQuotaExceeded)
        assert (error.status_code, error.code, error.upstream_code) == (
            429,
            "upstream_quota_exceeded",
            3036,
        )
        assert error.retry_after == 3600.0
        assert not error.retryable


async def test_429_without_retry_after_or_body(upstream: respx.MockRouter) -> None:
    for error in await fail_both_ways(upstream, status_code=429, content=b"slow down"):
        assert isinstance(error, exceptions.UpstreamRateLimited)
        assert (error.upstream_code, error.retry_after) == (None, None)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx(upstream: respx.MockRouter, status: int) -> None:
    body = cf_errors(3043, "internal: node-17 exploded")
    for error in await fail_both_ways(upstream, status_code=status, json=body):
        assert type(error) is exceptions.UpstreamError
        assert (error.status_code, error.code, error.upstream_code) == (502, "upstream_error", 3043)
        assert "node-17" not in json.dumps(error.to_dict())


async def test_other_4xx_is_rejected_with_code_only(upstream: respx.MockRouter) -> None:
    body = cf_errors(5006, "Type mismatch of '/messages/0/content' secret-detail")
    for error in await fail_both_ways(upstream, status_code=400, json=body):
        assert isinstance(error, exceptions.UpstreamRejected)
        assert (error.status_code, error.code, error.upstream_code) == (
            400,
            "upstream_rejected",
            5006,
        )
        assert "secret-detail" not in error.message


async def test_huge_error_body_is_not_read_whole(upstream: respx.MockRouter) -> None:
    body = UpstreamBody(*([b"x" * 65536] * 100))
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body, status=500))
    with pytest.raises(exceptions.UpstreamError):
        await cloudflare.open_stream(META, MESSAGES, {})
    assert body.sent <= 2
    assert body.closed


@pytest.mark.parametrize(
    ("raised", "expected", "code"),
    [
        (httpx.ConnectError("refused"), exceptions.UpstreamError, "upstream_unreachable"),
        (httpx.RemoteProtocolError("bad"), exceptions.UpstreamError, "upstream_unreachable"),
        (httpx.ConnectTimeout("slow"), exceptions.UpstreamTimeout, "upstream_timeout"),
        (httpx.ReadTimeout("slow"), exceptions.UpstreamTimeout, "upstream_timeout"),
        (httpx.PoolTimeout("full"), exceptions.UpstreamTimeout, "upstream_timeout"),
    ],
)
async def test_transport_errors(
    upstream: respx.MockRouter, raised: Exception, expected: type, code: str
) -> None:
    upstream.post(OPENAI_URL).mock(side_effect=raised)
    for call in (
        cloudflare.open_stream(META, MESSAGES, {}),
        cloudflare.complete(META, MESSAGES, {}),
    ):
        with pytest.raises(exceptions.UpstreamError) as caught:
            await call
        assert type(caught.value) is expected
        assert caught.value.code == code


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"'])
async def test_malformed_json_body(upstream: respx.MockRouter, body: bytes) -> None:
    upstream.post(OPENAI_URL).respond(200, content=body)
    with pytest.raises(exceptions.UpstreamError) as caught:
        await cloudflare.complete(META, MESSAGES, {})
    assert caught.value.code == "upstream_malformed"
    assert caught.value.status_code == 502


@pytest.mark.parametrize(
    "payload",
    [
        {"choices": ["not an object"]},
        {"choices": [{"delta": "text"}]},
        {"choices": [{"delta": {"content": 42}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": "first", "function": {}}]}}]},
        {"response": "x", "usage": {"prompt_tokens": "many"}},
        {"response": "x", "tool_calls": [{"index": None, "name": "f"}]},
    ],
)
async def test_malformed_body_shapes(upstream: respx.MockRouter, payload: dict[str, Any]) -> None:
    upstream.post(OPENAI_URL).respond(200, json=payload)
    with pytest.raises(exceptions.UpstreamError) as caught:
        await cloudflare.complete(META, MESSAGES, {})
    assert caught.value.code == "upstream_malformed"


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        '["a list"]',
        '{"choices": ["not an object"]}',
        '{"choices": [{"delta": {"content": ["a"]}}]}',
        '{"response": "x", "usage": {"completion_tokens": "seven"}}',
    ],
)
async def test_malformed_stream_frame(upstream: respx.MockRouter, frame: str) -> None:
    body = UpstreamBody(*sse_chunks(openai_chunk("ok"), frame))
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    got = []
    with pytest.raises(exceptions.UpstreamError) as caught:
        async for delta in stream:
            got.append(delta.text)
    assert got == ["ok"]
    assert caught.value.code == "upstream_malformed"
    assert body.closed


async def test_error_frame_mid_stream(upstream: respx.MockRouter) -> None:
    upstream.post(run_url(QWEN)).respond(
        200, content=sse_body(run_frame("a"), cf_errors(3040), done=False)
    )
    stream = await cloudflare.open_stream(QWEN, MESSAGES, {})
    with pytest.raises(exceptions.UpstreamError):
        async for _ in stream:
            pass


async def test_stream_ending_without_done_is_incomplete(upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("a"), done=False))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    got = []
    with pytest.raises(exceptions.UpstreamError) as caught:
        async for delta in stream:
            got.append(delta.text)
    assert (got, caught.value.code) == (["a"], "upstream_incomplete")


async def test_connection_breaking_mid_stream_is_incomplete(upstream: respx.MockRouter) -> None:
    body = UpstreamBody(*sse_chunks(openai_chunk("a"), done=False), error=httpx.ReadError("reset"))
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    with pytest.raises(exceptions.UpstreamError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code == "upstream_incomplete"
    assert body.closed


async def test_read_timeout_mid_stream(upstream: respx.MockRouter) -> None:
    body = UpstreamBody(*sse_chunks(openai_chunk("a"), done=False), error=httpx.ReadTimeout("x"))
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    with pytest.raises(exceptions.UpstreamTimeout):
        async for _ in stream:
            pass


@override_settings(COPILOTEDGE_TOTAL_TIMEOUT=0.2)
async def test_total_timeout_ends_a_trickling_stream(upstream: respx.MockRouter) -> None:
    body = UpstreamBody(*sse_chunks(*[openai_chunk("t")] * 50), delay=0.02)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    with pytest.raises(exceptions.UpstreamTimeout):
        async for _ in stream:
            pass
    assert body.sent < 20
    assert body.closed


async def test_aclose_hangs_up_at_once(upstream: respx.MockRouter) -> None:
    body = UpstreamBody(*sse_chunks(*[openai_chunk("t")] * 50), delay=0.01)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    async for _ in stream:
        break
    await stream.aclose()
    assert stream.closed and body.closed
    assert body.sent < 5


async def test_token_never_in_logs_or_errors(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[Any] = [
        httpx.Response(401, json=cf_errors(10000, TOKEN)),
        httpx.Response(500, text=f"Authorization: Bearer {TOKEN}"),
        httpx.Response(429, json=cf_errors(3040, TOKEN)),
        httpx.ConnectError(f"connect {TOKEN}"),
        httpx.Response(200, content=sse_body("{bad", done=False)),
    ]
    upstream.post(OPENAI_URL).mock(side_effect=answers)
    with override_settings(COPILOTEDGE_API_TOKEN=TOKEN):
        for _ in answers:
            try:
                async for _ in await cloudflare.open_stream(META, MESSAGES, {}):
                    pass
            except exceptions.UpstreamError as error:
                assert TOKEN not in repr(error.__dict__)
    assert caplog.records  # httpx and our hint did log
    assert TOKEN not in caplog.text


# -- the shared client ------------------------------------------------------------------


async def test_one_client_per_event_loop() -> None:
    client = cloudflare.get_client()
    assert cloudflare.get_client() is client
    other: list[httpx.AsyncClient] = []

    def in_another_loop() -> None:
        async def get() -> None:
            other.append(cloudflare.get_client())
            await cloudflare.close_client()

        asyncio.run(get())

    await asyncio.to_thread(in_another_loop)
    assert other[0] is not client and other[0].is_closed
    assert cloudflare.get_client() is client


async def test_client_timeouts_come_from_settings() -> None:
    await cloudflare.close_client()
    with override_settings(COPILOTEDGE_CONNECT_TIMEOUT=1.5, COPILOTEDGE_READ_TIMEOUT=9.0):
        client = cloudflare.get_client()
    assert (client.timeout.connect, client.timeout.read) == (1.5, 9.0)
    assert "authorization" not in client.headers
    await cloudflare.close_client()


async def test_aclose_client_then_a_fresh_one() -> None:
    client = cloudflare.get_client()
    await cloudflare.close_client()
    assert client.is_closed
    fresh = cloudflare.get_client()
    assert fresh is not client and not fresh.is_closed


async def test_concurrent_streams_share_the_client(upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).mock(
        side_effect=lambda request: httpx.Response(200, content=sse_body(openai_chunk("x")))
    )
    results = await asyncio.gather(*(stream_deltas() for _ in range(10)))
    assert [texts(r) for r in results] == ["x"] * 10


async def test_frames_before_a_malformed_one_in_the_same_read_still_arrive(
    upstream: respx.MockRouter,
) -> None:
    raw = sse_body(openai_chunk("a"), openai_chunk("b"), "{broken", done=False)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(UpstreamBody(raw)))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    got = []
    with pytest.raises(exceptions.UpstreamError) as caught:
        async for delta in stream:
            got.append(delta.text)
    assert (got, caught.value.code) == (["a", "b"], "upstream_malformed")


async def test_batches_group_the_frames_of_one_read(upstream: respx.MockRouter) -> None:
    body = UpstreamBody(sse_body(openai_chunk("a"), openai_chunk("b"), done=False), sse_body())
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    assert [[d.text for d in batch] async for batch in stream.batches()] == [["a", "b"]]


async def test_closing_the_delta_iterator_hangs_up_at_once(upstream: respx.MockRouter) -> None:
    body = UpstreamBody(*sse_chunks(*[openai_chunk("t")] * 50), delay=0.01)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    stream = await cloudflare.open_stream(META, MESSAGES, {})
    deltas = aiter(stream)
    assert (await anext(deltas)).text == "t"
    await deltas.aclose()  # type: ignore[attr-defined]
    assert body.closed and stream.closed


async def test_connections_are_reused_after_done(emulator: EmulatorServer) -> None:
    # Against a real server: the body is read to its end after [DONE], in the background,
    # and the connection goes back to the pool for the next answer.
    await cloudflare.close_client()
    with override_settings(
        COPILOTEDGE_API_BASE_URL=emulator.api_base_url, COPILOTEDGE_ACCOUNT_ID="acc"
    ):
        emulator.app.clear_requests()
        for model in (META, QWEN, META):
            assert texts(await stream_deltas(model))
            await asyncio.gather(*cloudflare._draining)
        clients = {tuple(entry["client"]) for entry in emulator.app.requests}
        assert len(clients) == 1  # one connection (one client port) served all three
    await cloudflare.close_client()


async def test_requests_go_to_the_least_busy_pool_and_leave_it_when_closed(
    upstream: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cloudflare.close_client()
    monkeypatch.setattr(cloudflare, "POOL_SIZE", 2)
    upstream.post(OPENAI_URL).mock(
        side_effect=[
            *[httpx.Response(200, content=sse_body(openai_chunk("x")))] * 3,
            httpx.Response(500, json={"success": False, "errors": []}),
            httpx.ConnectError("refused"),
        ]
    )
    with override_settings(COPILOTEDGE_MAX_CONNECTIONS=4):
        pools = cloudflare._loop_pools()
        assert len(pools.clients) == 2
        held = [await cloudflare.open_stream(META, MESSAGES, {}) for _ in range(3)]
        assert pools.busy == [2, 1]
        assert [stream._lease.client for stream in held] == [
            pools.clients[0], pools.clients[1], pools.clients[0]
        ]  # fmt: skip
        for stream in held:
            assert texts([delta async for delta in stream]) == "x"
        await asyncio.gather(*cloudflare._draining)
        assert pools.busy == [0, 0]
        for failing in (exceptions.UpstreamError, exceptions.UpstreamError):
            with pytest.raises(failing):
                await cloudflare.open_stream(META, MESSAGES, {})
        assert pools.busy == [0, 0]  # an error answer or no answer gives its place back
    await cloudflare.close_client()
