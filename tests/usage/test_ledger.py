"""The usage ledger: one correct row for every HTTP path, prices and estimates."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx
from django.core.asgi import get_asgi_application
from django.test import AsyncClient, override_settings

from copilotedge.auth import Principal
from copilotedge.chat import token_estimates as tokens
from copilotedge.chat.deltas import Usage
from copilotedge.chat.types import TurnRecord
from copilotedge.upstream import response_cache as cache
from copilotedge.usage import ledger as usage
from tests.helpers import OPENAI_URL, openai_chunk, read_stream, run_url, sse_body

MODEL = "@cf/meta/llama-3.1-8b-instruct"  # served over the OpenAI-compatible route
RUN_MODEL = "@cf/qwen/qwq-32b"  # served over /ai/run
MESSAGES = [{"role": "user", "content": "Say hello to the ledger."}]
UPSTREAM_USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}

pytestmark = pytest.mark.django_db(transaction=True)


def chat_body(**extra: Any) -> str:
    return json.dumps({"model": MODEL, "messages": MESSAGES, **extra})


def metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- offline estimates and prices ----------------------------------------------------------


def test_estimate_counts_scripts_digits_and_punctuation_not_just_characters() -> None:
    assert tokens.estimate_tokens("") == 0
    assert tokens.estimate_tokens("The quick brown fox jumps over the lazy dog.") == 10
    # Characters / 4 would say 1 for these four characters; tokenizers spend about one each.
    assert tokens.estimate_tokens("你好世界") >= 4
    # Llama 3 splits digits into groups of three.
    assert tokens.estimate_tokens("3141592653") == 4


def test_prompt_estimate_includes_framing_tool_calls_and_tool_definitions() -> None:
    plain = [{"role": "user", "content": "What is the weather?"}]
    base = tokens.estimate_prompt_tokens(plain)
    assert base == tokens.estimate_tokens("What is the weather?") + 4 + 3
    with_call = [
        *plain,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
            ],
        },
    ]
    assert tokens.estimate_prompt_tokens(with_call) > base + 4
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    assert tokens.estimate_prompt_tokens(plain, {"tools": [tool]}) > base
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the weather?"}]}]
    assert tokens.estimate_prompt_tokens(parts) == base


def test_cost_from_the_price_table_in_decimal() -> None:
    # 0.282 and 0.827 USD per million input/output tokens.
    assert usage.cost_of(MODEL, 1_000_000, 1_000_000, None) == Decimal("1.10900000")
    assert usage.cost_of(MODEL, 1000, 0, None) == Decimal("0.00028200")


def test_cost_from_neurons_when_upstream_reports_them() -> None:
    assert usage.cost_of(MODEL, 10, 10, 1000.0) == Decimal("0.01100000")


@override_settings(COPILOTEDGE_PRICES={"@cf/a/*": ("1", "2"), "@cf/b/x": ("3", "4")})
def test_unknown_model_is_never_free(caplog: pytest.LogCaptureFixture) -> None:
    assert usage.price_of("@cf/a/anything") == (Decimal(1), Decimal(2))
    assert usage.has_price("@cf/a/anything") and not usage.has_price("@cf/c/new")
    with caplog.at_level(logging.WARNING, "copilotedge.usage.ledger"):
        # Not in the table: the table's highest input and output prices.
        assert usage.price_of("@cf/c/new") == (Decimal(3), Decimal(4))
    assert "@cf/c/new" in caplog.text
    with override_settings(COPILOTEDGE_DEFAULT_PRICE=("0.5", "0.25")):
        assert usage.cost_of("@cf/c/new", 2_000_000, 4_000_000, None) == Decimal("2.00000000")


async def test_a_cache_hit_records_the_cost_it_saved(user: Any) -> None:
    turn = TurnRecord(
        id=uuid.uuid4(),
        principal=Principal(user=user),
        protocol="openai",
        model_requested=MODEL,
        model_served=MODEL,
        messages=MESSAGES,
        params={},
        attempts=0,  # served from the cache: nothing went upstream
        cache_status=cache.HIT,
        text="Hello",
        usage=Usage(100, 50, 150),
    )
    record = usage.build_record(turn)
    assert record.cache_hit is True
    assert record.cost == 0
    assert record.cost_saved == usage.cost_of(MODEL, 100, 50, None) > 0


# --- one row per HTTP path -----------------------------------------------------------------


async def test_streamed_openai_row_uses_upstream_usage(
    upstream: respx.MockRouter, auth: dict[str, str], api_key: Any, usage_row: Any
) -> None:
    frames = [openai_chunk("Hel"), openai_chunk("lo"), openai_chunk(None, "stop")]
    frames.append({"choices": [], "usage": UPSTREAM_USAGE})
    upstream.post(OPENAI_URL).respond(200, content=sse_body(*frames))
    before = metric("copilotedge_requests_total", protocol="openai", model=MODEL, outcome="ok")
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions",
        chat_body(stream=True, stream_options={"include_usage": True}),
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 200
    received = await read_stream(response)
    client_usage = next(f["usage"] for f in received if isinstance(f, dict) and "usage" in f)
    key, _ = api_key
    row = await usage_row(
        protocol="openai",
        outcome="ok",
        model_requested=MODEL,
        model_served=MODEL,
        prompt_tokens=11,
        completion_tokens=3,
        token_source="upstream",
        cost=usage.cost_of(MODEL, 11, 3, None),
        user_id=key.user_id,
        api_key_id=key.pk,
        attempts=1,
        ttft_ms=lambda ms: ms is not None,
    )
    assert client_usage == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    assert str(row.request_id).replace("-", "") in received[0]["id"]  # type: ignore[index]
    after = metric("copilotedge_requests_total", protocol="openai", model=MODEL, outcome="ok")
    assert after == before + 1


async def test_non_streamed_openai_row(
    upstream: respx.MockRouter, auth: dict[str, str], usage_row: Any
) -> None:
    upstream.post(OPENAI_URL).respond(
        200,
        json={
            "choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}],
            "usage": UPSTREAM_USAGE,
        },
    )
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions",
        chat_body(),
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 200
    await usage_row(
        protocol="openai",
        outcome="ok",
        prompt_tokens=11,
        completion_tokens=3,
        token_source="upstream",
        status_code=200,
    )


async def test_run_streamed_row(
    upstream: respx.MockRouter, auth: dict[str, str], usage_row: Any
) -> None:
    body = sse_body(
        {"response": "Hi"}, {"response": " there"}, {"response": "", "usage": UPSTREAM_USAGE}
    )
    upstream.post(run_url(RUN_MODEL)).respond(200, content=body)
    response = await AsyncClient().post(
        f"/copilotedge/ai/run/{RUN_MODEL}",
        json.dumps({"messages": MESSAGES, "stream": True}),
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 200
    await read_stream(response)
    await usage_row(
        protocol="run",
        outcome="ok",
        model_served=RUN_MODEL,
        prompt_tokens=11,
        completion_tokens=3,
        token_source="upstream",
        cost=usage.cost_of(RUN_MODEL, 11, 3, None),
    )


async def test_run_envelope_row(
    upstream: respx.MockRouter, auth: dict[str, str], usage_row: Any
) -> None:
    upstream.post(run_url(RUN_MODEL)).respond(
        200, json={"result": {"response": "Hi there", "usage": UPSTREAM_USAGE}, "success": True}
    )
    response = await AsyncClient().post(
        f"/copilotedge/ai/run/{RUN_MODEL}",
        json.dumps({"messages": MESSAGES}),
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 200
    await usage_row(protocol="run", outcome="ok", prompt_tokens=11, completion_tokens=3)


async def test_no_upstream_usage_is_estimated_and_the_client_sees_the_same_counts(
    upstream: respx.MockRouter, auth: dict[str, str], usage_row: Any
) -> None:
    upstream.post(OPENAI_URL).respond(
        200,
        content=sse_body(
            openai_chunk("Hello, "), openai_chunk("world!"), openai_chunk(None, "stop")
        ),
    )
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions",
        chat_body(stream=True, stream_options={"include_usage": True}),
        content_type="application/json",
        headers=auth,
    )
    received = await read_stream(response)
    client_usage = next(f["usage"] for f in received if isinstance(f, dict) and "usage" in f)
    prompt = tokens.estimate_prompt_tokens(MESSAGES)
    completion = tokens.estimate_tokens("Hello, world!")
    await usage_row(
        outcome="ok",
        token_source="estimated",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=usage.cost_of(MODEL, prompt, completion, None),
    )
    assert client_usage == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def test_upstream_failure_before_the_first_byte(
    upstream: respx.MockRouter, auth: dict[str, str], usage_row: Any
) -> None:
    # The daily quota (3036): not retried, so one attempt.
    upstream.post(OPENAI_URL).respond(
        429, json={"success": False, "errors": [{"code": 3036, "message": "Quota"}]}
    )
    before = metric("copilotedge_upstream_errors_total", code="upstream_quota_exceeded")
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions",
        chat_body(stream=True),
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upstream_quota_exceeded"
    # Upstream refused: nothing was processed, nothing is billed.
    await usage_row(
        outcome="error",
        status_code=429,
        error_code="upstream_quota_exceeded",
        prompt_tokens=0,
        completion_tokens=0,
        cost=Decimal(0),
        ttft_ms=None,
        attempts=1,
    )
    after = metric("copilotedge_upstream_errors_total", code="upstream_quota_exceeded")
    assert after == before + 1


async def test_upstream_failure_mid_stream_counts_the_partial_answer(
    upstream: respx.MockRouter, auth: dict[str, str], usage_row: Any
) -> None:
    # The connection ends after two frames, without [DONE].
    upstream.post(OPENAI_URL).respond(
        200, content=sse_body(openai_chunk("Once upon"), openai_chunk(" a time"), done=False)
    )
    response = await AsyncClient().post(
        "/copilotedge/v1/chat/completions",
        chat_body(stream=True),
        content_type="application/json",
        headers=auth,
    )
    received = await read_stream(response)
    assert received[-2] == {  # what the client is told, in band
        "error": {
            "message": "The model provider ended the answer early.",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_incomplete",
        }
    }
    completion = tokens.estimate_tokens("Once upon a time")
    await usage_row(
        outcome="incomplete",
        status_code=502,
        error_code="upstream_incomplete",
        completion_tokens=completion,
        prompt_tokens=tokens.estimate_prompt_tokens(MESSAGES),
        token_source="estimated",
        cost=lambda c: c > 0,
    )


class HeldStream(httpx.AsyncByteStream):
    """An upstream stream that sends ``frames`` and then stays open until closed."""

    def __init__(self, frames: bytes) -> None:
        self.frames = frames
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.frames
        await self.closed.wait()

    async def aclose(self) -> None:
        self.closed.set()


async def test_client_disconnect_mid_stream_is_cancelled_with_the_partial_answer(
    upstream: respx.MockRouter, api_key: Any, usage_row: Any
) -> None:
    held = HeldStream(sse_body(openai_chunk("Partial "), openai_chunk("answer"), done=False))
    upstream.post(OPENAI_URL).mock(return_value=httpx.Response(200, stream=held))
    body = chat_body(stream=True).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/copilotedge/v1/chat/completions",
        "raw_path": b"/copilotedge/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {api_key[1]}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await to_app.put({"type": "http.request", "body": body, "more_body": False})
    app = asyncio.create_task(get_asgi_application()(scope, to_app.get, from_app.put))
    start = await asyncio.wait_for(from_app.get(), 5)
    assert start["type"] == "http.response.start" and start["status"] == 200
    received = b""
    while b"answer" not in received:  # the client reads both content frames, then leaves
        received += (await asyncio.wait_for(from_app.get(), 5)).get("body", b"")
    await to_app.put({"type": "http.disconnect"})
    await asyncio.wait_for(app, 5)
    await usage_row(
        outcome="cancelled",
        status_code=499,
        error_code="",
        completion_tokens=tokens.estimate_tokens("Partial answer"),
        prompt_tokens=tokens.estimate_prompt_tokens(MESSAGES),
        token_source="estimated",
        cost=lambda c: c > 0,
        ttft_ms=lambda ms: ms is not None,
    )
    assert held.closed.is_set(), "the upstream stream was left open"
