"""AG-UI threads as the caller's stored conversations: the id mapping, lookup and replay.

A run is stored in the conversation its ``threadId`` maps to, so ``agent/connect`` (and
the GraphQL face's ``loadAgentState``) can find the thread again and replay its
messages as AG-UI messages.
"""

from __future__ import annotations

import uuid
from typing import Any

from ag_ui.core import (
    AssistantMessage,
    FunctionCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)

from copilotedge.auth import Principal
from copilotedge.models import Conversation, Message

_THREADS = uuid.UUID("1c8c7d1e-6f0b-4b8e-9a52-2f4a6d1b3c77")


def thread_conversation_id(principal: Principal, thread_id: str) -> uuid.UUID | None:
    """The conversation a thread is stored as (None for anonymous callers, who store none).

    A UUID threadId (CopilotKit makes them) is the conversation's id; any other is mapped
    to a UUID derived from it and the caller, so two callers' "thread-1" never meet.
    """
    if principal.user_id is None:
        return None
    try:
        return uuid.UUID(thread_id)
    except ValueError:
        return uuid.uuid5(_THREADS, f"{principal.user_id}:{thread_id}")


async def owned_thread(principal: Principal, thread_id: str) -> Conversation | None:
    """The caller's stored conversation of ``thread_id``, if there is one."""
    conversation_id = thread_conversation_id(principal, thread_id)
    if conversation_id is None:
        return None
    return await Conversation.objects.filter(id=conversation_id, user=principal.user).afirst()


def snapshot_message(message: Message) -> Any:
    """A stored message as an AG-UI message."""
    message_id = str(message.id)
    if message.role == Message.Role.USER:
        return UserMessage(id=message_id, content=message.content)
    if message.role == Message.Role.SYSTEM:
        return SystemMessage(id=message_id, content=message.content)
    if message.role == Message.Role.TOOL:
        return ToolMessage(
            id=message_id, content=message.content, tool_call_id=message.tool_call_id
        )
    calls = [
        ToolCall(id=call["id"], function=FunctionCall(**call["function"]))
        for call in message.tool_calls or []
        if isinstance(call, dict) and isinstance(call.get("function"), dict)
    ]
    return AssistantMessage(
        id=message_id, content=message.content or None, tool_calls=calls or None
    )
