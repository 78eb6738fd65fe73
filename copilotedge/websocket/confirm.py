"""Approvals of ``confirm=True`` tools over the WebSocket, answered from any process.

A waiting call listens on its own channel-layer group; a client's ``confirm`` message is
delivered to the waiter in this process directly, else published on that group, so a
client that reconnected to another server process can still answer. Only the caller the
turn runs for (its principal's identity) can answer its calls.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from channels.layers import get_channel_layer

from copilotedge.tools import ToolCallRequest

_waiting: dict[str, asyncio.Future[bool]] = {}
#: The channel-layer message type a published answer carries.
MESSAGE_TYPE = "copilotedge.tool.confirm"


def _key(owner: str, tool_call_id: str) -> str:
    return hashlib.sha256(f"{owner}\n{tool_call_id}".encode()).hexdigest()[:40]


def group_for(owner: str, tool_call_id: str) -> str:
    """The channel-layer group an answer about ``owner``'s call is published on."""
    return f"copilotedge.confirm.{_key(owner, tool_call_id)}"


async def await_answer(owner: str, call: ToolCallRequest) -> bool:
    """Wait for ``owner``'s answer about ``call`` (the executor times it out)."""
    key = _key(owner, call.id)
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    _waiting[key] = answer  # before any await: a local answer can never be missed
    layer = get_channel_layer()
    listener = None
    channel = ""
    try:
        if layer is not None:
            channel = await layer.new_channel()
            await layer.group_add(group_for(owner, call.id), channel)
            listener = asyncio.ensure_future(_listen(layer, channel, answer))
        return await answer
    finally:
        _waiting.pop(key, None)
        if listener is not None:
            listener.cancel()
            await asyncio.wait({listener})
        if layer is not None and channel:
            await layer.group_discard(group_for(owner, call.id), channel)


async def _listen(layer: Any, channel: str, answer: asyncio.Future[bool]) -> None:
    while not answer.done():
        message = await layer.receive(channel)
        if message.get("type") == MESSAGE_TYPE and not answer.done():
            answer.set_result(message.get("approve") is True)


async def answer(owner: str, tool_call_id: str, approve: bool) -> None:
    """Deliver ``owner``'s answer to the call waiting for it, here or in another process."""
    waiting = _waiting.get(_key(owner, tool_call_id))
    if waiting is not None:
        if not waiting.done():
            waiting.set_result(approve)
        return
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(
            group_for(owner, tool_call_id), {"type": MESSAGE_TYPE, "approve": approve}
        )
