"""The Python API: Workers AI from your own code, with the app's settings, limits and ledger.

    from copilotedge.api import handle_request, stream_chat

    async for text in stream_chat([{"role": "user", "content": "Hi"}]):
        print(text, end="")

    answer = await handle_request({"messages": [...]})           # an OpenAI chat.completion
    stream = await handle_request({"messages": [...], "stream": True})
    async for text in stream:                                    # text chunks as they arrive
        ...
    stream.response()                                            # the accumulated chat.completion

Each call is one :class:`~copilotedge.chat.turn.Turn`: ``COPILOTEDGE_ON_CHUNK`` is called per
chunk and usage is recorded (protocol ``python``) like any request from a client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from copilotedge.auth import Principal
from copilotedge.chat import faces, wire
from copilotedge.chat.turn import Turn
from copilotedge.chat.validation import parse_chat


class ChatStream:
    """Text chunks of a streamed answer; ``response()`` gives the whole answer afterwards."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn

    async def __aiter__(self) -> AsyncIterator[str]:
        async for delta in self.turn.deltas():
            if delta.text:
                yield delta.text

    def response(self) -> dict[str, Any]:
        """The accumulated OpenAI ``chat.completion`` (complete once iteration ended)."""
        return wire.openai_completion(self.turn)


async def handle_request(
    body: dict[str, Any], principal: Principal | None = None
) -> dict[str, Any] | ChatStream:
    """Answer an OpenAI Chat Completions body, streamed (a :class:`ChatStream`) or whole.

    Invalid bodies raise :class:`~copilotedge.exceptions.InvalidRequest`; upstream
    failures raise the matching :class:`~copilotedge.exceptions.UpstreamError`.
    """
    turn = Turn(parse_chat(body), principal or Principal(), protocol="python")
    if turn.request.stream:
        await faces.aopen(turn)
        return ChatStream(turn)
    await faces.acomplete(turn)
    return wire.openai_completion(turn)


async def stream_chat(
    messages: list[dict[str, Any]],
    *,
    model: str | None = None,
    principal: Principal | None = None,
    **params: Any,
) -> AsyncIterator[str]:
    """Stream the text of one answer to ``messages`` (OpenAI parameters as keywords)."""
    body = {"messages": messages, "stream": True, **params}
    if model is not None:
        body["model"] = model
    stream = await handle_request(body, principal)
    assert isinstance(stream, ChatStream)
    async for text in stream:
        yield text
