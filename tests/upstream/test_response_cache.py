"""The response cache: keys, when it is used, replay to any face, single flight, outages."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx
from django.test import AsyncClient

from copilotedge import lifecycle
from copilotedge.models import ApiKey, UsageRecord
from copilotedge.upstream import response_cache as cache
from tests.helpers import OPENAI_URL, SlowStream, openai_chunk, reset_circuits, sse_body

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/copilotedge/v1/chat/completions"
MODEL = "@cf/meta/llama-3.1-8b-instruct"
USAGE = {"prompt_tokens": 1000, "completion_tokens": 2000, "total_tokens": 3000}
# 1000 x 0.282 + 2000 x 0.827 USD per million tokens
COST = Decimal("0.001936")


@pytest.fixture(autouse=True)
def quick(settings: Any) -> Any:
    settings.COPILOTEDGE_RETRY_ATTEMPTS = 1
    settings.COPILOTEDGE_RESPONSE_CACHE = True  # off for the rest of the suite
    reset_circuits()
    yield settings
    reset_circuits()


@pytest.fixture
def question() -> list[dict[str, str]]:
    """A question no other test (or earlier run on a shared Redis) has asked."""
    return [{"role": "user", "content": f"What is {uuid.uuid4()}?"}]


def whole(text: str = "Forty-two", **extra: Any) -> httpx.Response:
    message: dict[str, Any] = {"content": text, **extra}
    return httpx.Response(
        200,
        json={"choices": [{"message": message, "finish_reason": "stop"}], "usage": USAGE},
    )


def streamed(text: str = "Forty-two") -> httpx.Response:
    body = sse_body(
        openai_chunk(text[:5]), openai_chunk(text[5:]), openai_chunk(finish_reason="stop")
    )
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


async def chat(
    auth: dict[str, str], messages: Any, *, header: str | None = None, **body: Any
) -> Any:
    headers = {**auth, **({cache.HEADER: header} if header else {})}
    payload = {"messages": messages, **body}
    return await AsyncClient().post(URL, payload, content_type="application/json", headers=headers)


async def frames(response: Any) -> list[Any]:
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


async def records() -> list[UsageRecord]:
    await lifecycle.drain()
    return [r async for r in UsageRecord.objects.order_by("created_at")]


def test_the_key_covers_what_determines_the_answer_and_nothing_else() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    base = cache.key_for(MODEL, messages, {"temperature": 0})
    assert base == cache.key_for(MODEL, messages, {"temperature": 0.0})
    assert base == cache.key_for(MODEL, messages, {"temperature": 0, "stream": True, "user": "x"})
    assert base.startswith("copilotedge:response:") and len(base) == 21 + 64
    for other in (
        cache.key_for("@cf/meta/llama-3.2-3b-instruct", messages, {"temperature": 0}),
        cache.key_for(MODEL, [{"role": "user", "content": "Hi!"}], {"temperature": 0}),
        cache.key_for(MODEL, messages, {"temperature": 0, "max_tokens": 5}),
        cache.key_for(MODEL, messages, {"temperature": 0, "seed": 1}),
        cache.key_for(MODEL, messages, {"temperature": 0, "tools": [{"function": {"name": "f"}}]}),
        cache.key_for(MODEL, messages, {"temperature": 0}, "user:1"),
    ):
        assert other != base


async def test_a_deterministic_answer_is_stored_and_replayed_streamed(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    route = upstream.post(OPENAI_URL).mock(return_value=whole())
    first = await chat(auth, question, temperature=0)
    assert (first.status_code, first[cache.HEADER]) == (200, "MISS")
    second = await chat(auth, question, temperature=0.0, stream=True)
    assert (second.status_code, second[cache.HEADER]) == (200, "HIT")
    events = await frames(second)
    chunks = [e for e in events if isinstance(e, dict)]
    assert events[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Forty-two"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert {c["model"] for c in chunks} == {MODEL}
    assert route.call_count == 1
    miss, hit = await records()
    zero = Decimal(0)
    assert (miss.cache_hit, miss.cost, miss.cost_saved, miss.attempts) == (False, COST, zero, 1)
    assert (hit.cache_hit, hit.cost, hit.cost_saved, hit.attempts) == (True, zero, COST, 0)
    assert (hit.prompt_tokens, hit.completion_tokens, hit.outcome) == (1000, 2000, "ok")


async def test_a_streamed_answer_is_replayed_as_json_and_to_ai_run(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    route = upstream.post(OPENAI_URL).mock(return_value=streamed())
    first = await chat(auth, question, seed=7, stream=True)
    assert first[cache.HEADER] == "MISS"
    await frames(first)
    second = await chat(auth, question, seed=7)
    assert second[cache.HEADER] == "HIT"
    assert second.json()["choices"][0]["message"]["content"] == "Forty-two"
    run = await AsyncClient().post(
        f"/copilotedge/ai/run/{MODEL}",
        {"messages": question, "seed": 7},
        content_type="application/json",
        headers=auth,
    )
    assert run[cache.HEADER] == "HIT"
    assert run.json()["result"]["response"] == "Forty-two"
    assert route.call_count == 1


async def test_tool_calls_are_replayed_with_the_same_ids(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    upstream.post(OPENAI_URL).mock(return_value=whole("", tool_calls=[call]))
    first = (await chat(auth, question, temperature=0)).json()
    second = await chat(auth, question, temperature=0)
    assert second[cache.HEADER] == "HIT"
    assert second.json()["choices"][0]["message"] == first["choices"][0]["message"]
    assert first["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"


async def test_a_non_deterministic_request_bypasses_the_cache_unless_asked(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    route = upstream.post(OPENAI_URL).mock(return_value=whole())
    assert (await chat(auth, question, temperature=0.7))[cache.HEADER] == "BYPASS"
    assert (await chat(auth, question))[cache.HEADER] == "BYPASS"
    assert route.call_count == 2
    assert (await chat(auth, question, header="use"))[cache.HEADER] == "MISS"
    assert (await chat(auth, question, header="Use"))[cache.HEADER] == "HIT"
    assert route.call_count == 3


@pytest.fixture
def keys(user: Any, other_user: Any) -> list[dict[str, str]]:
    """Headers for two keys of the test user, then one of another user."""
    owners = [(user, "one"), (user, "two"), (other_user, "bob")]
    return [
        {"Authorization": f"Bearer {ApiKey.create_key(owner, name=name)[1]}"}
        for owner, name in owners
    ]


@pytest.mark.parametrize("shared", [False, True])
async def test_answers_are_each_users_own_unless_shared(
    upstream: respx.MockRouter,
    keys: list[dict[str, str]],
    question: Any,
    settings: Any,
    shared: bool,
) -> None:
    settings.COPILOTEDGE_RESPONSE_CACHE_SHARED = shared
    route = upstream.post(OPENAI_URL).mock(return_value=whole())
    alice, alices_other, bob = keys
    assert (await chat(alice, question, temperature=0))[cache.HEADER] == "MISS"
    assert (await chat(bob, question, temperature=0))[cache.HEADER] == ("HIT" if shared else "MISS")
    assert (await chat(alices_other, question, temperature=0))[cache.HEADER] == "HIT"
    assert route.call_count == (1 if shared else 2)


async def test_refresh_asks_upstream_and_replaces_the_entry(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    route = upstream.post(OPENAI_URL).mock(side_effect=[whole("old"), whole("new")])
    await chat(auth, question, temperature=0)
    refreshed = await chat(auth, question, temperature=0, header="refresh")
    assert refreshed[cache.HEADER] == "MISS"
    assert refreshed.json()["choices"][0]["message"]["content"] == "new"
    hit = await chat(auth, question, temperature=0)
    assert (hit[cache.HEADER], hit.json()["choices"][0]["message"]["content"]) == ("HIT", "new")
    assert route.call_count == 2


async def test_bypass_neither_reads_nor_stores(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    route = upstream.post(OPENAI_URL).mock(return_value=whole())
    assert (await chat(auth, question, temperature=0, header="bypass"))[cache.HEADER] == "BYPASS"
    assert (await chat(auth, question, temperature=0))[cache.HEADER] == "MISS"
    assert (await chat(auth, question, temperature=0, header="bypass"))[cache.HEADER] == "BYPASS"
    assert route.call_count == 3


async def test_an_unknown_directive_is_a_400(auth: dict[str, str], question: Any) -> None:
    response = await chat(auth, question, header="sometimes")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cache_directive"


async def test_the_master_switch_turns_it_off(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any, settings: Any
) -> None:
    settings.COPILOTEDGE_RESPONSE_CACHE = False
    upstream.post(OPENAI_URL).mock(return_value=whole())
    for _ in range(2):
        assert (await chat(auth, question, temperature=0, header="use"))[cache.HEADER] == "BYPASS"


async def test_errors_are_never_cached(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    route = upstream.post(OPENAI_URL).mock(side_effect=[httpx.Response(500), whole()])
    assert (await chat(auth, question, temperature=0)).status_code == 502
    second = await chat(auth, question, temperature=0)
    assert (second.status_code, second[cache.HEADER]) == (200, "MISS")
    assert route.call_count == 2


async def test_a_partial_answer_is_never_cached(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    broken = httpx.Response(
        200,
        content=sse_body(openai_chunk("Forty"), done=False),  # ends without [DONE]
        headers={"content-type": "text/event-stream"},
    )
    route = upstream.post(OPENAI_URL).mock(side_effect=[broken, streamed()])
    events = await frames(await chat(auth, question, temperature=0, stream=True))
    assert events[-2]["error"]["code"] == "upstream_incomplete"
    again = await chat(auth, question, temperature=0, stream=True)
    assert again[cache.HEADER] == "MISS"
    await frames(again)
    assert route.call_count == 2


@pytest.mark.parametrize("first_streams", [True, False])
async def test_identical_concurrent_requests_share_one_upstream_call(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any, first_streams: bool
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        # Whichever request leads, streamed or not, upstream answers in its shape.
        if json.loads(request.content).get("stream"):
            body = sse_body(openai_chunk("Forty-two"), openai_chunk(finish_reason="stop"))
            slow = SlowStream(0.3, body)
            return httpx.Response(200, stream=slow, headers={"content-type": "text/event-stream"})
        await asyncio.sleep(0.3)
        message = {"role": "assistant", "content": "Forty-two"}
        return httpx.Response(
            200, json={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        )

    route = upstream.post(OPENAI_URL).mock(side_effect=answer)

    async def one(stream: bool) -> tuple[str, str]:
        response = await chat(auth, question, temperature=0, stream=stream)
        if stream:
            events = await frames(response)
            text = "".join(
                e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict)
            )
        else:
            text = response.json()["choices"][0]["message"]["content"]
        return response[cache.HEADER], text

    results = await asyncio.gather(*(one(stream=(i % 2 == 0) == first_streams) for i in range(6)))
    assert route.call_count == 1
    assert {text for _, text in results} == {"Forty-two"}
    assert sorted(status for status, _ in results) == ["HIT"] * 5 + ["MISS"]
    rows = await records()
    assert sorted(r.cache_hit for r in rows) == [False] + [True] * 5


async def test_a_leaders_upstream_error_is_shared_not_repeated(
    upstream: respx.MockRouter, auth: dict[str, str], question: Any
) -> None:
    async def failing(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return httpx.Response(500)

    route = upstream.post(OPENAI_URL).mock(side_effect=failing)
    responses = await asyncio.gather(*(chat(auth, question, temperature=0) for _ in range(4)))
    assert [r.status_code for r in responses] == [502] * 4
    assert route.call_count == 1


async def test_an_unavailable_cache_is_skipped_and_logged(
    upstream: respx.MockRouter,
    auth: dict[str, str],
    question: Any,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "dead": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2},
        },
    }
    settings.COPILOTEDGE_CACHE_ALIAS = "dead"
    cache._errors.reset()
    route = upstream.post(OPENAI_URL).mock(return_value=whole())
    for _ in range(2):
        response = await chat(auth, question, temperature=0)
        assert (response.status_code, response[cache.HEADER]) == (200, "BYPASS")
    assert route.call_count == 2
    assert "Response cache 'dead' unavailable" in caplog.text
