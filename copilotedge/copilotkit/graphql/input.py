"""The GraphQL face's input: ``generateCopilotResponse``'s ``data`` as the turn's ``ChatRequest``.

CopilotKit's legacy runtime sends text, action execution and result messages, the
frontend's actions (function tools with a JSON schema) and forwarded parameters; they
become OpenAI messages and parameters after the agent's prompt and the context entries.
"""

from __future__ import annotations

import json
from typing import Any

from copilotedge.chat.agents import Agent
from copilotedge.chat.types import ChatRequest
from copilotedge.chat.validation import parse_messages, parse_model, parse_params
from copilotedge.copilotkit.agui.input import context_message
from copilotedge.exceptions import InvalidRequest


def _actions(frontend: dict[str, Any]) -> list[dict[str, Any]]:
    tools = []
    for i, action in enumerate(frontend.get("actions") or []):
        if action.get("available") == "disabled":
            continue
        try:
            parameters = json.loads(action["jsonSchema"])
        except ValueError:
            parameters = None
        if not isinstance(parameters, dict):
            raise InvalidRequest(
                "'jsonSchema' must be a JSON object.",
                param=f"data.frontend.actions[{i}].jsonSchema",
            )
        function = {"name": action["name"], "description": action["description"]}
        tools.append({"type": "function", "function": {**function, "parameters": parameters}})
    return tools


def _conversation(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The input messages in OpenAI form; action executions join their assistant message."""
    messages: list[dict[str, Any]] = []
    last_assistant_id: str | None = None
    for i, message in enumerate(data["messages"]):
        if text := message.get("textMessage"):
            messages.append({"role": text["role"], "content": text["content"]})
            last_assistant_id = message["id"] if text["role"] == "assistant" else None
        elif action := message.get("actionExecutionMessage"):
            function = {"name": action["name"], "arguments": action["arguments"]}
            call = {"id": message["id"], "type": "function", "function": function}
            previous = messages[-1] if messages else None
            joins = (
                previous is not None
                and previous["role"] == "assistant"
                and ("tool_calls" in previous or action.get("parentMessageId") == last_assistant_id)
            )
            if joins and previous is not None:
                previous.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif result := message.get("resultMessage"):
            tool_call_id = result["actionExecutionId"]
            messages.append(
                {"role": "tool", "content": result["result"], "tool_call_id": tool_call_id}
            )
        elif message.get("imageMessage"):
            raise InvalidRequest(
                "Image messages are not supported.", param=f"data.messages[{i}].imageMessage"
            )
    return messages


def _forwarded(data: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    forwarded = data.get("forwardedParameters") or {}
    body: dict[str, Any] = {
        "temperature": forwarded.get("temperature"),
        "stop": forwarded.get("stop"),
    }
    if forwarded.get("maxTokens") is not None:
        body["max_tokens"] = int(forwarded["maxTokens"])
    choice = forwarded.get("toolChoice")
    if choice == "function" and forwarded.get("toolChoiceFunctionName"):
        body["tool_choice"] = {
            "type": "function",
            "function": {"name": forwarded["toolChoiceFunctionName"]},
        }
    elif choice in ("auto", "none", "required"):
        body["tool_choice"] = choice
    return forwarded.get("model"), parse_params(body)


def chat_request(agent: Agent, data: dict[str, Any]) -> ChatRequest:
    messages: list[dict[str, Any]] = []
    if agent.system_prompt:
        messages.append({"role": "system", "content": agent.system_prompt})
    context = context_message([(c["description"], c["value"]) for c in data.get("context") or []])
    if context is not None:
        messages.append(context)
    messages += _conversation(data)
    model, forwarded = _forwarded(data)
    params = {**agent.params, **forwarded}
    tools = _actions(data["frontend"])
    if tools:
        params["tools"] = tools
    return ChatRequest(
        model=parse_model(model) if model else agent.model,
        messages=parse_messages(messages, param="data.messages"),
        params=params,
        stream=True,
    )
