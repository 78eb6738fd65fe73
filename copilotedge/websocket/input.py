"""WebSocket input: a client's frames checked and turned into what the consumer acts on.

A frame must be a JSON object in a text frame of at most ``WS_MAX_MESSAGE_BYTES``; a
``chat`` message becomes the turn's :class:`~copilotedge.chat.types.ChatRequest`, and the
``id`` a client gives a chat or resume is checked here too. Each failure is a 4xx
:class:`~copilotedge.exceptions.CopilotEdgeError` naming the field, which the consumer
sends back as an ``error`` message.
"""

from __future__ import annotations

import json
from typing import Any

from copilotedge import exceptions
from copilotedge.chat.types import ChatRequest
from copilotedge.chat.validation import (
    parse_conversation_id,
    parse_messages,
    parse_model,
    parse_params,
)
from copilotedge.conf import settings

MAX_ID_LENGTH = 200
ChatId = str | int


def parse_frame(text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
    """A frame's JSON object, or a 4xx saying why it is not one (too large, not JSON)."""
    size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
    if size > settings.WS_MAX_MESSAGE_BYTES:
        raise exceptions.RequestTooLarge(
            f"Messages are limited to {settings.WS_MAX_MESSAGE_BYTES} bytes."
        )
    try:
        content = json.loads(text_data) if text_data is not None else None
    except ValueError:
        content = None
    if not isinstance(content, dict):
        raise exceptions.InvalidRequest(
            "Each message must be a JSON object in a text frame.", code="invalid_json"
        )
    return content


def client_id(content: dict[str, Any]) -> ChatId | None:
    """The message's ``id`` if it is one a reply may echo (a short string or an integer)."""
    value = content.get("id")
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def require_id(content: dict[str, Any]) -> ChatId:
    value = client_id(content)
    if value is None:
        raise exceptions.InvalidRequest(
            f"'id' must be a string of 1 to {MAX_ID_LENGTH} characters or an integer.",
            param="id",
        )
    return value


def parse_chat_message(content: dict[str, Any]) -> ChatRequest:
    """A ``chat`` message into a :class:`ChatRequest`, or a 4xx naming the field."""
    params = content.get("params")
    if params is not None and not isinstance(params, dict):
        raise exceptions.InvalidRequest("'params' must be an object.", param="params")
    return ChatRequest(
        model=parse_model(content.get("model")),
        messages=parse_messages(content.get("messages")),
        params=parse_params(params or {}),
        stream=True,
        conversation_id=parse_conversation_id(content.get("conversation_id")),
        model_given=content.get("model") is not None,
    )
