"""Approving ``confirm=True`` server tools over AG-UI: interrupts, then ``resume``.

Through the HTTP face against the emulator on loopback: the model's call ends the run
with an interrupt outcome, and the next run's resume entry runs (or denies) the call.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from typing import Any

import pytest
from django.test import AsyncClient, override_settings

from copilotedge import lifecycle
from copilotedge.models import ApiKey, Message, UsageRecord
from tests import sample_tools

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("drain_chats", "agui_drain"),
]

RUN = "/copilotedge/copilotkit/agent/default/run"
ASK = 'Please archive it. CALL:archive_note{"note": "memo"}'
DENIED = "The user did not approve this call of 'archive_note'; it did not run."


@pytest.fixture
def confirm_agent(emulator):
    emulator.app.clear_requests()
    sample_tools.archived.clear()
    tools = ["caller", "tests.sample_tools.archive_note"]
    with override_settings(
        COPILOTEDGE_API_BASE_URL=emulator.api_base_url,
        COPILOTEDGE_AGENTS={"default": {"name": "default", "tools": tools}},
    ):
        yield emulator


@pytest.fixture
def bob_auth(other_user) -> dict[str, str]:
    return {"Authorization": f"Bearer {ApiKey.create_key(other_user, name='bob')[1]}"}


class Thread:
    """One AG-UI thread as a client keeps it: the messages its runs made."""

    def __init__(self, auth: dict[str, str], text: str = ASK) -> None:
        self.auth = auth
        self.id = str(uuid.uuid4())
        self.messages: list[dict[str, Any]] = [{"id": "u1", "role": "user", "content": text}]

    async def post(self, resume: list[dict[str, Any]] | None = None) -> Any:
        body: dict[str, Any] = {
            "threadId": self.id,
            "runId": str(uuid.uuid4()),
            "messages": self.messages,
        }
        if resume is not None:
            body["resume"] = resume
        return await AsyncClient().post(
            RUN, json.dumps(body), content_type="application/json", headers=self.auth
        )

    async def run(self, resume: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        response = await self.post(resume)
        assert response.status_code == 200, response.content
        raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
        events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
        self._keep(events)
        return events

    def _keep(self, events: list[dict[str, Any]]) -> None:
        """Fold the run's events into messages, like @ag-ui/client does."""
        for event in events:
            if event["type"] == "TOOL_CALL_START":
                parent = event["parentMessageId"]
                message = next((m for m in self.messages if m["id"] == parent), None)
                if message is None:
                    message = {"id": parent, "role": "assistant", "toolCalls": []}
                    self.messages.append(message)
                message["toolCalls"].append(
                    {
                        "id": event["toolCallId"],
                        "type": "function",
                        "function": {"name": event["toolCallName"], "arguments": ""},
                    }
                )
            elif event["type"] == "TOOL_CALL_ARGS":
                for message in self.messages:
                    for call in message.get("toolCalls") or []:
                        if call["id"] == event["toolCallId"]:
                            call["function"]["arguments"] += event["delta"]
            elif event["type"] == "TOOL_CALL_RESULT":
                self.messages.append(
                    {
                        "id": event["messageId"],
                        "role": "tool",
                        "toolCallId": event["toolCallId"],
                        "content": event["content"],
                    }
                )
            elif event["type"] == "TEXT_MESSAGE_START":
                self.messages.append({"id": event["messageId"], "role": "assistant", "content": ""})
            elif event["type"] == "TEXT_MESSAGE_CONTENT":
                self.messages[-1]["content"] += event["delta"]


def interrupts_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    finished = events[-1]
    assert finished["type"] == "RUN_FINISHED", finished
    assert finished["outcome"]["type"] == "interrupt", finished
    return finished["outcome"]["interrupts"]


def answer(interrupt_id: str, approved: bool | None = True, **entry: Any) -> dict[str, Any]:
    resolved = {"status": "resolved", "payload": {"approved": approved}}
    return {"interruptId": interrupt_id, **resolved, **entry}


def final_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


def results_of(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["toolCallId"], e["content"]) for e in events if e["type"] == "TOOL_CALL_RESULT"]


async def stored(thread: Thread) -> list[tuple[str, str, list[str], str]]:
    """The thread's stored messages: role, content, tool call names, tool_call_id."""
    await lifecycle.drain()
    rows = Message.objects.filter(conversation_id=uuid.UUID(thread.id)).order_by("sequence")
    return [
        (m.role, m.content, [c["function"]["name"] for c in m.tool_calls or []], m.tool_call_id)
        async for m in rows
    ]


async def ledger() -> list[tuple[int, int, str]]:
    """The usage rows: upstream calls, server tool calls answered, outcome."""
    await lifecycle.drain()
    rows = UsageRecord.objects.order_by("created_at")
    return [(r.steps, r.tool_calls, r.outcome) async for r in rows]


async def test_a_confirm_call_ends_the_run_with_an_interrupt(confirm_agent, auth):
    thread = Thread(auth)
    events = await thread.run()
    assert [e["type"] for e in events] == [
        "RUN_STARTED", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "RUN_FINISHED",
    ]  # fmt: skip
    call_id = events[1]["toolCallId"]
    assert events[1]["toolCallName"] == "archive_note"
    assert json.loads(events[2]["delta"]) == {"note": "memo"}
    [interrupt] = interrupts_of(events)
    assert interrupt["reason"] == "tool_confirmation"
    assert interrupt["toolCallId"] == call_id
    assert "archive_note" in interrupt["message"]
    assert interrupt["responseSchema"] == {
        "type": "object",
        "properties": {"approved": {"type": "boolean"}},
        "required": ["approved"],
    }
    assert len(interrupt["id"]) >= 32 and call_id not in interrupt["id"]
    expires = datetime.datetime.fromisoformat(interrupt["expiresAt"]).timestamp()
    assert abs(expires - (time.time() + 120)) < 10  # COPILOTEDGE_TOOL_CONFIRM_TIMEOUT
    assert events[-1]["result"]["usage"]["total_tokens"] > 0
    # Nothing ran and the turn did not go back upstream.
    assert sample_tools.archived == []
    assert len(confirm_agent.app.requests) == 1
    assert await stored(thread) == [
        ("user", ASK, [], ""),
        ("assistant", "", ["archive_note"], ""),
    ]
    assert await ledger() == [(1, 0, "ok")]


async def test_approving_runs_the_call_as_the_caller_with_the_models_arguments(confirm_agent, auth):
    thread = Thread(auth)
    [interrupt] = interrupts_of(await thread.run())
    call_id = interrupt["toolCallId"]
    # The client's copy of the arguments is not what runs.
    thread.messages[1]["toolCalls"][0]["function"]["arguments"] = '{"note": "forged"}'
    events = await thread.run([answer(interrupt["id"])])
    assert [e["type"] for e in events[:3]] == [
        "RUN_STARTED",
        "TOOL_CALL_RESULT",
        "TEXT_MESSAGE_START",
    ]
    assert events[-1]["type"] == "RUN_FINISHED" and "outcome" not in events[-1]
    assert results_of(events) == [(call_id, "alice archived memo")]
    assert final_text(events).startswith("Tool result: alice archived memo")
    assert sample_tools.archived == [("alice", "memo")]
    # Upstream got the call as the model made it, its result right after it.
    sent = confirm_agent.app.requests[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["function"]["arguments"] == '{"note": "memo"}'
    assert sent[-1] == {"role": "tool", "tool_call_id": call_id, "content": "alice archived memo"}
    assert await stored(thread) == [
        ("user", ASK, [], ""),
        ("assistant", "", ["archive_note"], ""),
        ("tool", "alice archived memo", [], call_id),
        ("assistant", final_text(events), [], ""),
    ]
    assert await ledger() == [(1, 0, "ok"), (1, 1, "ok")]


@pytest.mark.parametrize(
    "entry",
    [{"payload": {"approved": False}}, {"status": "cancelled", "payload": None}],
    ids=["denied", "cancelled"],
)
async def test_a_denial_or_a_cancel_does_not_run_the_call(confirm_agent, auth, entry):
    thread = Thread(auth)
    [interrupt] = interrupts_of(await thread.run())
    events = await thread.run([answer(interrupt["id"], **entry)])
    assert results_of(events) == [(interrupt["toolCallId"], DENIED)]
    assert final_text(events).startswith(f"Tool result: {DENIED}")
    assert sample_tools.archived == []


@override_settings(COPILOTEDGE_TOOL_CONFIRM_TIMEOUT=0.2)
async def test_an_expired_interrupt_is_a_denial(confirm_agent, auth):
    thread = Thread(auth)
    [interrupt] = interrupts_of(await thread.run())
    await asyncio.sleep(0.3)
    events = await thread.run([answer(interrupt["id"])])
    assert results_of(events) == [(interrupt["toolCallId"], DENIED)]
    assert sample_tools.archived == []


async def test_another_callers_interrupt_runs_nothing_and_stays(confirm_agent, auth, bob_auth):
    alices = Thread(auth)
    [interrupt] = interrupts_of(await alices.run())
    # Bob resends Alice's thread with her interrupt's id: denied for him, hers stays.
    bobs = Thread(bob_auth)
    bobs.messages = [dict(m) for m in alices.messages]
    events = await bobs.run([answer(interrupt["id"])])
    assert results_of(events) == [(interrupt["toolCallId"], DENIED)]
    assert sample_tools.archived == []
    events = await alices.run([answer(interrupt["id"])])
    assert results_of(events) == [(interrupt["toolCallId"], "alice archived memo")]


async def test_an_unknown_interrupt_id_is_a_denial(confirm_agent, auth):
    thread = Thread(auth)
    [interrupt] = interrupts_of(await thread.run())
    events = await thread.run([answer("no-such-interrupt")])
    assert results_of(events) == [(interrupt["toolCallId"], DENIED)]
    assert final_text(events).startswith(f"Tool result: {DENIED}")
    assert sample_tools.archived == []


async def test_a_refused_resume_leaves_the_interrupt_waiting(confirm_agent, auth):
    thread = Thread(auth)
    [interrupt] = interrupts_of(await thread.run())
    with override_settings(COPILOTEDGE_TOKEN_RATE_LIMIT="1/m"):
        refused = await thread.post([answer(interrupt["id"])])
    assert refused.status_code == 429
    events = await thread.run([answer(interrupt["id"])])
    assert results_of(events) == [(interrupt["toolCallId"], "alice archived memo")]


async def test_replaying_an_approval_does_not_run_the_call_again(confirm_agent, auth):
    thread = Thread(auth)
    [interrupt] = interrupts_of(await thread.run())
    before = [dict(m) for m in thread.messages]
    await thread.run([answer(interrupt["id"])])
    thread.messages = before  # the same request again
    events = await thread.run([answer(interrupt["id"])])
    assert events[-1]["type"] == "RUN_FINISHED"
    assert results_of(events) == []  # the stored thread holds the call's result already
    assert sample_tools.archived == [("alice", "memo")]


async def test_a_plain_call_in_the_same_step_runs_and_the_confirm_call_waits(confirm_agent, auth):
    thread = Thread(auth, 'CALL:caller{} CALL:archive_note{"note": "memo"}')
    events = await thread.run()
    starts = [e for e in events if e["type"] == "TOOL_CALL_START"]
    assert [e["toolCallName"] for e in starts] == ["caller", "archive_note"]
    caller_id, archive_id = (e["toolCallId"] for e in starts)
    assert results_of(events) == [(caller_id, "alice")]
    [interrupt] = interrupts_of(events)
    assert interrupt["toolCallId"] == archive_id
    first = await stored(thread)
    assert first == [
        ("user", thread.messages[0]["content"], [], ""),
        ("assistant", "", ["caller", "archive_note"], ""),
        ("tool", "alice", [], caller_id),
    ]

    events = await thread.run([answer(interrupt["id"])])
    assert results_of(events) == [(archive_id, "alice archived memo")]
    assert final_text(events).startswith("Tool result: alice archived memo alice")
    assert await stored(thread) == [
        *first,
        ("tool", "alice archived memo", [], archive_id),
        ("assistant", final_text(events), [], ""),
    ]
    assert await ledger() == [(1, 1, "ok"), (1, 1, "ok")]


@pytest.mark.parametrize(
    ("resume", "param"),
    [
        (
            [{"interruptId": "i", "status": "resolved", "payload": {"ok": True}}],
            "resume[0].payload",
        ),
        ([{"interruptId": "i", "status": "resolved"}], "resume[0].payload"),
        ([answer("i"), answer("i", False)], "resume[1].interruptId"),
        ([{"interruptId": "i", "status": "maybe"}], "resume[0].status"),
    ],
)
async def test_invalid_resume_entries_are_a_400(confirm_agent, auth, resume, param):
    response = await Thread(auth).post(resume)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert confirm_agent.app.requests == []
