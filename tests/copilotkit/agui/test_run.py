"""AG-UI translation: input to OpenAI messages, deltas to ordered events, stored to snapshot."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from copilotedge.auth import Principal
from copilotedge.chat.agents import Agent
from copilotedge.chat.deltas import Delta, ToolCallDelta
from copilotedge.chat.turn import Turn
from copilotedge.chat.types import ChatRequest
from copilotedge.copilotkit.agui import run as agui
from copilotedge.exceptions import InvalidRequest
from copilotedge.models import Message


def run_input(*messages: dict[str, Any], **extra: Any) -> Any:
    return agui.parse_run_input(
        {"threadId": "t", "runId": "r", "messages": list(messages), **extra}
    )


def turn() -> Turn:
    return Turn(
        ChatRequest(model="m", messages=[{"role": "user", "content": "x"}]),
        Principal(ip="1.2.3.4"),
        "agui",
    )


def kinds(events: list[Any]) -> list[str]:
    return [event.type.value for event in events]


def test_chat_request_orders_prompt_context_and_conversation():
    agent = Agent("a", "A", "", "@cf/x/y", system_prompt="Be kind.", params={"top_p": 0.5})
    run = run_input(
        {"id": "1", "role": "developer", "content": "Dev note"},
        {"id": "2", "role": "user", "content": "Hi"},
        {"id": "3", "role": "activity", "activityType": "progress", "content": {"pct": 50}},
        context=[{"description": "Page", "value": "/home"}],
        tools=[{"name": "nav", "description": "Navigate."}],
    )
    request = agui.chat_request(agent, run)
    assert request.model == "@cf/x/y" and request.stream is True
    assert [m["role"] for m in request.messages] == ["system", "system", "system", "user"]
    assert request.messages[0]["content"] == "Be kind."
    assert request.messages[1]["content"].endswith("Page:\n/home")
    assert request.params["top_p"] == 0.5
    assert request.params["tools"][0]["function"] == {
        "name": "nav",
        "description": "Navigate.",
        "parameters": {"type": "object", "properties": {}},
    }


def test_tool_message_errors_are_sent_when_there_is_no_content():
    run = run_input(
        {"id": "1", "role": "tool", "toolCallId": "c", "content": "", "error": "timed out"}
    )
    assert agui.openai_messages(run) == [
        {"role": "tool", "content": "timed out", "tool_call_id": "c"}
    ]


def test_parse_errors_name_the_field():
    with pytest.raises(InvalidRequest) as caught:
        agui.parse_run_input({"threadId": "t", "runId": 5, "messages": []})
    assert caught.value.param == "runId"


def test_text_then_tool_call_closes_the_text_first_and_parents_the_call():
    current = turn()
    events = agui._Events(current)
    current.answer.add(Delta(text="Let me check."))
    out = events.text("Let me check.")
    message_id = out[0].message_id
    piece = ToolCallDelta(index=0, id="c1", name="lookup", arguments='{"q":')
    current.answer.add(Delta(tool_calls=[piece]))
    out += events.tool_call(0, "lookup", '{"q":')
    piece2 = ToolCallDelta(index=0, arguments='"x"}')
    current.answer.add(Delta(tool_calls=[piece2]))
    out += events.tool_call(0, None, '"x"}')
    out += events.close()
    assert kinds(out) == [
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
    ]
    assert out[3].parent_message_id == message_id
    assert out[3].tool_call_id == "c1" and out[3].tool_call_name == "lookup"


def test_arguments_before_the_name_are_held_until_it_arrives():
    current = turn()
    events = agui._Events(current)
    current.answer.add(Delta(tool_calls=[ToolCallDelta(index=0, id="c1", arguments="{")]))
    assert events.tool_call(0, None, "{") == []
    current.answer.add(Delta(tool_calls=[ToolCallDelta(index=0, name="f", arguments="}")]))
    out = events.tool_call(0, "f", "}")
    assert kinds(out) == ["TOOL_CALL_START", "TOOL_CALL_ARGS"]
    assert out[1].delta == "{}"


def test_stored_messages_become_snapshot_messages():
    conversation_id = uuid.uuid4()
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    stored = [
        Message(conversation_id=conversation_id, sequence=0, role="system", content="S"),
        Message(
            conversation_id=conversation_id,
            sequence=1,
            role="assistant",
            content="",
            tool_calls=[call],
        ),
        Message(
            conversation_id=conversation_id, sequence=2, role="tool", content="R", tool_call_id="c"
        ),
    ]
    dumped = [agui.snapshot_message(m).model_dump(by_alias=True) for m in stored]
    assert [d["role"] for d in dumped] == ["system", "assistant", "tool"]
    assert dumped[1]["toolCalls"] == [call] and "content" not in dumped[1]
    assert dumped[2]["toolCallId"] == "c"
