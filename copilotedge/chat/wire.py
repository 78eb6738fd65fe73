"""The wire shapes of the OpenAI and Workers AI faces: answers, chunks and error frames."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from copilotedge.chat import sse
from copilotedge.chat.deltas import TOOL_RESULT, Delta, ToolStep
from copilotedge.chat.turn import Turn
from copilotedge.exceptions import AnswerStopped, CopilotEdgeError
from copilotedge.usage.ledger import count_tokens


def completion_id(turn: Turn) -> str:
    return f"chatcmpl-{turn.id.hex}"


def usage_of(turn: Turn) -> dict[str, int]:
    """Usage as the client sees it: the same counts the ledger records."""
    return count_tokens(turn.as_record()).as_openai()


def openai_completion(turn: Turn) -> dict[str, Any]:
    return {
        "id": completion_id(turn),
        "object": "chat.completion",
        "created": turn.created,
        "model": turn.model_served,
        "choices": [
            {
                "index": 0,
                "message": turn.answer.message(),
                "logprobs": None,
                "finish_reason": turn.answer.final_finish_reason(),
            }
        ],
        "usage": usage_of(turn),
    }


class _Chunks:
    """One answer's ``chat.completion.chunk`` frames.

    Their envelope (id, created, model) is the same from frame to frame, so it is encoded
    once, and again only if the model that answers changes (a later step's fallback); each
    frame encodes only its delta.
    """

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self._model: str | None = None
        self._head = b""

    def frame(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        turn = self.turn
        if turn.model_served != self._model:
            self._model = turn.model_served
            envelope = sse.json_bytes(
                {
                    "id": completion_id(turn),
                    "object": "chat.completion.chunk",
                    "created": turn.created,
                    "model": self._model,
                }
            )
            self._head = b"data: " + envelope[:-1] + b',"choices":[{"index":0,"delta":'
        return b"".join(
            (
                self._head,
                sse.json_bytes(delta),
                b',"logprobs":null,"finish_reason":',
                sse.json_bytes(finish_reason),
                b"}]}\n\n",
            )
        )


def _delta_body(delta: Delta, turn: Turn) -> dict[str, Any] | None:
    body: dict[str, Any] = {}
    if delta.text:
        body["content"] = delta.text
    if delta.tool_calls:
        calls = []
        for piece in delta.tool_calls:
            call: dict[str, Any] = {
                "index": piece.index,
                "function": {"arguments": piece.arguments},
            }
            if piece.name:
                # The first piece of a call carries its id (ours if upstream gave none).
                call["id"] = turn.answer.tool_calls[piece.index].id
                call["type"] = "function"
                call["function"]["name"] = piece.name
            calls.append(call)
        body["tool_calls"] = calls
    return body or None


#: The field of the extension chunk that shows a server tool step on the OpenAI face.
TOOL_STEP_FIELD = "copilotedge_tool_step"


def _tool_step_chunk(turn: Turn, step: ToolStep) -> bytes:
    """A server tool step as an extension chunk: no choices, the step in its own field."""
    shown: dict[str, Any] = {
        "step": step.step,
        "type": step.kind,
        "tool_call_id": step.tool_call_id,
        "name": step.name,
        "arguments": step.arguments,
    }
    if step.kind == TOOL_RESULT:
        shown.update(content=step.content, outcome=step.outcome)
    return sse.encode_json(
        {
            "id": completion_id(turn),
            "object": "chat.completion.chunk",
            "created": turn.created,
            "model": turn.model_served,
            "choices": [],
            TOOL_STEP_FIELD: shown,
        }
    )


async def openai_stream(
    turn: Turn, *, include_usage: bool, include_tool_steps: bool = False
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` frames, a usage chunk if asked, then ``[DONE]``.

    With ``include_tool_steps``, each server tool call, approval asked and result is an
    extension chunk (:data:`TOOL_STEP_FIELD`, ``choices: []``) where it happened.

    A failure after the first frame becomes an in-band ``{"error": …}`` frame; the
    stream never pretends to have finished normally. Frames that are ready together
    go out in one write (the role chunk with the first text, the closing frames at
    once): every extra small write is a packet, and can wait on a delayed ACK.
    """
    chunks = _Chunks(turn)
    head = chunks.frame({"role": "assistant", "content": ""})
    try:
        async for batch in turn.batches():
            frames = []
            for delta in batch:
                if delta.tool_step is not None:
                    if include_tool_steps:
                        frames.append(_tool_step_chunk(turn, delta.tool_step))
                elif body := _delta_body(delta, turn):
                    frames.append(chunks.frame(body))
            if frames:
                yield head + b"".join(frames)
                head = b""
    except CopilotEdgeError as error:
        await turn.wait_until_saved()
        yield head + sse.encode_json(error.to_dict()) + sse.DONE_FRAME
        return
    except asyncio.CancelledError:
        if (stopped := stopped_elsewhere(turn)) is None:
            raise
        await turn.wait_until_saved()
        yield head + sse.encode_json(stopped.to_dict()) + sse.DONE_FRAME
        return
    await turn.wait_until_saved()
    tail = [head, chunks.frame({}, turn.answer.final_finish_reason())]
    if include_usage:
        tail.append(
            sse.encode_json(
                {
                    "id": completion_id(turn),
                    "object": "chat.completion.chunk",
                    "created": turn.created,
                    "model": turn.model_served,
                    "choices": [],
                    "usage": usage_of(turn),
                }
            )
        )
    tail.append(sse.DONE_FRAME)
    yield b"".join(tail)


def run_envelope(turn: Turn) -> dict[str, Any]:
    result: dict[str, Any] = {"response": turn.answer.text, "usage": usage_of(turn)}
    if turn.answer.tool_calls:
        result["tool_calls"] = [
            {"name": call.name, "arguments": call.arguments}
            for call in turn.answer.tool_calls.values()
        ]
    return {"result": result, "success": True, "errors": [], "messages": []}


def run_error(error: CopilotEdgeError) -> dict[str, Any]:
    """Both shapes at once: the OpenAI error object and the Workers AI envelope."""
    return {
        **error.to_dict(),
        "result": None,
        "success": False,
        "errors": [{"code": error.upstream_code or 0, "message": error.message}],
        "messages": [],
    }


async def run_stream(turn: Turn) -> AsyncIterator[bytes]:
    """Workers AI frames: ``{"response": …}``, a final usage frame, then ``[DONE]``."""
    try:
        async for batch in turn.batches():
            frames = []
            for delta in batch:
                if delta.text:
                    frames.append(sse.encode_json({"response": delta.text}))
                if delta.tool_calls:
                    calls = [{"name": p.name, "arguments": p.arguments} for p in delta.tool_calls]
                    frames.append(sse.encode_json({"response": "", "tool_calls": calls}))
            if frames:
                yield b"".join(frames)
    except CopilotEdgeError as error:
        await turn.wait_until_saved()
        yield sse.encode_json(run_error(error)) + sse.DONE_FRAME
        return
    except asyncio.CancelledError:
        if (stopped := stopped_elsewhere(turn)) is None:
            raise
        await turn.wait_until_saved()
        yield sse.encode_json(run_error(stopped)) + sse.DONE_FRAME
        return
    await turn.wait_until_saved()
    yield sse.encode_json({"response": "", "usage": usage_of(turn)}) + sse.DONE_FRAME


def stopped_elsewhere(turn: Turn) -> AnswerStopped | None:
    """The error to end the stream with when its cancellation is the answer being stopped
    elsewhere (a cancel from another socket, its conversation deleted), else ``None``:
    the client hung up (perhaps at the same moment), and there is nobody to tell.

    The stop's cancellation is taken back, so the stream can still save and say how it
    ended; any other cancellation of the task stands. (A stop that lands while a slow
    client's queue is full still ends the stream without the frame.)
    """
    transcript = turn.transcript
    if transcript is None or not transcript.stopped:
        return None
    task = asyncio.current_task()
    if task is not None:
        ours = 1 if transcript.cancelled_task is task else 0
        if task.cancelling() > ours:
            return None  # cancelled by someone else too: the client left
        if ours:
            task.uncancel()
    if transcript.deleted:
        return AnswerStopped("The conversation was deleted while its answer streamed.")
    return AnswerStopped()


async def with_keepalive(frames: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """Pass frames through, adding a comment after every ``interval`` s of silence.

    One task produces the frames into a small queue and the timeout is on the queue:
    timing out an upstream read itself would cancel it halfway and break the connection.
    The queue is bounded, so a slow client still slows the upstream read down.
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=16)

    async def produce() -> None:
        try:
            async for frame in frames:
                await queue.put(frame)
        except Exception as error:  # re-raised on the consumer's side
            await queue.put(error)
        except asyncio.CancelledError as error:
            # Cancelled from outside (an answer stopped from elsewhere): end the stream too.
            # Never wait here: a full queue is noticed below once it drains.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(error)
            raise
        else:
            await queue.put(None)

    producer = asyncio.create_task(produce())
    try:
        while True:
            if queue.empty():
                if producer.done():
                    raise asyncio.CancelledError  # cancelled with its queue full
                try:
                    async with asyncio.timeout(interval):
                        item = await queue.get()
                except TimeoutError:
                    yield sse.comment()
                    continue
            else:
                item = queue.get_nowait()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
