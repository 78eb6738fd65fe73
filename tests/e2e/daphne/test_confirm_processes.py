"""A ``confirm`` answered on another server process: the chat waits on daphne A, the
client's answer arrives on daphne B and reaches A through the Redis channel layer. An
AG-UI interrupt made on A is answered by a run on B, through the shared Redis cache."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from copilotedge.models import ApiKey, UsageRecord
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.e2e.daphne.test_resume_processes import open_socket, read_until
from tests.servers import DaphneServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not getattr(settings, "REDIS_URL", ""),
        reason="needs REDIS_URL: two server processes share a confirm through Redis",
    ),
]


async def agui_run(server: DaphneServer, token: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    url = f"{server.url}/copilotedge/copilotkit/agent/helper/run"
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    lines = response.text.splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ")]


async def interrupt_on_a_answer_on_b(
    a: DaphneServer, b: DaphneServer, token: str, approve: bool
) -> list[dict[str, Any]]:
    """An AG-UI run on A ends with an interrupt; the run answering it goes to B."""
    asked = {"id": "u", "role": "user", "content": 'CALL:delete_note{"note": "memo"}'}
    thread = str(uuid.uuid4())
    events = await agui_run(a, token, {"threadId": thread, "runId": "1", "messages": [asked]})
    [interrupt] = events[-1]["outcome"]["interrupts"]
    start = next(e for e in events if e["type"] == "TOOL_CALL_START")
    call = {"id": start["toolCallId"], "type": "function",
            "function": {"name": "delete_note", "arguments": '{"note": "memo"}'}}  # fmt: skip
    made = {"id": start["parentMessageId"], "role": "assistant", "toolCalls": [call]}
    resume = [
        {"interruptId": interrupt["id"], "status": "resolved", "payload": {"approved": approve}}
    ]
    body = {"threadId": thread, "runId": "2", "messages": [asked, made], "resume": resume}
    return await agui_run(b, token, body)


@pytest.mark.parametrize(("approve", "told"), [(True, "deleted memo"), (False, "did not approve")])
async def test_a_confirm_sent_to_another_process_resumes_the_turn(user, approve, told):
    _, token = await sync_to_async(ApiKey.create_key)(user, name="two-process")
    with EmulatorServer(EmulatorApp()) as emulator:
        overrides = {
            "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
            # Both processes must use one channel-layer and cache prefix (the default is
            # per process).
            "CHANNEL_LAYERS": settings.CHANNEL_LAYERS,
            "CACHES": settings.CACHES,
            "COPILOTEDGE_AGENTS": {
                "default": {"name": "default"},
                "helper": {"name": "helper", "tools": ["tests.sample_tools.delete_note_tool"]},
            },
        }
        with DaphneServer(overrides) as a, DaphneServer(overrides) as b:
            waiting = await open_socket(a, token)
            await waiting.send(
                json.dumps(
                    {"type": "chat", "id": "c", "model": "agent:helper",
                     "messages": [{"role": "user", "content": 'CALL:delete_note{"note": "memo"}'}]}
                )
            )  # fmt: skip
            ask = (await read_until(waiting, "confirm"))[-1]
            assert ask["name"] == "delete_note"

            answering = await open_socket(b, token)
            await answering.send(
                json.dumps(
                    {"type": "confirm", "id": "c", "tool_call_id": ask["tool_call_id"],
                     "approve": approve}
                )
            )  # fmt: skip
            seen = await read_until(waiting, "done")
            await answering.close()
            await waiting.close()
            resumed = await interrupt_on_a_answer_on_b(a, b, token, approve)
    [result] = [m for m in seen if m["type"] == "tool_result"]
    assert result["tool_call_id"] == ask["tool_call_id"]
    assert told in result["content"]
    text = "".join(m["content"] for m in seen if m["type"] == "delta")
    assert text.startswith("Tool result:") and told in text
    row = await UsageRecord.objects.aget(protocol="websocket")
    assert (row.steps, row.tool_calls, row.outcome) == (2, 1, "ok")
    [agui_result] = [e for e in resumed if e["type"] == "TOOL_CALL_RESULT"]
    assert told in agui_result["content"]
    assert resumed[-1]["type"] == "RUN_FINISHED" and "outcome" not in resumed[-1]
