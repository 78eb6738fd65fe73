"""AG-UI input: a ``RunAgentInput`` validated and turned into the turn's ``ChatRequest``.

What an agent sends upstream for a run is its system prompt, the application's context
entries as one system message, and the run's messages in OpenAI form, with the run's
tools offered as function tools.
"""

from __future__ import annotations

import uuid
from typing import Any

from ag_ui.core import AssistantMessage, RunAgentInput, ToolMessage
from pydantic import ValidationError

from copilotedge.chat.agents import Agent
from copilotedge.chat.types import ChatRequest
from copilotedge.chat.validation import parse_messages
from copilotedge.exceptions import InvalidRequest


def _param(location: tuple[int | str, ...]) -> str:
    param = ""
    for part in location:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else part)
    return param


def parse_run_input(body: Any) -> RunAgentInput:
    """Validate a ``RunAgentInput`` body, or a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be an AG-UI RunAgentInput object.", code="invalid_json")
    try:
        return RunAgentInput.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = _param(tuple(first["loc"]))
        raise InvalidRequest(
            f"Invalid RunAgentInput at {param or 'body'}: {first['msg']}.",
            param=param or None,
            code="invalid_run_input",
        ) from None


def _text(content: Any, param: str) -> str:
    """AG-UI content (a string or a list of parts) as plain text; only text parts are served."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for i, part in enumerate(content):
        if getattr(part, "type", None) != "text":
            raise InvalidRequest("Only text content parts are supported.", param=f"{param}[{i}]")
        texts.append(part.text)
    return "".join(texts)


def context_message(entries: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The application's context entries as one system message, or ``None``."""
    if not entries:
        return None
    lines = ["The application provides this context:"]
    lines += [f"\n{description}:\n{value}" for description, value in entries]
    return {"role": "system", "content": "\n".join(lines)}


def openai_messages(run_input: RunAgentInput) -> list[dict[str, Any]]:
    """The conversation in OpenAI form; activity and reasoning messages are not sent upstream."""
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(run_input.messages):
        where = f"messages[{i}].content"
        role = message.role
        if role in ("system", "developer", "user"):
            messages.append({"role": role, "content": _text(message.content, where)})
        elif isinstance(message, AssistantMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
            if message.tool_calls:
                entry["tool_calls"] = [
                    call.model_dump(by_alias=True) for call in message.tool_calls
                ]
            messages.append(entry)
        elif isinstance(message, ToolMessage):
            content = _text(message.content, where) or (message.error or "")
            messages.append(
                {"role": "tool", "content": content, "tool_call_id": message.tool_call_id}
            )
    return messages


def chat_request(
    agent: Agent, run_input: RunAgentInput, conversation_id: uuid.UUID | None = None
) -> ChatRequest:
    """What the agent sends upstream for this run: its prompt, the context, the messages."""
    messages: list[dict[str, Any]] = []
    if agent.system_prompt:
        messages.append({"role": "system", "content": agent.system_prompt})
    context = context_message([(c.description, c.value) for c in run_input.context or []])
    if context is not None:
        messages.append(context)
    messages += openai_messages(run_input)
    params = dict(agent.params)
    if run_input.tools:
        params["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters or {"type": "object", "properties": {}},
                },
            }
            for tool in run_input.tools
        ]
    return ChatRequest(
        model=agent.model,
        messages=parse_messages(messages),
        params=params,
        stream=True,
        conversation_id=conversation_id,
    )
