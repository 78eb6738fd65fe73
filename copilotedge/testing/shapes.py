"""The wire shapes of an answer: OpenAI chat completions and native Workers AI ``/ai/run``.

Frames are built from pre-encoded JSON pieces because the benchmark calls the emulator
directly, and the emulator should cost next to nothing next to the proxy it is compared with.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Protocol

from copilotedge.testing.answers import Answer

DONE_FRAME = b"data: [DONE]\n\n"
MALFORMED_FRAME = b"data: {not json\n\n"

# Cloudflare's error messages for the codes the emulator answers with.
ERROR_MESSAGES = {
    3036: (
        "Account limited: you have used up your daily free allocation of 10,000 neurons, "
        "please upgrade to Cloudflare's Workers Paid plan if you would like to continue usage."
    ),
    3040: "Capacity temporarily exceeded, please try again.",
    5006: "Bad input",
    5007: "No such model or task",
    7000: "No route for that URI",
    7001: "Method not allowed",
    10000: "Authentication error",
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def error_body(code: int, message: str | None = None) -> bytes:
    """Cloudflare's error envelope."""
    message = message or ERROR_MESSAGES.get(code, "Internal server error")
    return _dumps(
        {
            "success": False,
            "errors": [{"code": code, "message": message}],
            "result": None,
            "messages": [],
        }
    ).encode()


def envelope(result: Any) -> dict[str, Any]:
    return {"result": result, "success": True, "errors": [], "messages": []}


def sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


class Shape(Protocol):
    """How one answer is rendered, whole or as event-stream frames."""

    def body(self, usage: bool) -> bytes: ...

    def head_frames(self) -> list[bytes]:
        """Frames before the first token, which do not count as tokens."""
        ...

    def token_frames(self) -> list[bytes]: ...

    def tail_frames(self, usage: bool) -> list[bytes]:
        """Frames after the last token, ending with ``[DONE]``."""
        ...


class OpenAIShape:
    """Chat Completions; ``in_envelope`` wraps the whole body as ``/ai/run`` does for gpt-oss."""

    def __init__(self, model: str, answer: Answer, *, in_envelope: bool = False) -> None:
        self.model = model
        self.answer = answer
        self.in_envelope = in_envelope
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._head = (
            f'{{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{_dumps(model)},"choices":'
        )

    def _chunk(self, delta: str, finish_reason: str | None = None) -> bytes:
        reason = "null" if finish_reason is None else f'"{finish_reason}"'
        return sse(f'{self._head}[{{"index":0,"delta":{delta},"finish_reason":{reason}}}]}}')

    def body(self, usage: bool) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": self.answer.text}
        if self.answer.tool_calls:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in self.answer.tool_calls
            ]
        completion: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": self.answer.finish_reason}
            ],
        }
        if usage:
            completion["usage"] = self.answer.usage()
        return _dumps(envelope(completion) if self.in_envelope else completion).encode()

    def _call_head(self, index: int) -> dict[str, Any]:
        call = self.answer.tool_calls[index]
        return {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }

    def head_frames(self) -> list[bytes]:
        if self.answer.tool_calls:
            first = self._call_head(0)
            return [self._chunk(_dumps({"role": "assistant", "tool_calls": [first]}))]
        if not self.answer.tokens:
            return [self._chunk('{"role":"assistant","content":""}')]
        return []

    def token_frames(self) -> list[bytes]:
        if self.answer.tool_calls:
            frames = []
            for index, call in enumerate(self.answer.tool_calls):
                if index:  # the first call's head went out before the first token
                    frames.append(self._chunk(_dumps({"tool_calls": [self._call_head(index)]})))
                frames += [
                    self._chunk(
                        f'{{"tool_calls":[{{"index":{index},"function":'
                        f'{{"arguments":{_dumps(f)}}}}}]}}'
                    )
                    for f in call.fragments()
                ]
            return frames
        frames = [self._chunk(f'{{"content":{_dumps(token)}}}') for token in self.answer.tokens]
        if frames:
            frames[0] = self._chunk(
                f'{{"role":"assistant","content":{_dumps(self.answer.tokens[0])}}}'
            )
        return frames

    def tail_frames(self, usage: bool) -> list[bytes]:
        frames = [self._chunk("{}", self.answer.finish_reason)]
        if usage:
            frames.append(sse(f'{self._head}[],"usage":{_dumps(self.answer.usage())}}}'))
        frames.append(DONE_FRAME)
        return frames


class RunShape:
    """Native ``/ai/run``: an envelope, or ``{"response": …}`` frames."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def _tool_calls(self) -> list[dict[str, Any]]:
        return [{"name": call.name, "arguments": call.arguments} for call in self.answer.tool_calls]

    def body(self, usage: bool) -> bytes:
        result: dict[str, Any] = {"response": self.answer.text}
        if self.answer.tool_calls:
            result = {"response": None, "tool_calls": self._tool_calls()}
        if usage:
            result["usage"] = self.answer.usage()
        return _dumps(envelope(result)).encode()

    def head_frames(self) -> list[bytes]:
        return []

    def token_frames(self) -> list[bytes]:
        if self.answer.tool_calls:
            return [sse(_dumps({"response": "", "tool_calls": self._tool_calls()}))]
        return [sse(f'{{"response":{_dumps(token)}}}') for token in self.answer.tokens]

    def tail_frames(self, usage: bool) -> list[bytes]:
        if not usage:
            return [DONE_FRAME]
        return [sse(_dumps({"response": "", "usage": self.answer.usage()})), DONE_FRAME]
