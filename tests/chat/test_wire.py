"""Wire shapes that views do not show directly: keep-alive mechanics and error envelopes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest

from copilotedge import exceptions
from copilotedge.auth import Principal
from copilotedge.chat import sse, wire
from copilotedge.chat import token_estimates as tokens
from copilotedge.chat.deltas import Delta, ToolCallDelta, Usage
from copilotedge.chat.turn import Turn
from copilotedge.chat.types import ChatRequest
from copilotedge.conversations import transcript


class Producer:
    """Frames after a pause each; records whether it was cancelled or closed."""

    def __init__(self, *frames: bytes, pause: float = 0.0, error: Exception | None = None) -> None:
        self.frames = frames
        self.pause = pause
        self.error = error
        self.cancelled = False
        self.finished = False

    async def run(self) -> AsyncIterator[bytes]:
        try:
            for frame in self.frames:
                await asyncio.sleep(self.pause)
                yield frame
            if self.error is not None:
                raise self.error
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.finished = True


async def collect(frames: AsyncIterator[bytes]) -> list[bytes]:
    return [frame async for frame in frames]


async def test_frames_pass_through_without_comments_when_fast() -> None:
    producer = Producer(b"a", b"b", b"c")
    assert await collect(wire.with_keepalive(producer.run(), 1.0)) == [b"a", b"b", b"c"]
    assert producer.finished and not producer.cancelled


async def test_silence_gets_comments_and_the_producer_is_not_cancelled() -> None:
    producer = Producer(b"late", pause=0.35)
    out = await collect(wire.with_keepalive(producer.run(), 0.1))
    assert out[-1] == b"late"
    assert out[:-1] == [sse.comment()] * len(out[:-1])
    assert len(out) - 1 >= 2
    assert not producer.cancelled


async def test_closing_while_waiting_cancels_the_producer() -> None:
    producer = Producer(b"never", pause=10)
    frames = wire.with_keepalive(producer.run(), 0.05)
    assert await anext(frames) == sse.comment()
    await frames.aclose()  # type: ignore[attr-defined]
    assert producer.cancelled and producer.finished


async def test_cancelling_the_consumer_cancels_the_producer() -> None:
    producer = Producer(b"never", pause=10)
    task = asyncio.create_task(collect(wire.with_keepalive(producer.run(), 5)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert producer.cancelled and producer.finished


async def test_a_producer_error_propagates() -> None:
    producer = Producer(b"a", error=RuntimeError("boom"))
    frames = wire.with_keepalive(producer.run(), 1.0)
    assert await anext(frames) == b"a"
    with pytest.raises(RuntimeError, match="boom"):
        await anext(frames)


def turn_with(*deltas: Delta) -> Turn:
    request = ChatRequest(model="@cf/qwen/qwq-32b", messages=[{"role": "user", "content": "Hi"}])
    turn = Turn(request, Principal(ip="127.0.0.1"), protocol="run")
    for delta in deltas:
        turn.answer.add(delta)
    return turn


def test_run_envelope_with_tool_calls() -> None:
    turn = turn_with(
        Delta(tool_calls=[ToolCallDelta(0, name="weather", arguments='{"city":')]),
        Delta(tool_calls=[ToolCallDelta(0, arguments='"Paris"}')]),
        Delta(usage=Usage(3, 4, 7)),
    )
    assert wire.run_envelope(turn) == {
        "result": {
            "response": "",
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            "tool_calls": [{"name": "weather", "arguments": '{"city":"Paris"}'}],
        },
        "success": True,
        "errors": [],
        "messages": [],
    }


@pytest.mark.parametrize("model", ["@cf/qwen/qwq-32b", "odd \ud83d model"])
def test_a_chunk_frame_is_the_whole_chunk(model: str) -> None:
    turn = turn_with()
    turn.served.model = model
    frame = wire._Chunks(turn).frame({"content": "a\nb \ud83d"}, "stop")
    assert frame.startswith(b"data: ") and frame.endswith(b"}]}\n\n")
    assert json.loads(frame[6:]) == {
        "id": f"chatcmpl-{turn.id.hex}",
        "object": "chat.completion.chunk",
        "created": turn.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": {"content": "a\nb \ud83d"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
    }


def test_a_chunk_names_the_model_that_answers_it() -> None:
    turn = turn_with()
    chunks = wire._Chunks(turn)
    assert json.loads(chunks.frame({})[6:])["model"] == "@cf/qwen/qwq-32b"
    turn.served.model = "@cf/meta/llama-3.1-8b-instruct"  # a later step's fallback
    assert json.loads(chunks.frame({})[6:])["model"] == "@cf/meta/llama-3.1-8b-instruct"


def test_run_error_carries_both_shapes() -> None:
    error = exceptions.UpstreamRateLimited(upstream_code=3040)
    body = wire.run_error(error)
    assert body["error"]["code"] == "upstream_capacity"
    assert body["errors"] == [{"code": 3040, "message": error.message}]
    assert (body["success"], body["result"]) == (False, None)
    assert (
        wire.run_error(exceptions.InvalidRequest("x", param="messages"))["errors"][0]["code"] == 0
    )


def test_usage_of_prefers_upstream_and_estimates_otherwise() -> None:
    assert wire.usage_of(turn_with(Delta(text="abcd" * 3), Delta(usage=Usage(5, 6, 11)))) == {
        "prompt_tokens": 5,
        "completion_tokens": 6,
        "total_tokens": 11,
    }
    estimated = wire.usage_of(turn_with(Delta(text="abcd" * 3), Delta(usage=Usage())))
    completion = tokens.estimate_tokens("abcd" * 3)
    assert estimated["completion_tokens"] == completion > 0
    assert estimated["total_tokens"] == estimated["prompt_tokens"] + completion


async def cancelled_while_streaming(turn: Turn, *, hang_up: bool) -> tuple[object, asyncio.Task]:
    """Stop ``turn``'s answer (and, if asked, cancel its task as a hang-up would, at
    the same moment); returns what ``stopped_elsewhere`` said and the task."""
    said: list[object] = []

    async def streaming() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            said.append(wire.stopped_elsewhere(turn))
            if said[0] is None:
                raise

    task = asyncio.create_task(streaming())
    await asyncio.sleep(0)
    assert turn.transcript is not None
    turn.transcript.task = task
    turn.transcript.stop()
    if hang_up:
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return said[0], task


@pytest.fixture
def streaming_turn():
    turn = turn_with()
    turn.transcript = transcript.Transcript(uuid.uuid4(), uuid.uuid4(), lambda: "")
    yield turn
    transcript.active.pop(turn.transcript.message_id, None)


async def test_a_stop_from_elsewhere_is_taken_back_to_end_the_stream(streaming_turn):
    said, task = await cancelled_while_streaming(streaming_turn, hang_up=False)
    assert isinstance(said, exceptions.AnswerStopped)
    assert not task.cancelled() and task.cancelling() == 0


async def test_a_stop_and_a_hang_up_at_once_stay_a_cancellation(streaming_turn):
    # Both cancellations arrive as one; taking one back would leave the task running
    # with nobody reading it.
    said, task = await cancelled_while_streaming(streaming_turn, hang_up=True)
    assert said is None and task.cancelled()
