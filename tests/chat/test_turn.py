"""One turn: folding deltas into an answer, and the usage record each way a turn can end."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx

from copilotedge import exceptions, lifecycle
from copilotedge.auth import Principal
from copilotedge.chat.deltas import Delta, ToolCallDelta, Usage
from copilotedge.chat.turn import Turn
from copilotedge.chat.types import Answer, ChatRequest
from copilotedge.models import ApiKey, Conversation, UsageRecord
from copilotedge.usage import ledger as usage
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

MODEL = "@cf/meta/llama-3.1-8b-instruct"
HI = [{"role": "user", "content": "Say hello to the whole wide world"}]

# -- Answer -----------------------------------------------------------------------------


def test_answer_folds_text() -> None:
    answer = Answer()
    for text in ["Hel", "", "lo", " world"]:
        answer.add(Delta(text=text))
    assert answer.text == "Hello world"
    answer.add(Delta(text="!"))
    assert answer.text == "Hello world!"
    assert answer.message() == {"role": "assistant", "content": "Hello world!"}


def test_empty_answer() -> None:
    answer = Answer()
    assert (answer.text, answer.usage, answer.tool_calls) == ("", None, {})
    assert answer.final_finish_reason() == "stop"
    assert answer.message() == {"role": "assistant", "content": ""}


def test_answer_folds_tool_call_pieces_by_index() -> None:
    answer = Answer()
    answer.add(Delta(tool_calls=[ToolCallDelta(0, id="call_a", name="weather", arguments="")]))
    answer.add(Delta(tool_calls=[ToolCallDelta(1, id="call_b", name="time", arguments="{}")]))
    answer.add(Delta(tool_calls=[ToolCallDelta(0, arguments='{"city":')]))
    answer.add(Delta(tool_calls=[ToolCallDelta(0, arguments='"Paris"}')]))
    assert answer.message()["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    assert answer.final_finish_reason() == "tool_calls"


def test_a_tool_call_without_id_gets_one() -> None:
    answer = Answer()
    answer.add(Delta(tool_calls=[ToolCallDelta(0, name="f", arguments="{}")]))
    answer.add(Delta(tool_calls=[ToolCallDelta(1, name="g", arguments="{}")]))
    ids = [call.id for call in answer.tool_calls.values()]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2


def test_answer_keeps_the_last_finish_reason_and_usage() -> None:
    answer = Answer()
    answer.add(Delta(text="a", finish_reason="length"))
    answer.add(Delta(usage=Usage(1, 2, 3)))
    answer.add(Delta(text="b"))
    assert answer.finish_reason == "length"
    assert answer.final_finish_reason() == "length"
    assert answer.usage == Usage(1, 2, 3)


# -- Turn and its usage record ----------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def principal(api_key: tuple[ApiKey, str]) -> Principal:
    key = api_key[0]
    return Principal(user=key.user, api_key=key, ip="127.0.0.1")


def make_turn(principal: Principal, *, model: str = MODEL, stream: bool = True) -> Turn:
    return Turn(ChatRequest(model=model, messages=HI, stream=stream), principal, protocol="openai")


async def record_of(turn: Turn) -> UsageRecord:
    await lifecycle.drain()
    return await UsageRecord.objects.aget(request_id=turn.id)


async def consume(turn: Turn) -> list[str]:
    return [delta.text async for delta in turn.deltas()]


@pytestmark_db
async def test_streamed_ok(principal: Principal, upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(
        200,
        content=sse_body(
            openai_chunk("Hel"),
            openai_chunk("lo", "stop"),
            {"choices": [], "usage": USAGE},
        ),
    )
    turn = make_turn(principal)
    await turn.open()
    assert await consume(turn) == ["Hel", "lo", ""]
    assert (turn.outcome, turn.error, turn.answer.text) == ("ok", None, "Hello")
    record = await record_of(turn)
    assert record.outcome == "ok"
    assert record.status_code == 200
    assert record.error_code == ""
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (11, 7, 18)
    assert record.token_source == "upstream"
    assert record.protocol == "openai"
    assert (record.model_requested, record.model_served) == (MODEL, MODEL)
    assert principal.api_key is not None
    assert (record.user_id, record.api_key_id) == (principal.user.pk, principal.api_key.pk)
    assert record.cost == Decimal("0.00000889")  # 11 x 0.282 + 7 x 0.827 per million
    assert record.ttft_ms is not None and record.latency_ms >= record.ttft_ms
    assert record.attempts == 1


@pytestmark_db
async def test_deltas_opens_the_stream_itself(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("x")))
    turn = make_turn(principal)
    assert await consume(turn) == ["x"]
    assert (await record_of(turn)).outcome == "ok"


@pytestmark_db
async def test_non_streamed_ok(principal: Principal, upstream: respx.MockRouter) -> None:
    upstream.post(run_url("@cf/qwen/qwq-32b")).respond(
        200,
        json={"result": {"response": "Hi", "usage": {**USAGE, "neurons": 3.5}}, "success": True},
    )
    turn = make_turn(principal, model="@cf/qwen/qwq-32b", stream=False)
    answer = await turn.complete()
    assert (answer.text, answer.final_finish_reason()) == ("Hi", "stop")
    record = await record_of(turn)
    assert (record.outcome, record.status_code, record.token_source) == ("ok", 200, "upstream")
    assert (record.prompt_tokens, record.completion_tokens) == (11, 7)
    assert record.cost == Decimal("0.00003850")  # 3.5 neurons x $0.011 per thousand
    assert record.ttft_ms is not None


@pytestmark_db
@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_error_before_the_first_byte(
    principal: Principal, upstream: respx.MockRouter, stream: bool
) -> None:
    upstream.post(OPENAI_URL).respond(429, json={"errors": [{"code": 3040}]})
    turn = make_turn(principal, stream=stream)
    with pytest.raises(exceptions.UpstreamRateLimited):
        await (turn.open() if stream else turn.complete())
    assert turn.outcome == "error"
    record = await record_of(turn)
    assert record.outcome == "error"
    assert (record.status_code, record.error_code) == (429, "upstream_capacity")
    assert record.completion_tokens == 0
    assert record.token_source == "estimated"
    assert record.ttft_ms is None


@pytestmark_db
async def test_unreachable_upstream(principal: Principal, upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).mock(side_effect=httpx.ConnectError("refused"))
    turn = make_turn(principal)
    with pytest.raises(exceptions.UpstreamError):
        await turn.open()
    record = await record_of(turn)
    assert (record.outcome, record.status_code, record.error_code) == (
        "error",
        502,
        "upstream_unreachable",
    )


@pytestmark_db
async def test_mid_stream_failure_is_incomplete(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    body = UpstreamBody(*sse_chunks(openai_chunk("Hello there"), done=False))
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    turn = make_turn(principal)
    await turn.open()
    got = []
    with pytest.raises(exceptions.UpstreamError) as caught:
        async for delta in turn.deltas():
            got.append(delta.text)
    assert got == ["Hello there"]
    assert caught.value.code == "upstream_incomplete"
    assert (turn.outcome, turn.error) == ("incomplete", caught.value)
    assert body.closed
    record = await record_of(turn)
    assert (record.outcome, record.status_code, record.error_code) == (
        "incomplete",
        502,
        "upstream_incomplete",
    )
    assert record.completion_tokens == usage.estimate_tokens("Hello there") > 0
    assert record.token_source == "estimated"


@pytestmark_db
async def test_failure_before_any_text_is_an_error(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    route = upstream.post(OPENAI_URL).respond(200, content=sse_body("{broken", done=False))
    turn = make_turn(principal)
    # Nothing has reached the client yet: open() retries, then raises (a status, not a frame).
    with pytest.raises(exceptions.UpstreamError):
        await turn.open()
    record = await record_of(turn)
    assert (record.outcome, record.error_code) == ("error", "upstream_malformed")
    assert record.attempts == route.call_count == 3


@pytestmark_db
async def test_client_cancellation_mid_stream(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    frames = [openai_chunk(f"token{i} ") for i in range(100)]
    body = UpstreamBody(*sse_chunks(*frames, {"choices": [], "usage": USAGE}), delay=0.02)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    turn = make_turn(principal)
    seen: list[str] = []
    three = asyncio.Event()

    async def client() -> None:
        async for delta in turn.deltas():
            seen.append(delta.text)
            if len(seen) == 3:
                three.set()

    task = asyncio.create_task(client())
    await asyncio.wait_for(three.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert body.closed
    assert body.sent < 10
    assert turn.outcome == "cancelled"
    record = await record_of(turn)
    assert (record.outcome, record.status_code, record.error_code) == ("cancelled", 499, "")
    partial = "".join(seen)
    assert partial.startswith("token0 token1 token2 ")
    assert record.completion_tokens == usage.estimate_tokens(turn.answer.text) > 0
    assert record.token_source == "estimated"


@pytestmark_db
async def test_cancellation_before_the_first_byte(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    started = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(30)
        return httpx.Response(200, content=sse_body(openai_chunk("late")))

    upstream.post(OPENAI_URL).mock(side_effect=slow)
    turn = make_turn(principal)
    task = asyncio.create_task(turn.open())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await record_of(turn)
    assert (record.outcome, record.status_code, record.completion_tokens) == ("cancelled", 499, 0)


@pytestmark_db
async def test_closing_the_delta_generator_cancels(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    body = UpstreamBody(*sse_chunks(*[openai_chunk("t")] * 50), delay=0.01)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    turn = make_turn(principal)
    deltas = turn.deltas()
    assert (await anext(deltas)).text == "t"
    await deltas.aclose()  # type: ignore[attr-defined]
    assert body.closed
    assert (await record_of(turn)).outcome == "cancelled"


@pytestmark_db
async def test_no_upstream_usage_is_estimated(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    upstream.post(run_url("@cf/qwen/qwq-32b")).respond(
        200, content=sse_body(run_frame("Hello "), run_frame("world"))
    )
    turn = make_turn(principal, model="@cf/qwen/qwq-32b")
    await consume(turn)
    record = await record_of(turn)
    assert (record.outcome, record.token_source) == ("ok", "estimated")
    assert record.completion_tokens == usage.estimate_tokens("Hello world")
    assert record.prompt_tokens == usage.estimate_prompt_tokens(HI)
    assert record.prompt_tokens > 0


@pytestmark_db
async def test_a_turn_is_recorded_once(principal: Principal, upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("x")))
    turn = make_turn(principal)
    await consume(turn)
    turn.finish()
    await lifecycle.drain()
    assert await UsageRecord.objects.filter(request_id=turn.id).acount() == 1


@pytestmark_db
async def test_anonymous_turn(db: None, upstream: respx.MockRouter) -> None:
    upstream.post(OPENAI_URL).respond(200, content=sse_body(openai_chunk("x")))
    turn = make_turn(Principal(ip="10.0.0.1"))
    await consume(turn)
    record = await record_of(turn)
    assert (record.user_id, record.api_key_id, record.outcome) == (None, None, "ok")


def test_turn_ids_are_unique() -> None:
    principal = Principal(ip="10.0.0.1")
    turns: list[Any] = [make_turn(principal) for _ in range(3)]
    assert len({t.id for t in turns}) == 3


@pytestmark_db
async def test_leaving_the_loop_early_hangs_up_soon(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    # Nothing closes the generator explicitly; the event loop's async-generator finaliser must.
    body = UpstreamBody(*sse_chunks(*[openai_chunk("t")] * 50), delay=0.01)
    upstream.post(OPENAI_URL).mock(side_effect=respond_with(body))
    turn = make_turn(principal)
    async for _ in turn.deltas():
        break
    for _ in range(100):
        if body.closed:
            break
        await asyncio.sleep(0.01)
    assert body.closed
    assert (await record_of(turn)).outcome == "cancelled"


@pytestmark_db
async def test_a_record_pointing_at_a_missing_row_loses_neither_its_spend_nor_others(
    principal: Principal, upstream: respx.MockRouter
) -> None:
    upstream.post(OPENAI_URL).respond(
        200, content=sse_body(openai_chunk("Hi", "stop"), {"choices": [], "usage": USAGE})
    )
    conversation = await Conversation.objects.acreate(user=principal.user)
    dangling = Turn(
        ChatRequest(model=MODEL, messages=HI, stream=True, conversation_id=conversation.pk),
        principal,
        protocol="openai",
    )
    await dangling.open()
    await conversation.adelete()  # gone while its turn runs: the record points at nothing
    fine = make_turn(principal)
    # Both land in one batch: the bad one must not take the good one down with it.
    await asyncio.gather(consume(dangling), consume(fine))
    good = await record_of(fine)
    bad = await UsageRecord.objects.aget(request_id=dangling.id)
    assert good.conversation_id == fine.request.conversation_id and good.total_tokens == 18
    assert bad.conversation_id is None and bad.total_tokens == 18 and bad.api_key_id is not None
