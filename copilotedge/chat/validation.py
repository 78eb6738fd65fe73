"""Turn untrusted request bodies into a :class:`ChatRequest`, or a 4xx naming the field."""

from __future__ import annotations

import json
import uuid
from typing import Any

from copilotedge.chat.types import ChatRequest
from copilotedge.conf import settings
from copilotedge.exceptions import InvalidRequest, NotFound, RequestTooLarge

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

_NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 5.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}


def parse_json(body: bytes) -> dict[str, Any]:
    if len(body) > settings.MAX_BODY_BYTES:
        raise RequestTooLarge(f"The body is larger than {settings.MAX_BODY_BYTES} bytes.")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # RecursionError: deep nesting ("[[[[…") fits in any size limit; it is bad JSON too.
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    return data


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and upstream would refuse them.
    raise ValueError(f"{name} is not JSON")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _content(value: Any, param: str, role: str) -> str | None:
    if value is None:
        if role in ("assistant", "tool"):
            return None
        raise InvalidRequest("Content is required.", param=param)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest(
                    "Only text content parts are supported.", param=f"{param}[{i}]"
                )
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    "A text part needs a string 'text'.", param=f"{param}[{i}].text"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest("Content must be a string or a list of text parts.", param=param)


def parse_messages(value: Any, param: str = "messages") -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidRequest("'messages' must be a list.", param=param)
    if not value:
        raise InvalidRequest("'messages' must not be empty.", param=param)
    if len(value) > settings.MAX_MESSAGES:
        raise InvalidRequest(f"At most {settings.MAX_MESSAGES} messages are allowed.", param=param)
    messages = []
    for i, raw in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(raw, dict):
            raise InvalidRequest("Each message must be an object.", param=where)
        role = raw.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or dict is unhashable
            raise InvalidRequest(f"Unknown role {role!r}.", param=f"{where}.role")
        message: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _content(raw.get("content"), f"{where}.content", role),
        }
        tool_calls = raw.get("tool_calls")
        if tool_calls is not None:
            if role != "assistant" or not isinstance(tool_calls, list):
                raise InvalidRequest("Invalid 'tool_calls'.", param=f"{where}.tool_calls")
            message["tool_calls"] = tool_calls
        if role == "tool":
            if not isinstance(raw.get("tool_call_id"), str):
                raise InvalidRequest(
                    "A tool message needs 'tool_call_id'.", param=f"{where}.tool_call_id"
                )
            message["tool_call_id"] = raw["tool_call_id"]
        if message["content"] is None:
            message["content"] = ""
        messages.append(message)
    return messages


def parse_model(value: Any) -> str:
    if value is None:
        return settings.MODEL
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'model' must be a string.", param="model")
    if value not in settings.MODELS:
        raise NotFound(
            f"The model {value!r} is not available.", param="model", code="model_not_found"
        )
    return value


def parse_params(body: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, (low, high) in _NUMBER_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not low <= value <= high:
            raise InvalidRequest(f"'{name}' must be a number from {low} to {high}.", param=name)
        params[name] = value
    for name in ("max_tokens", "max_completion_tokens", "seed"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or (name != "seed" and value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
        params["max_tokens" if name == "max_completion_tokens" else name] = value
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("'stop' must be a string or up to 4 strings.", param="stop")
        params["stop"] = stop
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools
        ):
            raise InvalidRequest("'tools' must be a list of function tools.", param="tools")
        params["tools"] = tools
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if not isinstance(tool_choice, str | dict):
            raise InvalidRequest(
                "'tool_choice' must be a string or an object.", param="tool_choice"
            )
        params["tool_choice"] = tool_choice
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise InvalidRequest("'response_format' must be an object.", param="response_format")
        params["response_format"] = response_format
    return params


def parse_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is None:
        return settings.STREAM
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    return stream


def _stream_option(body: dict[str, Any], name: str) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get(name, False), bool):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    return bool(options.get(name, False))


def parse_include_usage(body: dict[str, Any]) -> bool:
    return _stream_option(body, "include_usage")


def parse_include_tool_steps(body: dict[str, Any]) -> bool:
    """``stream_options.include_tool_steps``: show each server tool step (an extension)."""
    return _stream_option(body, "include_tool_steps")


def parse_conversation_id(value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidRequest("'conversation_id' must be a UUID.", param="conversation_id") from None


def parse_chat(body: dict[str, Any], *, model: str | None = None) -> ChatRequest:
    """An OpenAI Chat Completions body (``model`` given by the URL for ``/ai/run``)."""
    model_given = model is not None or body.get("model") is not None
    if model is None:
        model = parse_model(body.get("model"))
    if "messages" not in body and isinstance(body.get("prompt"), str):
        messages = [{"role": "user", "content": body["prompt"]}]
    else:
        messages = parse_messages(body.get("messages"))
    return ChatRequest(
        model=model,
        messages=messages,
        params=parse_params(body),
        stream=parse_stream(body),
        conversation_id=parse_conversation_id(body.get("conversation_id")),
        model_given=model_given,
    )
