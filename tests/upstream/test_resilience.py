"""Retries, backoff, deadlines, fallbacks and timeouts, against a respx-mocked upstream."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import respx
from django.test import AsyncClient

from copilotedge import lifecycle
from copilotedge.models import UsageRecord
from copilotedge.upstream import resilience
from tests.helpers import (
    OPENAI_URL,
    SlowStream,
    capacity_error,
    openai_chunk,
    reset_circuits,
    sse_body,
)

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/copilotedge/v1/chat/completions"
MODEL = "@cf/meta/llama-3.1-8b-instruct"
SMALL = "@cf/meta/llama-3.2-3b-instruct"
GATEWAY = "https://gateway.test/v1/chat/completions"


@pytest.fixture(autouse=True)
def fast_retries(settings: Any) -> Any:
    settings.COPILOTEDGE_RETRY_BASE_DELAY = 0.01
    settings.COPILOTEDGE_RETRY_MAX_DELAY = 1.0
    settings.COPILOTEDGE_RESPONSE_CACHE = False  # every request reaches the mock
    reset_circuits()
    yield settings
    reset_circuits()


def answer(text: str = "Hello") -> httpx.Response:
    return httpx.Response(
        200,
        content=sse_body(openai_chunk(text), openai_chunk(finish_reason="stop")),
        headers={"content-type": "text/event-stream"},
    )


def whole(text: str = "Hello", model: str = MODEL) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "model": model,
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        },
    )


async def chat(auth: dict[str, str], *, stream: bool = True, **body: Any) -> Any:
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": stream, **body}
    return await AsyncClient().post(URL, body, content_type="application/json", headers=auth)


async def frames(response: Any) -> list[Any]:
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


def text_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content", "")
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


async def records() -> list[UsageRecord]:
    await lifecycle.drain()
    return [r async for r in UsageRecord.objects.order_by("created_at")]


async def test_a_500_is_retried_and_the_client_sees_only_the_answer(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    route = upstream.post(OPENAI_URL).mock(side_effect=[httpx.Response(500), answer()])
    response = await chat(auth)
    assert response.status_code == 200
    events = await frames(response)
    assert text_of(events) == "Hello"
    assert events[-1] == "[DONE]"
    assert route.call_count == 2
    [record] = await records()
    assert (record.outcome, record.attempts, record.status_code) == ("ok", 2, 200)


async def test_capacity_429_waits_for_retry_after_then_succeeds(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    route = upstream.post(OPENAI_URL).mock(
        side_effect=[capacity_error(3040, retry_after="0.3"), whole()]
    )
    started = time.monotonic()
    response = await chat(auth, stream=False)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello"
    assert route.call_count == 2
    assert elapsed >= 0.3  # never sooner than Retry-After
    [record] = await records()
    assert record.attempts == 2


async def test_daily_quota_3036_is_not_retried(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    route = upstream.post(OPENAI_URL).mock(return_value=capacity_error(3036))
    response = await chat(auth)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upstream_quota_exceeded"
    assert route.call_count == 1
    [record] = await records()
    assert (record.outcome, record.attempts, record.status_code) == ("error", 1, 429)


async def test_a_rejected_request_is_neither_retried_nor_sent_to_a_fallback(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_FALLBACKS = {MODEL: [{"model": SMALL}]}
    route = upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(400, json={"errors": [{"code": 5006, "message": "bad"}]})
    )
    response = await chat(auth, stream=False)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_rejected"
    assert route.call_count == 1


async def test_unreachable_upstream_is_retried_up_to_the_attempts_setting(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_RETRY_ATTEMPTS = 4
    route = upstream.post(OPENAI_URL).mock(side_effect=httpx.ConnectError("refused"))
    response = await chat(auth)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert route.call_count == 4
    [record] = await records()
    assert (record.attempts, record.error_code) == (4, "upstream_unreachable")


async def test_a_retry_after_longer_than_the_cap_is_handed_to_the_client(
    upstream: respx.MockRouter, auth: dict[str, str]
) -> None:
    route = upstream.post(OPENAI_URL).mock(return_value=capacity_error(3040, retry_after="20"))
    started = time.monotonic()
    response = await chat(auth)
    assert time.monotonic() - started < 1.0
    assert response.status_code == 429
    assert response["Retry-After"] == "20"
    assert response.json()["error"]["code"] == "upstream_capacity"
    assert route.call_count == 1


async def test_retries_stop_at_the_deadline(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_RETRY_ATTEMPTS = 100
    settings.COPILOTEDGE_RETRY_BASE_DELAY = 0.1
    settings.COPILOTEDGE_RETRY_MAX_DELAY = 0.1
    settings.COPILOTEDGE_RETRY_DEADLINE = 0.5
    settings.COPILOTEDGE_CIRCUIT_FAILURE_THRESHOLD = 1000
    route = upstream.post(OPENAI_URL).mock(return_value=httpx.Response(503))
    started = time.monotonic()
    response = await chat(auth)
    elapsed = time.monotonic() - started
    assert response.status_code == 502
    assert elapsed < 0.8
    assert 2 <= route.call_count < 100


def test_backoff_is_full_jitter_capped_and_honours_retry_after(settings: Any) -> None:
    settings.COPILOTEDGE_RETRY_BASE_DELAY = 0.5
    settings.COPILOTEDGE_RETRY_MAX_DELAY = 4.0
    samples = [resilience.backoff(3, None) for _ in range(2000)]
    assert all(s is not None and 0 <= s <= 2.0 for s in samples)
    assert max(s for s in samples if s is not None) > 1.5  # spread over the whole range
    assert min(s for s in samples if s is not None) < 0.5
    assert all(resilience.backoff(10, None) <= 4.0 for _ in range(200))  # type: ignore[operator]
    assert all(resilience.backoff(1, 3.0) >= 3.0 for _ in range(200))  # type: ignore[operator]
    assert resilience.backoff(1, 5.0) is None


async def test_fallbacks_are_tried_in_order_and_the_served_model_is_reported(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_RETRY_ATTEMPTS = 2
    settings.COPILOTEDGE_FALLBACKS = {
        MODEL: [
            {"model": SMALL},
            {"model": "gpt-4o-mini", "base_url": "https://gateway.test/v1/", "api_token": "gw"},
        ]
    }
    asked: list[str] = []

    def workers_ai(request: httpx.Request) -> httpx.Response:
        asked.append(json.loads(request.content)["model"])
        return httpx.Response(500)

    upstream.post(OPENAI_URL).mock(side_effect=workers_ai)
    gateway = upstream.post(GATEWAY).mock(return_value=whole("From the gateway", "gpt-4o-mini"))
    response = await chat(auth, stream=False)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"]["content"] == "From the gateway"
    assert asked == [MODEL, MODEL, SMALL, SMALL]
    assert gateway.calls.last.request.headers["Authorization"] == "Bearer gw"
    [record] = await records()
    assert (record.model_requested, record.model_served) == (MODEL, "gpt-4o-mini")
    assert record.attempts == 5


async def test_fallbacks_are_never_sticky(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_RETRY_ATTEMPTS = 1
    settings.COPILOTEDGE_FALLBACKS = {MODEL: [{"model": SMALL}]}
    asked: list[str] = []
    replies = iter([httpx.Response(500), whole(model=SMALL), whole()])

    def workers_ai(request: httpx.Request) -> httpx.Response:
        asked.append(json.loads(request.content)["model"])
        return next(replies)

    upstream.post(OPENAI_URL).mock(side_effect=workers_ai)
    first = await chat(auth, stream=False)
    second = await chat(auth, stream=False)
    assert (first.json()["model"], second.json()["model"]) == (SMALL, MODEL)
    assert asked == [MODEL, SMALL, MODEL]


async def test_a_streamed_answer_from_a_fallback_names_the_fallback_model(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_RETRY_ATTEMPTS = 1
    settings.COPILOTEDGE_FALLBACKS = {MODEL: [{"model": SMALL}]}
    upstream.post(OPENAI_URL).mock(side_effect=[httpx.Response(502), answer("Small")])
    events = await frames(await chat(auth))
    assert text_of(events) == "Small"
    assert {e["model"] for e in events if isinstance(e, dict)} == {SMALL}


async def test_a_hang_before_the_first_token_is_retried(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_FIRST_TOKEN_TIMEOUT = 0.3
    hung = SlowStream(30.0, sse_body(openai_chunk("late")))
    upstream.post(OPENAI_URL).mock(
        side_effect=[
            httpx.Response(200, stream=hung, headers={"content-type": "text/event-stream"}),
            answer("On time"),
        ]
    )
    started = time.monotonic()
    response = await chat(auth)
    assert response.status_code == 200
    assert text_of(await frames(response)) == "On time"
    assert 0.3 <= time.monotonic() - started < 2.0
    assert hung.closed  # the hung attempt's connection was hung up
    [record] = await records()
    assert (record.outcome, record.attempts) == ("ok", 2)


async def test_a_stall_mid_stream_ends_with_an_in_band_error(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_READ_TIMEOUT = 0.3
    stalled = SlowStream(sse_body(openai_chunk("Half"), done=False), 30.0, sse_body())
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(
            200, stream=stalled, headers={"content-type": "text/event-stream"}
        )
    )
    started = time.monotonic()
    events = await frames(await chat(auth))
    assert time.monotonic() - started < 2.0
    assert text_of(events) == "Half"
    assert events[-2] == {
        "error": {
            "message": "The model provider stalled mid-answer.",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_timeout",
        }
    }
    assert events[-1] == "[DONE]"
    assert not any(
        isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]
        for e in events
    )
    assert stalled.closed
    [record] = await records()
    assert (record.outcome, record.error_code) == ("incomplete", "upstream_timeout")


async def test_the_overall_timeout_ends_a_slow_stream(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_TOTAL_TIMEOUT = 0.5
    drip = SlowStream(
        *[x for _ in range(20) for x in (sse_body(openai_chunk("."), done=False), 0.1)]
    )
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(200, stream=drip, headers={"content-type": "text/event-stream"})
    )
    events = await frames(await chat(auth))
    assert events[-2]["error"]["message"] == "The answer took longer than allowed."
    assert 2 <= len(text_of(events)) <= 6
    assert drip.closed


async def test_a_cancelled_client_hangs_up_the_upstream_during_retries(
    upstream: respx.MockRouter, auth: dict[str, str], settings: Any
) -> None:
    settings.COPILOTEDGE_FIRST_TOKEN_TIMEOUT = 10
    hung = SlowStream(30.0)
    upstream.post(OPENAI_URL).mock(
        return_value=httpx.Response(200, stream=hung, headers={"content-type": "text/event-stream"})
    )
    task = asyncio.ensure_future(chat(auth))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hung.closed
    [record] = await records()
    assert (record.outcome, record.attempts) == ("cancelled", 1)
