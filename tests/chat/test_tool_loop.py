"""The server tool loop, end to end through the faces, against the emulator on loopback.

The emulator calls tools on demand (``CALL:<tool>{args}``, one line a step) and quotes the
results it is given, so what the model "saw" is in the final text.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, override_settings

from copilotedge import lifecycle
from copilotedge.chat.token_estimates import estimate_prompt_tokens
from copilotedge.models import Conversation, Message, UsageRecord
from tests import sample_tools
from tests.asgi import application
from tests.helpers import ORIGIN, WS_PATH

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_chats")]

TOOLS = [
    "caller",
    "repeat",
    "staff_secret",
    "explode",
    "too_slow",
    "wait_forever",
    "tests.sample_tools.delete_note_tool",
]
AGUI_RUN = "/copilotedge/copilotkit/agent/default/run"


@pytest.fixture
def agent_tools(emulator):
    emulator.app.clear_requests()
    with override_settings(
        COPILOTEDGE_API_BASE_URL=emulator.api_base_url,
        COPILOTEDGE_AGENTS={"default": {"name": "default", "tools": TOOLS}},
    ):
        yield emulator


async def settle() -> None:
    await lifecycle.drain()


async def agui_events(auth: dict[str, str], text: str) -> list[dict[str, Any]]:
    body = {
        "threadId": "t-" + text[:20].replace(" ", "-"),
        "runId": "r1",
        "messages": [{"id": "1", "role": "user", "content": text}],
    }
    response = await AsyncClient().post(
        AGUI_RUN, json.dumps(body), content_type="application/json", headers=auth
    )
    assert response.status_code == 200
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]


def final_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


async def test_agui_shows_the_tool_events_and_the_answer_uses_the_result(agent_tools, auth):
    events = await agui_events(auth, "Who am I? CALL:caller{}")
    types = [e["type"] for e in events]
    assert types[:6] == [
        "RUN_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
        "TEXT_MESSAGE_START",
    ]
    assert types[-1] == "RUN_FINISHED"
    start, result = events[1], events[4]
    assert start["toolCallName"] == "caller"
    assert result["toolCallId"] == start["toolCallId"]
    assert result["content"] == "alice"
    assert final_text(events).startswith("Tool result: alice")
    # The second upstream call carried the call and its result.
    second = agent_tools.app.requests[-1]["messages"]
    assert second[-1] == {"role": "tool", "tool_call_id": start["toolCallId"], "content": "alice"}
    assert [t["function"]["name"] for t in agent_tools.app.requests[0]["params"]["tools"]] == [
        "caller", "repeat", "staff_secret", "explode", "too_slow", "wait_forever", "delete_note",
    ]  # fmt: skip
    await settle()
    row = await UsageRecord.objects.aget()
    first_usage, second_usage = (
        sum(r["tokens_sent"] for r in agent_tools.app.requests[:1]),
        agent_tools.app.requests[1]["tokens_sent"],
    )
    assert (row.steps, row.tool_calls, row.outcome) == (2, 1, "ok")
    assert row.completion_tokens == first_usage + second_usage
    assert events[-1]["result"]["usage"]["total_tokens"] == row.total_tokens


async def test_without_upstream_usage_the_ledger_estimates_every_steps_prompt(agent_tools, auth):
    agent_tools.app.add_fault("nousage", count=2)  # neither step reports usage
    await agui_events(auth, "Who am I? CALL:caller{}")
    await settle()
    row = await UsageRecord.objects.aget()
    assert (row.steps, row.token_source) == (2, "estimated")
    first, second = agent_tools.app.requests
    # The second prompt holds the first, the call and its result: both were billed.
    assert row.prompt_tokens == sum(
        estimate_prompt_tokens(r["messages"], r["params"]) for r in (first, second)
    )
    assert row.prompt_tokens > 2 * estimate_prompt_tokens(first["messages"], first["params"])


async def test_agui_refuses_a_tool_the_user_may_not_use(agent_tools, auth):
    events = await agui_events(auth, "CALL:staff_secret{}")
    [result] = [e for e in events if e["type"] == "TOOL_CALL_RESULT"]
    assert result["content"] == "Permission denied: this user may not use the tool 'staff_secret'."
    assert final_text(events).startswith("Tool result: Permission denied")


@pytest.mark.parametrize(
    ("tool", "told"),
    [
        ("explode", "Tool result: The tool 'explode' failed (RuntimeError)."),
        ("too_slow", "Tool result: The tool 'too_slow' timed out after 0.2 seconds."),
    ],
)
async def test_a_failing_tool_is_told_to_the_model_and_the_turn_finishes(
    agent_tools, auth, tool, told
):
    events = await agui_events(auth, f"CALL:{tool}{{}}")
    assert events[-1]["type"] == "RUN_FINISHED"
    assert final_text(events).startswith(told)
    assert told[len("Tool result: ") :] in agent_tools.app.requests[-1]["messages"][-1]["content"]
    await settle()
    row = await UsageRecord.objects.aget()
    assert (row.outcome, row.steps, row.tool_calls) == ("ok", 2, 1)
    assert row.completion_tokens == sum(r["tokens_sent"] for r in agent_tools.app.requests)


@override_settings(COPILOTEDGE_MAX_TOOL_STEPS=2)
async def test_the_loop_stops_at_max_tool_steps_in_band(agent_tools, auth):
    events = await agui_events(auth, "CALL:caller{}\nCALL:caller{}\nCALL:caller{}")
    assert events[-1]["type"] == "RUN_ERROR"
    assert events[-1]["code"] == "max_tool_steps"
    assert "2 tool steps" in events[-1]["message"]
    assert [e["type"] for e in events].count("TOOL_CALL_RESULT") == 2
    await settle()
    row = await UsageRecord.objects.aget()
    assert (row.steps, row.tool_calls, row.error_code) == (3, 2, "max_tool_steps")


# The WebSocket ---------------------------------------------------------------------------


async def socket_for(session_cookie: bytes) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(
        application, WS_PATH, headers=[ORIGIN, (b"cookie", session_cookie)]
    )
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from())["type"] == "ready"
    return socket


async def until(socket, kind, within=5.0):
    seen = []
    async with asyncio.timeout(within):
        while True:
            message = await socket.receive_json_from(timeout=within)
            seen.append(message)
            if message["type"] in (kind, "error"):
                return seen


def chat(text: str) -> dict[str, Any]:
    return {"type": "chat", "id": "c", "messages": [{"role": "user", "content": text}]}


@pytest.mark.parametrize(("approve", "told"), [(True, "deleted memo"), (False, "did not approve")])
async def test_websocket_confirm_approve_and_deny(agent_tools, session_cookie, approve, told):
    socket = await socket_for(session_cookie)
    await socket.send_json_to(chat('CALL:delete_note{"note": "memo"}'))
    seen = await until(socket, "confirm")
    call, ask = seen[-2], seen[-1]
    assert call["type"] == "tool_call" and call["name"] == "delete_note"
    assert json.loads(call["arguments"]) == {"note": "memo"}
    assert ask == {**call, "type": "confirm"}
    await socket.send_json_to(
        {"type": "confirm", "id": "c", "tool_call_id": ask["tool_call_id"], "approve": approve}
    )
    seen = await until(socket, "done")
    [result] = [m for m in seen if m["type"] == "tool_result"]
    assert result["tool_call_id"] == ask["tool_call_id"]
    assert told in result["content"]
    text = "".join(m["content"] for m in seen if m["type"] == "delta")
    assert text.startswith("Tool result:") and told.split()[-1] in text
    await socket.disconnect()
    await settle()
    conversation = await Conversation.objects.aget()
    stored = [
        m async for m in Message.objects.filter(conversation=conversation).order_by("sequence")
    ]
    assert stored[-1].role == "assistant" and told.split()[-1] in stored[-1].content
    row = await UsageRecord.objects.aget()
    assert (row.steps, row.tool_calls) == (2, 1)


@override_settings(COPILOTEDGE_TOOL_CONFIRM_TIMEOUT=0.2)
async def test_websocket_confirm_unanswered_is_denied(agent_tools, session_cookie):
    socket = await socket_for(session_cookie)
    await socket.send_json_to(chat('CALL:delete_note{"note": "memo"}'))
    seen = await until(socket, "done")
    [result] = [m for m in seen if m["type"] == "tool_result"]
    assert "did not approve" in result["content"]
    await socket.disconnect()


async def test_cancel_during_a_slow_tool_cancels_it(agent_tools, session_cookie):
    socket = await socket_for(session_cookie)
    await socket.send_json_to(chat("CALL:wait_forever{}"))
    seen = await until(socket, "tool_call")
    call_id = seen[-1]["tool_call_id"]
    await asyncio.sleep(0.1)
    assert call_id not in sample_tools.cancelled_waits
    await socket.send_json_to({"type": "cancel", "id": "c"})
    await until(socket, "cancelled")
    assert call_id in sample_tools.cancelled_waits
    await socket.disconnect()
    await settle()
    row = await UsageRecord.objects.aget()
    assert (row.outcome, row.tool_calls) == ("cancelled", 1)


@override_settings(COPILOTEDGE_SHUTDOWN_GRACE=0.2)
async def test_a_stop_during_a_slow_tool_ends_the_turn_shutting_down(agent_tools, session_cookie):
    socket = await socket_for(session_cookie)
    await socket.send_json_to(chat("CALL:wait_forever{}"))
    seen = await until(socket, "tool_call")
    call_id = seen[-1]["tool_call_id"]
    stopping = asyncio.create_task(lifecycle.shut_down())
    seen = await until(socket, "error")
    assert seen[-1]["error"]["code"] == "shutting_down"
    await stopping
    assert call_id in sample_tools.cancelled_waits
    await socket.disconnect()
    row = await UsageRecord.objects.aget()
    assert (row.outcome, row.error_code, row.steps, row.tool_calls) == (
        "incomplete",
        "shutting_down",
        1,
        1,
    )


async def test_a_steps_messages_are_stored_while_the_turn_goes_on(agent_tools, session_cookie):
    socket = await socket_for(session_cookie)
    await socket.send_json_to(chat("CALL:caller{}\nCALL:wait_forever{}"))
    seen = await until(socket, "tool_result")
    conversation_id = seen[0]["conversation_id"]
    await until(socket, "tool_call")  # the second step: its tool waits until cancelled
    rows = Message.objects.filter(conversation_id=conversation_id).order_by("sequence")

    async def stored() -> list[tuple[str, str, str]]:
        return [(m.role, m.content, m.status) async for m in rows.all()]

    # A resume meanwhile shows the step that ended, before the answer goes on (the new
    # conversation's rows, held for the answer's first save, are written for it).
    resumer = await socket_for(session_cookie)
    await resumer.send_json_to({"type": "resume", "id": "r", "conversation_id": conversation_id})
    shown = [await resumer.receive_json_from() for _ in range(3)]
    assert [(f["type"], f.get("name"), f.get("content")) for f in shown] == [
        ("start", None, None), ("tool_call", "caller", None), ("tool_result", None, "alice")
    ]  # fmt: skip
    assert await stored() == [
        ("user", "CALL:caller{}\nCALL:wait_forever{}", "complete"),
        ("assistant", "", "complete"),  # the first step's call...
        ("tool", "alice", "complete"),  # ...and its result
        ("assistant", "", "streaming"),  # the answer, still going
    ]
    await socket.send_json_to({"type": "cancel", "id": "c"})
    await until(socket, "cancelled")
    await socket.disconnect()
    await resumer.disconnect()
    await settle()
    # The cancelled step left no call without a result; the answer ended cancelled.
    assert [(role, status) for role, _, status in await stored()] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("tool", "complete"),
        ("assistant", "cancelled"),
    ]


async def test_a_reloaded_or_resumed_conversation_shows_the_tool_steps(
    agent_tools, session_cookie, auth
):
    socket = await socket_for(session_cookie)
    await socket.send_json_to(chat("Who am I? CALL:caller{}"))
    seen = await until(socket, "done")
    conversation_id = seen[0]["conversation_id"]
    [call] = [m for m in seen if m["type"] == "tool_call"]
    answer = "".join(m["content"] for m in seen if m["type"] == "delta")
    await socket.disconnect()
    await settle()

    response = await AsyncClient().get(
        f"/copilotedge/conversations/{conversation_id}/", headers=auth
    )
    messages = [
        {k: m[k] for k in ("role", "content", "tool_calls", "tool_call_id")}
        for m in response.json()["messages"]
    ]
    assert messages == [
        {"role": "user", "content": "Who am I? CALL:caller{}", "tool_calls": None,
         "tool_call_id": None},
        {"role": "assistant", "content": "", "tool_call_id": None, "tool_calls": [
            {"id": call["tool_call_id"], "type": "function",
             "function": {"name": "caller", "arguments": call["arguments"]}}]},
        {"role": "tool", "content": "alice", "tool_calls": None,
         "tool_call_id": call["tool_call_id"]},
        {"role": "assistant", "content": answer, "tool_calls": None, "tool_call_id": None},
    ]  # fmt: skip

    socket = await socket_for(session_cookie)
    await socket.send_json_to({"type": "resume", "id": "r", "conversation_id": conversation_id})
    resumed = await until(socket, "done")
    assert [m["type"] for m in resumed] == ["start", "tool_call", "tool_result", "delta", "done"]
    assert resumed[1] == {**call, "id": "r"}
    assert resumed[2] == {
        "type": "tool_result", "id": "r", "tool_call_id": call["tool_call_id"], "content": "alice"
    }  # fmt: skip
    assert resumed[3]["content"] == answer
    await socket.disconnect()


# Legacy GraphQL ----------------------------------------------------------------------------

GRAPHQL = """
mutation generateCopilotResponse($data: GenerateCopilotResponseInput!) {
  generateCopilotResponse(data: $data) {
    status { ... on BaseResponseStatus { code } }
    messages {
      __typename
      ... on BaseMessageOutput { id status { ... on SuccessMessageStatus { code } } }
      ... on TextMessageOutput { content role parentMessageId }
      ... on ActionExecutionMessageOutput { name arguments scope parentMessageId }
      ... on ResultMessageOutput { actionExecutionId actionName result }
    }
  }
}
"""


async def graphql_chat(auth: dict[str, str], thread: str, text: str) -> dict[str, Any]:
    """``generateCopilotResponse`` for one user message."""
    data = {
        "metadata": {"requestType": "Chat"},
        "threadId": thread,
        "messages": [{"id": "m1", "createdAt": "2025-01-01T00:00:00Z",
                      "textMessage": {"role": "user", "content": text}}],
        "frontend": {"actions": [], "url": "http://localhost"},
    }  # fmt: skip
    response = await AsyncClient().post(
        "/copilotedge/copilotkit",
        {"query": GRAPHQL, "variables": {"data": data}},
        content_type="application/json",
        headers=auth,
    )
    result: dict[str, Any] = response.json()["data"]["generateCopilotResponse"]
    return result


async def test_graphql_shows_action_executions_and_their_results(agent_tools, auth):
    result = await graphql_chat(auth, "graphql-tools", "Who am I? CALL:caller{}")
    assert result["status"] == {"code": "Success"}
    call, outcome, answer = result["messages"]
    assert call == {
        "__typename": "ActionExecutionMessageOutput",
        "id": call["id"],
        "status": {"code": "Success"},
        "name": "caller",
        "arguments": ["{}"],
        "scope": "server",
        "parentMessageId": call["parentMessageId"],
    }
    assert outcome == {
        "__typename": "ResultMessageOutput",
        "id": outcome["id"],
        "status": {"code": "Success"},
        "actionExecutionId": call["id"],
        "actionName": "caller",
        "result": "alice",
    }
    assert answer["__typename"] == "TextMessageOutput"
    assert "".join(answer["content"]).startswith("Tool result: alice")
    await settle()
    row = await UsageRecord.objects.aget()
    assert (row.protocol, row.steps, row.tool_calls) == ("graphql", 2, 1)


async def test_graphql_denies_a_confirm_tool(agent_tools, auth):
    result = await graphql_chat(auth, "graphql-confirm", 'CALL:delete_note{"note": "a"}')
    _, outcome, answer = result["messages"]
    assert (
        outcome["result"] == "The user did not approve this call of 'delete_note'; it did not run."
    )
    assert "did not approve" in "".join(answer["content"])
